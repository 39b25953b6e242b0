"""Validation: a nested dict of sections and keys -> a ``GeorConfig``, each value checked against
its field's type, choices and range, then the rules that tie keys together (split shares, batch
sizes, dtype on CPU, LoRA under ZeRO 3). Errors name the key, the bad value and what is allowed
(an unknown key: the nearest known one, by ``difflib``); numbers must be finite (``nan`` and
``.inf`` are refused by name)."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import typing
from typing import Any

from geor_core.config.fields import ConfigError
from geor_core.config.sections import GeorConfig


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


def _unknown_key(prefix: str, key: str, allowed: list[str]) -> str:
    """The message for an unknown key: the nearest known key when one is close, else all of them."""
    dotted = ".".join(filter(None, [prefix, key]))
    where = f"section {prefix!r}" if prefix else "the top level"
    close = difflib.get_close_matches(key, allowed, n=1)
    if close:
        nearest = ".".join(filter(None, [prefix, close[0]]))
        return (
            f"unknown key {dotted!r} in {where}; did you mean {nearest!r}? (every key: docs/configuration.md)"
        )
    return f"unknown key {dotted!r} in {where}; allowed: {', '.join(allowed)}"


def _build(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    specs = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(specs))
    if unknown:
        raise ConfigError(_unknown_key(prefix, str(unknown[0]), sorted(specs)))
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
    _check_worker_resources(cfg.cluster.worker_resources)
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
    if stage.lr_schedule_over == "max_seconds" and not stage.max_seconds:
        raise ConfigError(
            f"{name}.lr_schedule_over: got 'max_seconds' with {name}.max_seconds=0; a schedule over the "
            f"clock needs a budget (set {name}.max_seconds)"
        )
    if cfg.model.lora.enabled and stage.zero_stage == 3:
        raise ConfigError(
            f"{name}.zero_stage: got 3 with model.lora.enabled=true; LoRA adapters train under ZeRO 0 or 2 "
            "(the adapters are small; the merged export needs whole weights on one rank)"
        )


def _check_worker_resources(resources: Any) -> None:
    if not isinstance(resources, dict):
        raise ConfigError(f"cluster.worker_resources: got {resources!r}, expected a mapping")
    for name, amount in resources.items():
        key = f"cluster.worker_resources.{name}"
        if not isinstance(name, str) or name in ("", "CPU", "GPU", "memory", "object_store_memory"):
            raise ConfigError(f"{key}: not a custom resource (CPUs and GPUs have the stages' own keys)")
        number = isinstance(amount, int | float) and not isinstance(amount, bool)
        if not number or not 0 < amount < float("inf") or (amount > 1 and amount != int(amount)):
            raise ConfigError(f"{key}: got {amount!r}, expected a positive number, whole above 1")


def build_config(values: dict[str, Any]) -> GeorConfig:
    """A nested dict (sections -> keys) -> a validated GeorConfig."""
    cfg = _build(GeorConfig, values, "")
    _check_consistency(cfg)
    return cfg
