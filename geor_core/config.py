"""The one configuration schema of the workflow: plain dataclasses, a section per stage.

Every command is ``geor <command> [--config PRESET_OR_YAML] [key=value ...]``. A config is built
from the dataclass defaults (the paper's settings where the paper has one), then a preset (found
by name in the installed ``configs`` package) or a YAML file, then dotted ``key=value``
overrides (values parsed as YAML, so ``grpo.beta=0.02`` is a float and ``eval.splits=[val,test]``
a list). Presets may name another preset in ``extends:``.

Validation names the key, the bad value and what is allowed. Ranges and choices are declared
next to each field (``_choice`` / ``_range`` metadata), so the schema documents itself. Numbers
must be finite (``nan`` and ``.inf`` are refused by name), and so must every share of
``prepare.splits``.

YAML (files and override values) is read with a bounded loader: a document over
``MAX_YAML_BYTES``, one whose aliases expand to more than ``MAX_YAML_NODES`` nodes (a "billion
laughs"), an alias that refers to itself, or nesting deeper than Python can follow is a
ConfigError, so no config can hang or exhaust memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import re
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from geor_core import uris

SECRET_WORDS = {"key", "apikey", "token", "secret", "password", "passwd", "credential", "credentials"}
MAX_YAML_BYTES = 1_000_000
MAX_YAML_NODES = 100_000  # after alias expansion; the shipped presets have a few hundred


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or outside what is allowed."""


def _choice(default: Any, *allowed: Any, doc: str = "") -> Any:
    return field(default=default, metadata={"choices": allowed, "doc": doc})


def _range(default: Any, lo: float | None = None, hi: float | None = None, doc: str = "") -> Any:
    return field(default=default, metadata={"lo": lo, "hi": hi, "doc": doc})


def _list(default: list, doc: str = "") -> Any:
    return field(default_factory=lambda: list(default), metadata={"doc": doc})


def _dict(default: dict, doc: str = "") -> Any:
    return field(default_factory=lambda: dict(default), metadata={"doc": doc})


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
    """How a completion is scored (DESIGN.md, Rewards). The paper: distance x format."""

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


DEFAULT_PRESET = "tiny"


def preset_names() -> list[str]:
    """Names of the presets shipped in the ``configs`` package."""
    return sorted(p.name[:-5] for p in resources.files("configs").iterdir() if p.name.endswith(".yaml"))


def _read_source(source: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A preset name or YAML path -> a nested dict, following ``extends:``."""
    if source in seen:
        raise ConfigError(f"preset cycle: {' -> '.join((*seen, source))}")
    path = Path(source)
    if source.endswith((".yaml", ".yml")) or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {source!r} does not exist")
        text = path.read_text()
    else:
        candidate = resources.files("configs") / f"{source}.yaml"
        if not candidate.is_file():
            raise ConfigError(
                f"unknown preset {source!r}; presets: {', '.join(preset_names())} (or a YAML path)"
            )
        text = candidate.read_text()
    data = load_yaml(text, f"config {source!r}") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {source!r} must be a mapping of sections, got {type(data).__name__}")
    base = data.pop("extends", None)
    if base is None:
        return data
    return _deep_merge(_read_source(str(base), (*seen, source)), data)


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key not in ("splits",):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["grpo.beta=0.02", "eval.splits=[val,test]"]`` -> a nested dict of YAML-parsed values."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or " " in key:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        value = load_yaml(raw, f"override {item!r}") if raw != "" else ""
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {part!r}")
        node[parts[-1]] = value
    return nested


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses a document whose aliases expand past ``MAX_YAML_NODES`` nodes or
    refer to themselves, before anything is built from it."""

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()
        if node is not None:
            _expanded_nodes(node, {}, set())
        return node


class _YamlTooLarge(yaml.YAMLError):
    pass


def _expanded_nodes(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """The nodes ``node`` stands for once every alias is expanded (each node measured once)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_nodes:
        raise _YamlTooLarge("an alias refers to the collection that contains it")
    open_nodes.add(key)
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [child for pair in node.value for child in pair]
    else:
        children = []
    size = 1
    for child in children:
        size += _expanded_nodes(child, sizes, open_nodes)
        if size > MAX_YAML_NODES:
            raise _YamlTooLarge(f"its aliases expand to more than {MAX_YAML_NODES} values")
    open_nodes.discard(key)
    sizes[key] = size
    return size


def load_yaml(text: str, what: str) -> Any:
    """YAML text -> plain data, bounded (see the module docstring); ``what`` names it in errors."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{what} has {len(text)} characters; a config may have at most {MAX_YAML_BYTES}")
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # a SafeLoader: builds plain data only
    except _YamlTooLarge as exc:
        raise ConfigError(f"{what} is refused: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} is not valid YAML: {exc}") from exc
    except RecursionError:
        raise ConfigError(f"{what} is nested too deeply") from None


def _coerce(path: str, value: Any, hint: Any, spec: dataclasses.Field) -> Any:
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping of {hint.__name__} keys, got {value!r}")
        return _build(hint, value, path)
    origin = typing.get_origin(hint)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: got {value!r}, expected true or false")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: got {value!r}, expected an integer")
    elif hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-6" (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path}: got {value!r}, expected a number")
        try:
            value = float(value)
        except OverflowError:  # an integer past the float range
            value = math.inf
        if not math.isfinite(value):
            raise ConfigError(f"{path}: got {value!r}, expected a finite number")
    elif hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: got {value!r}, expected a string")
    elif hint is list or origin is list:
        if isinstance(value, str | int | float):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{path}: got {value!r}, expected a list")
    elif (hint is dict or origin is dict) and not isinstance(value, dict):
        raise ConfigError(f"{path}: got {value!r}, expected a mapping")
    choices = spec.metadata.get("choices")
    if choices and value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"{path}: got {value!r}, allowed: {allowed}")
    lo, hi = spec.metadata.get("lo"), spec.metadata.get("hi")
    if lo is not None and value < lo:
        raise ConfigError(f"{path}: got {value!r}, must be >= {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"{path}: got {value!r}, must be <= {hi}")
    return value


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    specs = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(specs))
    if unknown:
        where = f"section {prefix!r}" if prefix else "the top level"
        raise ConfigError(
            f"unknown key {'.'.join(filter(None, [prefix, unknown[0]]))!r} in {where}; "
            f"allowed: {', '.join(sorted(specs))}"
        )
    kwargs = {}
    for name, value in values.items():
        path = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(path, value, hints[name], specs[name])
    return cls(**kwargs)


