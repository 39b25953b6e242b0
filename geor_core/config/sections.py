"""The sections of the one configuration schema, a dataclass per stage, and ``GeorConfig`` which
holds them all (with its fingerprint, the hash that keys the pipeline's stages)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from geor_core.config.fields import _choice, _dict, _list, _plain, _range


@dataclass
class DataConfig:
    """Where the prepared training data lives, and the synthetic world the demo trains on."""

    dataset: str = _plain("", "URI of a `geor prepare` output (train/val/test splits); `--data`")
    world_rows: int = _range(6000, 1, doc="`geor make-world`: number of photos; `--rows`")
    world_countries: int = _range(12, 1, 60, doc="`geor make-world`: number of countries; `--countries`")
    world_image_size: int = _range(56, 28, doc="`geor make-world`: side of each square photo, in pixels")
    world_seed: int = _plain(0, "`geor make-world`: seed of the places, photos and ids; `--seed`")
    world_ambiguous_share: float = _range(
        0.0,
        0.0,
        1.0,
        doc="share of world photos made ambiguous (half lose the position marker, half get a faint state "
        "texture), so the best guess is not the one exact answer: where GRPO's distance reward has an edge",
    )
    world_country_codes: list = _list(
        [], "the world's countries by ISO alpha-2 code, instead of `world_countries` drawn by the seed"
    )
    world_shared_looks: list = _list(
        [],
        'looks shared by several of `world_country_codes`, each "CA:0.6,SE:0.4" (country:weight, '
        "weights summing to 1): a flat colour of its own, no stripes, no marker",
    )
    world_shared_look_share: float = _range(
        0.0, 0.0, 1.0, doc="share of photos from a shared look (a look uniformly, its country by weight)"
    )
    world_shifted_rows: int = _range(
        0,
        0,
        doc="extra photos with a render shift (more noise, lighter marker, other stripe periods), written to "
        "`shifted/manifest.csv`: an out-of-distribution evaluation set",
    )


@dataclass
class PrepareConfig:
    """`geor prepare`: manifest in, Chain-of-Region rows out."""

    manifest: str = _plain(
        "", "CSV / Parquet / JSONL file, or a folder or s3:// prefix of them; `--manifest`"
    )
    output: str = _plain("", "where data/, rejects/ and stats.json go (local or s3://); `--output`")
    id_col: str = _plain("id", "id column; empty or absent: the image reference is the id")
    image_col: str = _plain("image", "image reference column (a path or URI)")
    lat_col: str = _plain("lat", "latitude column (degrees)")
    lon_col: str = _plain("lon", "longitude column (degrees)")
    group_col: str = _plain(
        "",
        "column copied into each row's `group` (e.g. `world_group` of `geor make-world`), so `geor evaluate` "
        "reports metrics per group; empty: no groups",
    )
    images_root: str = _plain(
        "",
        "base of relative image references; default: the manifest's folder. Local references must lie "
        "(after symlinks) inside it or the manifest's folder, in `geor predict` too",
    )
    allowed_schemes: list = _list(
        ["file", "s3"],
        "URI schemes image references may use (file: local paths); list http, https for web images",
    )
    check_images: bool = _plain(False, "open every image; reject missing, unreadable and undecodable ones")
    seed: int = _plain(0, "seed of the split of each row (a keyed hash of its id) and of the target phrasing")
    splits: dict = _dict({"train": 0.9, "val": 0.05, "test": 0.05}, "split name -> share, sums to 1")
    holdout_countries: list = _list([], "ISO alpha-2 codes sent whole to the test split")
    dedupe: bool = _plain(True, "reject rows whose id repeats an earlier row's (manifest order)")
    batch_size: int = _range(100_000, 1, doc="manifest rows read per batch")
    cpus_per_task: float = _range(1.0, 0.05, doc="CPUs each Ray Data task (or actor) reserves")
    compute: str = _choice("tasks", "tasks", "actors", doc="the transform: fused tasks or an actor pool")
    overwrite: bool = _plain(False, "replace a complete output made from other inputs")


@dataclass
class LoraConfig:
    """Optional PEFT LoRA adapters, used by SFT and GRPO alike."""

    enabled: bool = _plain(False, "train LoRA adapters instead of every weight; the export is merged")
    r: int = _range(16, 1, doc="rank of the adapters")
    alpha: int = _range(32, 1, doc="scaling of the adapters (alpha / r)")
    dropout: float = _range(0.05, 0.0, 1.0, doc="dropout on the adapters' input")
    target_modules: list = _list(
        ["q_proj", "k_proj", "v_proj", "o_proj"], "names of the modules that get adapters"
    )


@dataclass
class ModelConfig:
    """Which vision-language model, and how it is loaded."""

    name_or_path: str = _plain("", "hub id, local dir, s3:// prefix or models:/NAME@ALIAS; `--model`")
    dtype: str = _choice(
        "auto", "auto", "float32", "bfloat16", "float16", doc="auto: fp32 on CPU, bf16 on GPU"
    )
    device: str = _choice("auto", "auto", "cpu", "cuda", doc="auto: cuda when a GPU is visible, else cpu")
    trust_remote_code: bool = _plain(False, "let Transformers run code shipped with the model")
    attn_implementation: str = _choice(
        "sdpa", "sdpa", "eager", "flash_attention_2", doc="attention kernel (flash_attention_2: flash-attn)"
    )
    min_pixels: int = _range(28 * 28, 1, doc="photos smaller than this (pixels) are scaled up")
    max_pixels: int = _range(
        448 * 448, 1, doc="photos larger than this (pixels) are scaled down; 28 x 28 px per image token"
    )
    max_image_pixels: int = _range(
        40_000_000,
        1,
        178_956_970,
        doc="photos declaring more pixels (width x height) are refused per row before decoding; "
        "at most Pillow's own hard limit",
    )
    cache_dir: str = _plain("", "where s3:// models are copied; default ~/.cache/geor/models")
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class TrainingConfig:
    """What SFT and GRPO share: workers, DeepSpeed, optimisation, checkpoints."""

    num_workers: int = _range(1, 1, doc="Ray Train workers (data-parallel ranks)")
    use_gpu: bool = _plain(False, "one GPU per worker; false: train on CPUs")
    cpus_per_worker: float = _range(1.0, 0.05, doc="CPUs each worker reserves")
    zero_stage: int = _choice(
        2, 0, 2, 3, doc="DeepSpeed ZeRO: 0 off, 2 shards optimizer state and gradients, 3 also weights"
    )
    learning_rate: float = _range(1e-5, 0.0, doc="AdamW's peak learning rate")
    weight_decay: float = _range(0.0, 0.0, doc="AdamW's weight decay")
    warmup_ratio: float = _range(0.0, 0.0, 1.0, doc="share of the steps that warm the learning rate up")
    lr_scheduler_type: str = _choice(
        "cosine", "constant", "linear", "cosine", "constant_with_warmup", doc="learning-rate schedule"
    )
    per_device_batch_size: int = _range(8, 1, doc="rows per worker per micro-step")
    gradient_accumulation_steps: int = _range(1, 1, doc="micro-steps per optimizer step")
    global_batch_size: int = _range(0, 0, doc="0: per_device_batch_size x num_workers x accumulation")
    num_epochs: float = _range(1.0, 0.0, doc="passes over the train split when max_steps is -1")
    max_steps: int = _range(-1, -1, doc="-1: run num_epochs")
    max_seconds: float = _range(
        0.0, 0.0, doc="0: no limit; else stop after the step that ends this many seconds into training"
    )
    lr_schedule_over: str = _choice(
        "steps",
        "steps",
        "max_seconds",
        doc="what the learning-rate schedule is laid over: the steps, or the seconds of max_seconds "
        "(elapsed / max_seconds), so a run its clock stops ends at the end of its schedule",
    )
    logging_steps: int = _range(10, 1, doc="loss and metrics logged every this many steps")
    eval_steps: int = _range(100, 1, doc="validation every this many steps")
    save_steps: int = _range(100, 1, doc="a checkpoint every this many steps; a multiple of eval_steps")
    save_total_limit: int = _range(2, 1, doc="checkpoints kept, the best by their validation score")
    max_failures: int = _range(2, 0, doc="restarts from the last checkpoint after a worker dies")
    seed: int = _plain(0, "seed of the weights' initialisation, the data order and sampling")
    output: str = _plain(
        "", "checkpoints go to `<output>/ray`, the Hugging Face export to `<output>/model`; `--output`"
    )


@dataclass
class SftConfig(TrainingConfig):
    """Supervised fine-tuning on Chain-of-Region targets (paper: AdamW, lr 1e-5, batch 64, 1 epoch)."""

    val_rows: int = _range(256, 0, doc="validation rows (the first of the val split) scored by eval_loss")
    stream_rows_above: int = _range(
        100_000,
        0,
        doc="a train split of more rows streams through Ray Data (each worker holds its shard's next "
        "batches only); a smaller one each worker reads whole, which starts about 30 s sooner on 2 cores. 0: always stream",
    )


@dataclass
class GrpoConfig(TrainingConfig):
    """GRPO with Haversine rewards (the authors' settings: G=4, beta=0.04, lr 1e-6, T=0.9)."""

    learning_rate: float = _range(1e-6, 0.0, doc="AdamW's peak learning rate")
    per_device_batch_size: int = _range(4, 1, doc="completions per worker per micro-step")
    num_generations: int = _range(4, 2, doc="completions sampled per prompt (the group G)")
    temperature: float = _range(0.9, 0.0, doc="sampling temperature of the completions")
    top_p: float = _range(1.0, 0.0, 1.0, doc="nucleus sampling of the completions (1: off)")
    beta: float = _range(0.04, 0.0, doc="KL coefficient; 0 loads no reference model")
    epsilon: float = _range(0.2, 0.0, 1.0, doc="clip range of the policy ratio")
    loss_type: str = _choice(
        "grpo", "grpo", "bnpo", "dr_grpo", "dapo", doc="TRL's normalisation of the GRPO loss"
    )
    max_completion_length: int = _range(256, 8, doc="most tokens generated per completion")
    use_vllm: bool = _plain(False, "generate with vLLM (needs the vllm package and GPUs)")
    hard_radius_km: float = _range(
        200.0, 0.0, doc="`geor mine-hard` keeps training rows predicted farther than this; `--radius-km`"
    )
    pipeline_rows: str = _choice(
        "hard", "hard", "all", doc="`geor pipeline`'s GRPO trains on: hard (mined rows) or all (no mining)"
    )
    train_groups: list = _list(
        [],
        "train only on the rows whose `group` (`prepare.group_col`) is one of these, e.g. [ambiguous]; "
        "empty: every training row",
    )
    reward_actors: int = _range(1, 1, doc="Ray actors that score completions, per worker")
    reward_actor_cpus: float = _range(0.25, 0.01, doc="CPUs each reward actor reserves")
    reward_timeout_s: float = _range(
        120.0, 1.0, doc="a reward chunk unanswered this long: its actor is killed, the chunk resubmitted"
    )
    val_rows: int = _range(
        64,
        0,
        doc="validation rows (the first of the val split) scored by eval_reward, which ranks checkpoints",
    )


@dataclass
class RewardConfig:
    """How a completion is scored (docs/design.md, Rewards). The paper: distance x format."""

    mode: str = _choice(
        "product",
        "product",
        "weighted_sum",
        doc="product: distance x format; weighted_sum: sum of w_* x reward",
    )
    distance_shape: str = _choice(
        "piecewise",
        "piecewise",
        "exp",
        doc="piecewise: 1 at 0 km, 0.5 at 750, 0.2 at 2500, 0 from 20000; exp: exp(-km / tau_km)",
    )
    tau_km: float = _range(500.0, 1e-6, doc="the exp shape's distance scale, km")
    w_distance: float = _range(0.6, 0.0, doc="weighted_sum: weight of the distance reward")
    w_format: float = _range(0.1, 0.0, doc="weighted_sum: weight of format (one in-range coordinate pair)")
    w_chain: float = _range(
        0.0, 0.0, doc="weighted_sum: weight of chain (Country, State, City, Coordinates, once, in order)"
    )
    w_region: float = _range(0.3, 0.0, doc="weighted_sum: weight of region (w_country + w_state + w_city)")
    region_source: str = _choice(
        "text", "point", "text", doc="region of the answer: the levels it names, or the predicted point's"
    )
    w_country: float = _range(0.5, 0.0, doc="region credit for the right country")
    w_state: float = _range(0.3, 0.0, doc="region credit for the right state or province (and country)")
    w_city: float = _range(0.2, 0.0, doc="region credit for the right city (and country)")


@dataclass
class EvalConfig:
    """Batch inference, evaluation and prediction."""

    splits: list = _list(["test"], "the prepared splits `geor evaluate` scores, in order")
    batch_size: int = _range(16, 1, doc="photos per generate call")
    num_actors: int = _range(1, 1, doc="inference actors, each holding the model")
    cpus_per_actor: float = _range(0.5, 0.01, doc="CPUs each inference actor reserves")
    gpus_per_actor: float = _range(0.0, 0.0, doc="GPUs each inference actor reserves; 0: CPU")
    do_sample: bool = _plain(False, "sample answers; false: greedy")
    temperature: float = _range(1.0, 0.0, doc="sampling temperature when do_sample")
    top_p: float = _range(1.0, 0.0, 1.0, doc="nucleus sampling when do_sample")
    max_new_tokens: int = _range(256, 1, doc="most tokens generated per answer")
    rows_per_shard: int = _range(
        2048, 1, doc="photos per predictions shard (a re-run redoes unfinished ones)"
    )
    max_rows: int = _range(0, 0, doc="0: all rows")
    worst_n: int = _range(20, 0, doc="worst predictions listed in the report")
    top_countries: int = _range(15, 1, doc="countries in the report's per-country table")
    report_in_driver_rows: int = _range(20000, 0, doc="rows up to which the report is built in the driver")
    sampled_rows: int = _range(
        0,
        0,
        doc="rows of `geor evaluate`'s sampled_reward (mean combined reward sampled at grpo.temperature "
        "and grpo.top_p, first N rows); 0: off",
    )
    sampled_per_row: int = _range(4, 1, doc="completions sampled per row for sampled_reward")


@dataclass
class SweepConfig:
    """Ray Tune sweeps over GRPO and reward settings (`geor sweep`)."""

    space: str = _plain("", "the search space: a YAML path or a shipped name (configs/spaces); `--space`")
    output: str = _plain("", "where trials, Tune's state and best_config.yaml go (local or s3://)")
    num_samples: int = _range(4, 1, doc="trials drawn (random, optuna); under grid: repeats of the grid")
    max_concurrent: int = _range(2, 1, doc="trials running at once")
    scheduler: str = _choice(
        "asha", "asha", "fifo", doc="asha stops poor trials early; fifo runs every trial"
    )
    search: str = _choice("random", "random", "grid", "optuna", doc="how trials are drawn from the space")
    seed: int = _plain(0, "seed of the random and optuna searchers")
    metric: str = _plain("val_geoscore", "validation objective (geor_core.training.sweep_space.OBJECTIVES)")
    mode: str = _choice("max", "max", "min", doc="whether the objective is maximised or minimised")
    grace_period: int = _range(1, 1, doc="ASHA: validations a trial always gets before it can be stopped")
    reduction_factor: int = _range(2, 2, doc="ASHA: keep the best 1/reduction_factor at each rung")
    cpus_per_trial: float = _range(
        0.05,
        0.01,
        doc="CPUs of each trial's driver; its Train workers and reward actors hold their own "
        "(grpo.cpus_per_worker, grpo.reward_actor_cpus)",
    )
    keep_checkpoints: bool = _plain(False, "keep every trial's checkpoints and export, not just the best's")


@dataclass
class TrackingConfig:
    """MLflow. Empty uri: the MLFLOW_TRACKING_URI environment variable, else no tracking."""

    uri: str = _plain("", "MLflow tracking URI; empty: MLFLOW_TRACKING_URI, else no tracking")
    experiment: str = _plain("geo-r", "MLflow experiment of every run")
    parent_run_id: str = _plain(
        "", "the flow's parent run, set by pipeline and retrain; also read from GEOR_PARENT_RUN_ID"
    )
    log_every_n_steps: int = _range(10, 1, doc="training metrics sent to MLflow every this many steps")
    system_metrics: bool = _plain(True, "log CPU, memory and GPU use of training's rank 0")


@dataclass
class StorageConfig:
    """Where stages write when no explicit output is given (local path or s3://)."""

    root: str = _plain("runs", "root of every stage's output (local or s3://); `--output` of pipeline")


@dataclass
class ClusterConfig:
    """Where the stages' Ray work runs on a cluster of several nodes."""

    worker_resources: dict = _dict(
        {},
        "custom Ray resource name -> amount that every Ray Train worker (sft, grpo), inference actor "
        "(eval) and reward actor (grpo) requires besides its CPUs and GPUs, so they run only on the nodes "
        "started with it (`ray start --resources`), e.g. {trainer: 1}; amounts > 0, whole above 1. "
        "Empty: on any node",
    )


@dataclass
class RegistryConfig:
    """The model registry and the champion gate."""

    model_name: str = _plain("geo-r", "the registered model's name in MLflow")
    metric: str = _plain("geoscore", "evaluation metric on which a challenger must beat the champion")
    margin: float = _range(0.0, 0.0, doc="a challenger is promoted when registry.metric gains more than this")
    guards: list = _list(["format_rate"], "metrics a challenger may not lose more than tolerance on")
    tolerance: float = _range(1.0, 0.0, doc="how far a challenger may fall behind on each guard")
    benchmark: str = _plain("", "pinned benchmark split URI; default: the first run's test split")
    lock: str = _plain(
        "",
        "the lock every champion move takes (local or s3://); default `<storage.root>/registry.lock`. "
        "Set one shared path when runs with different storage roots promote into one registry",
    )


@dataclass
class RetrainConfig:
    """`geor retrain`: new photos in, a challenger trained from the champion, the gate decides."""

    min_new_rows: int = _range(1, 1, doc="fewer new manifest rows than this: nothing to do")
    sft: bool = _plain(False, "also fine-tune the champion on the new rows before GRPO")
    lock: str = _plain("", "the lock's URI; default `<storage.root>/retrain.lock`")
    lock_ttl_s: float = _range(120.0, 3.0, doc="a lock not renewed this long belongs to a dead retrain")
    challenger: str = _plain("", "gate this model instead of training one (a model trained elsewhere)")


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
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
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
