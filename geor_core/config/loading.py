"""Building a config from its sources: the dataclass defaults <- a preset (found by name in the
installed ``configs`` package, following ``extends:``) or a YAML file <- dotted ``key=value``
overrides (values parsed as YAML) <- already-typed values from CLI flags."""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Any

from geor_core.config.bounded_yaml import load_yaml
from geor_core.config.fields import ConfigError
from geor_core.config.sections import GeorConfig
from geor_core.config.validation import build_config

DEFAULT_PRESET = "tiny"


def preset_names() -> list[str]:
    """Names of the presets shipped in the ``configs`` package."""
    return sorted(p.name[:-5] for p in resources.files("configs").iterdir() if p.name.endswith(".yaml"))


def _read_source(source: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A preset name or YAML path -> a nested dict, following ``extends:``."""
    if source in seen:
        raise ConfigError(f"preset cycle: {' -> '.join((*seen, source))}")
    path = Path(source)
    if source.endswith((".yaml", ".yml")) or path.is_file():  # a folder named like a preset is not one
        if not path.is_file():
            raise ConfigError(f"config file {source!r} does not exist")
        text = path.read_text()
    else:
        candidate = resources.files("configs") / f"{source}.yaml"
        if not candidate.is_file():
            close = difflib.get_close_matches(source, preset_names(), n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"unknown preset {source!r}; {hint}presets: {', '.join(preset_names())} (or a YAML path)"
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