def _check_consistency(cfg: GeorConfig) -> None:
    shares = cfg.prepare.splits
    if not shares:
        raise ConfigError(f"prepare.splits: got {shares!r}, expected split name -> non-negative share")
    for name, share in shares.items():
        number = isinstance(share, int | float) and not isinstance(share, bool)
        if not number or not math.isfinite(share) or share < 0:
            raise ConfigError(f"prepare.splits.{name}: got {share!r}, expected a finite, non-negative share")
    if sum(shares.values()) <= 0:
        raise ConfigError(f"prepare.splits: shares {shares!r} sum to 0; at least one must be positive")
    if abs(sum(shares.values()) - 1.0) > 1e-6:
        raise ConfigError(f"prepare.splits: shares {shares!r} sum to {sum(shares.values())}, must sum to 1")
    if cfg.model.min_pixels > cfg.model.max_pixels:
        raise ConfigError(
            f"model.min_pixels: got {cfg.model.min_pixels}, must be <= model.max_pixels ({cfg.model.max_pixels})"
        )
    for name in ("sft", "grpo"):
        _check_training(cfg, name)
    g = cfg.grpo
    global_batch = (
        g.global_batch_size or g.per_device_batch_size * g.num_workers * g.gradient_accumulation_steps
    )
    if global_batch % cfg.grpo.num_generations:
        raise ConfigError(
            f"grpo.num_generations: got {cfg.grpo.num_generations}, must divide the global batch "
            f"(per_device_batch_size x num_workers x gradient_accumulation_steps = {global_batch})"
        )
    if cfg.reward.mode == "weighted_sum" and not any(
        (cfg.reward.w_distance, cfg.reward.w_format, cfg.reward.w_chain, cfg.reward.w_region)
    ):
        raise ConfigError("reward.w_*: weighted_sum needs at least one positive weight")


def _check_training(cfg: GeorConfig, name: str) -> None:
    stage = getattr(cfg, name)
    split = stage.num_workers * stage.gradient_accumulation_steps
    if stage.global_batch_size and stage.global_batch_size % split:
        raise ConfigError(
            f"{name}.global_batch_size: got {stage.global_batch_size}, must be divisible by "
            f"{name}.num_workers x {name}.gradient_accumulation_steps = {split}"
        )
    if stage.save_steps % stage.eval_steps:
        raise ConfigError(
            f"{name}.save_steps: got {stage.save_steps}, must be a multiple of {name}.eval_steps "
            f"({stage.eval_steps}) so every checkpoint is ranked by a fresh validation score"
        )
    if not stage.use_gpu and cfg.model.dtype in ("bfloat16", "float16"):
        raise ConfigError(
            f"model.dtype: got {cfg.model.dtype!r} with {name}.use_gpu=false; DeepSpeed on CPU trains "
            "in float32 (set model.dtype=float32 or auto)"
        )
    if cfg.model.lora.enabled and stage.zero_stage == 3:
        raise ConfigError(
            f"{name}.zero_stage: got 3 with model.lora.enabled=true; LoRA adapters train under ZeRO 0 or 2 "
            "(the adapters are small; the merged export needs whole weights on one rank)"
        )


def build_config(values: dict[str, Any]) -> GeorConfig:
    """A nested dict (sections -> keys) -> a validated GeorConfig."""
    cfg = _build(GeorConfig, values, "")
    _check_consistency(cfg)
    return cfg


def load_config(
    source: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    values: dict[str, Any] | None = None,
) -> GeorConfig:
    """Defaults <- preset or YAML (``source``; the tiny preset when None) <- ``key=value``
    overrides <- ``values`` (a dotted-key dict of already-typed values, e.g. from CLI flags)."""
    merged = _read_source(source or DEFAULT_PRESET)
    merged = _deep_merge(merged, parse_overrides(list(overrides)))
    for key, value in (values or {}).items():
        node = merged
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return build_config(merged)


def is_secret_key(key: str) -> bool:
    """True when a (dotted) key names a secret; such values are never logged."""
    words = re.split(r"[^a-z0-9]+", key.rsplit(".", 1)[-1].lower())
    return any(word in SECRET_WORDS for word in words)


def flat_params(cfg: GeorConfig, sections: tuple[str, ...] = ()) -> dict[str, Any]:
    """Dotted ``section.key -> value`` pairs, secret-looking keys removed and the credentials of
    URIs masked (for MLflow params)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif not is_secret_key(prefix):
            out[prefix] = uris.redact_uri(node) if isinstance(node, str) else node

    data = cfg.to_dict()
    for name in sections or tuple(data):
        walk(name, data[name])
    return out


__all__ = [
    "ConfigError",
    "GeorConfig",
    "build_config",
    "flat_params",
    "is_secret_key",
    "load_config",
    "load_yaml",
    "parse_overrides",
    "preset_names",
]
