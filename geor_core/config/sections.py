"""The sections of the one configuration schema, a dataclass per stage, and ``GeorConfig`` which
holds them all (with its fingerprint, the hash that keys the pipeline's stages)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from geor_core.config.fields import _choice, _dict, _list, _range


@dataclass
class DataConfig:
    """Where the prepared training data lives, and the synthetic world the demo trains on."""

    dataset: str = ""  # URI of a `geor prepare` output (train/val/test splits)
    world_rows: int = _range(6000, 1)
    world_countries: int = _range(12, 1, 60)
    world_image_size: int = _range(56, 28)
    world_seed: int = 0
    # share of world photos made ambiguous (half lose the position marker, half get a faint state
    # texture), so the best guess is not the one exact answer: where GRPO's distance reward has an edge
    world_ambiguous_share: float = _range(0.0, 0.0, 1.0)


@dataclass
class PrepareConfig:
    """`geor prepare`: manifest in, Chain-of-Region rows out."""

    manifest: str = ""
    output: str = ""
    id_col: str = "id"  # empty or absent column: the image reference is the id
    image_col: str = "image"
    lat_col: str = "lat"
    lon_col: str = "lon"
    images_root: str = ""  # default: the manifest's folder
    # local image references must lie (after symlinks) inside the manifest's folder or images_root;
    # `geor predict` applies the same rule and schemes to its photo manifests and folders
    allowed_schemes: list = _list(
        ["file", "s3"],
        "URI schemes image references may use (file: local paths); list http, https for web images",
    )
    check_images: bool = False
    seed: int = 0
    splits: dict = _dict({"train": 0.9, "val": 0.05, "test": 0.05}, "split name -> share, sums to 1")
    holdout_countries: list = _list([], "ISO alpha-2 codes sent whole to the test split")
    dedupe: bool = True
    batch_size: int = _range(100_000, 1)
    cpus_per_task: float = _range(1.0, 0.05)
    compute: str = _choice("tasks", "tasks", "actors", doc="the transform: fused tasks or an actor pool")
    overwrite: bool = False


@dataclass
class LoraConfig:
    """Optional PEFT LoRA adapters, used by SFT and GRPO alike."""

    enabled: bool = False
    r: int = _range(16, 1)
    alpha: int = _range(32, 1)
    dropout: float = _range(0.05, 0.0, 1.0)
    target_modules: list = _list(["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class ModelConfig:
    """Which vision-language model, and how it is loaded."""

    name_or_path: str = ""  # hub id, local dir, s3:// prefix, or models:/NAME@ALIAS
    dtype: str = _choice(
        "auto", "auto", "float32", "bfloat16", "float16", doc="auto: fp32 on CPU, bf16 on GPU"
    )
    device: str = _choice("auto", "auto", "cpu", "cuda")
    trust_remote_code: bool = False
    attn_implementation: str = _choice("sdpa", "sdpa", "eager", "flash_attention_2")
    min_pixels: int = _range(28 * 28, 1)
    max_pixels: int = _range(448 * 448, 1)
    max_image_pixels: int = _range(
        40_000_000,
        1,
        178_956_970,
        doc="photos declaring more pixels (width x height) are refused per row before decoding; "
        "at most Pillow's own hard limit",
    )
    cache_dir: str = ""  # where s3:// models are copied; default ~/.cache/geor/models
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class TrainingConfig:
    """What SFT and GRPO share: workers, DeepSpeed, optimisation, checkpoints."""

    num_workers: int = _range(1, 1)
    use_gpu: bool = False
    cpus_per_worker: float = _range(1.0, 0.05)
    zero_stage: int = _choice(2, 0, 2, 3)
    learning_rate: float = _range(1e-5, 0.0)
    weight_decay: float = _range(0.0, 0.0)
    warmup_ratio: float = _range(0.0, 0.0, 1.0)
    lr_scheduler_type: str = _choice("cosine", "constant", "linear", "cosine", "constant_with_warmup")
    per_device_batch_size: int = _range(8, 1)
    gradient_accumulation_steps: int = _range(1, 1)
    global_batch_size: int = _range(0, 0, doc="0: per_device_batch_size x num_workers x accumulation")
    num_epochs: float = _range(1.0, 0.0)
    max_steps: int = _range(-1, -1, doc="-1: run num_epochs")
    logging_steps: int = _range(10, 1)
    eval_steps: int = _range(100, 1)
    save_steps: int = _range(100, 1)
    save_total_limit: int = _range(2, 1)
    max_failures: int = _range(2, 0)
    seed: int = 0
    output: str = ""
    resume: bool = True


@dataclass
class SftConfig(TrainingConfig):
    """Supervised fine-tuning on Chain-of-Region targets (paper: AdamW, lr 1e-5, batch 64, 1 epoch)."""

    max_length: int = _range(1024, 16)
    val_rows: int = _range(256, 0)


@dataclass
class GrpoConfig(TrainingConfig):
    """GRPO with Haversine rewards (the authors' settings: G=4, beta=0.04, lr 1e-6, T=0.9)."""

    learning_rate: float = _range(1e-6, 0.0)
    per_device_batch_size: int = _range(4, 1)
    num_generations: int = _range(4, 2)
    temperature: float = _range(0.9, 0.0)
    top_p: float = _range(1.0, 0.0, 1.0)
    beta: float = _range(0.04, 0.0, doc="KL coefficient; 0 loads no reference model")
    epsilon: float = _range(0.2, 0.0, 1.0)
    loss_type: str = _choice("grpo", "grpo", "bnpo", "dr_grpo", "dapo")
    max_prompt_length: int = _range(512, 16)
    max_completion_length: int = _range(256, 8)
    use_vllm: bool = False
    hard_radius_km: float = _range(200.0, 0.0)
    reward_actors: int = _range(1, 1)
    reward_actor_cpus: float = _range(0.25, 0.01)
    reward_timeout_s: float = _range(
        120.0, 1.0, doc="a reward chunk unanswered this long: its actor is killed, the chunk resubmitted"
    )
    val_rows: int = _range(64, 0)


@dataclass
class RewardConfig:
    """How a completion is scored (docs/design.md, Rewards). The paper: distance x format."""

    mode: str = _choice("product", "product", "weighted_sum")
    distance_shape: str = _choice("piecewise", "piecewise", "exp")
    tau_km: float = _range(500.0, 1e-6)
    w_distance: float = _range(0.6, 0.0)
    w_format: float = _range(0.1, 0.0)
    w_chain: float = _range(0.0, 0.0)
    w_region: float = _range(0.3, 0.0)
    region_source: str = _choice("text", "point", "text")
    w_country: float = _range(0.5, 0.0)
    w_state: float = _range(0.3, 0.0)
    w_city: float = _range(0.2, 0.0)


@dataclass
class EvalConfig:
    """Batch inference, evaluation and prediction."""

    splits: list = _list(["test"])
    batch_size: int = _range(16, 1)
    num_actors: int = _range(1, 1)
    cpus_per_actor: float = _range(0.5, 0.01)
    gpus_per_actor: float = _range(0.0, 0.0)
    do_sample: bool = False
    temperature: float = _range(1.0, 0.0)
    top_p: float = _range(1.0, 0.0, 1.0)
    max_new_tokens: int = _range(256, 1)
    rows_per_shard: int = _range(2048, 1)
    max_rows: int = _range(0, 0, doc="0: all rows")
    worst_n: int = _range(20, 0)
    top_countries: int = _range(15, 1)
    # `geor evaluate`'s sampled_reward: mean combined reward sampled at grpo.temperature/top_p, first N rows
    sampled_rows: int = _range(0, 0, doc="0: off")
    sampled_per_row: int = _range(4, 1)


@dataclass
class SweepConfig:
    """Ray Tune sweeps over GRPO and reward settings (`geor sweep`)."""

    space: str = ""  # the search space: a YAML path or a shipped name (configs/spaces/<name>.yaml)
    output: str = ""  # where trials, Tune's state and best_config.yaml go (local or s3://)
    num_samples: int = _range(4, 1, doc="trials drawn (random, optuna); under grid: repeats of the grid")
    max_concurrent: int = _range(2, 1)
    scheduler: str = _choice("asha", "asha", "fifo")
    search: str = _choice("random", "random", "grid", "optuna")
    seed: int = 0  # of the random and optuna searchers
    metric: str = "val_geoscore"  # a validation objective (geor_core.training.sweep_space.OBJECTIVES)
    mode: str = _choice("max", "max", "min")
    grace_period: int = _range(1, 1, doc="ASHA: validations a trial always gets before it can be stopped")
    reduction_factor: int = _range(2, 2, doc="ASHA: keep the best 1/reduction_factor at each rung")
    # each trial's driver (the Tune function that launches the GRPO TorchTrainer and waits for it);
    # its Train workers and reward actors hold their own CPUs (grpo.cpus_per_worker, grpo.reward_actor_cpus)
    cpus_per_trial: float = _range(0.05, 0.01)
    keep_checkpoints: bool = False


@dataclass
class TrackingConfig:
    """MLflow. Empty uri: the MLFLOW_TRACKING_URI environment variable, else no tracking."""

    uri: str = ""
    experiment: str = "geo-r"
    parent_run_id: str = ""  # set by flows; also read from GEOR_PARENT_RUN_ID
    log_every_n_steps: int = _range(10, 1)
    system_metrics: bool = True


@dataclass
class StorageConfig:
    """Where stages write when no explicit output is given (local path or s3://)."""

    root: str = "runs"


@dataclass
class RegistryConfig:
    """The model registry and the champion gate."""

    model_name: str = "geo-r"
    metric: str = "geoscore"
    margin: float = _range(0.0, 0.0)
    guards: list = _list(["format_rate"])
    tolerance: float = _range(1.0, 0.0)
    benchmark: str = ""  # pinned benchmark split URI; default: the first run's test split
    # the lock every champion move takes (local or s3://); default <storage.root>/registry.lock.
    # Set it to one shared path when runs with different storage roots promote into one registry
    lock: str = ""


@dataclass
class RetrainConfig:
    """`geor retrain`: new photos in, a challenger trained from the champion, the gate decides."""

    min_new_rows: int = _range(1, 1, doc="fewer new manifest rows than this: nothing to do")
    sft: bool = False  # also fine-tune the champion on the new rows before GRPO
    lock: str = ""  # the lock's URI; default <storage.root>/retrain.lock
    lock_ttl_s: float = _range(120.0, 3.0, doc="a lock not renewed this long belongs to a dead retrain")
    challenger: str = ""  # gate this model instead of training one (a model trained elsewhere)


@dataclass
class GeorConfig:
    """The whole workflow's configuration."""

    data: DataConfig = field(default_factory=DataConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sft: SftConfig = field(default_factory=SftConfig)
    grpo: GrpoConfig = field(default_factory=GrpoConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self, *sections: str) -> str:
        """A short stable hash of the given sections (all when none), for lineage and skipping."""
        data = self.to_dict()
        if sections:
            data = {name: data[name] for name in sections}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)
