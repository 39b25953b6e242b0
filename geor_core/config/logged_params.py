"""A config as MLflow params and as the ``config.yaml`` attached to every run: dotted ``section.key
-> value`` pairs (or the whole config as YAML) with secret-looking keys left out and the
credentials of URIs masked.

``STAGE_READS`` declares, once, the config each stage reads: a name in the stage's key mapped to
a section (``"sft"``) or one field (``"grpo.hard_radius_km"``). The pipeline's stage records hash
it into their keys, and a stage's MLflow run (a pipeline stage, or `geor predict`, a retrain's
check, a champion move) logs exactly those values as its params; a run of another name, such as
a flow's parent run, logs the whole config.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import yaml

from geor_core import uris
from geor_core.config.sections import GeorConfig

SECRET_WORDS = {"key", "apikey", "token", "secret", "password", "passwd", "credential", "credentials"}

STAGE_READS: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {
        "prepare": {"prepare": "prepare"},
        "sft": {"model": "model", "sft": "sft"},
        "mine-hard": {"eval": "eval", "radius_km": "grpo.hard_radius_km"},
        "grpo": {"grpo": "grpo", "reward": "reward"},
        "evaluate": {"eval": "eval", "reward": "reward"},
        "register": {"registry": "registry"},
        "predict": {
            "model": "model",
            "eval": "eval",
            "allowed_schemes": "prepare.allowed_schemes",
            "images_root": "prepare.images_root",
        },
        "retrain-check": {"retrain": "retrain"},
        "models-promote": {"registry": "registry"},
        "models-rollback": {"registry": "registry"},
    }
)


def is_secret_key(key: str) -> bool:
    """True when a (dotted) key names a secret; such values are never logged."""
    words = re.split(r"[^a-z0-9]+", key.rsplit(".", 1)[-1].lower())
    return any(word in SECRET_WORDS for word in words)


def _clean(prefix: str, node: Any, out: dict[str, Any]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            _clean(f"{prefix}.{k}" if prefix else k, v, out)
    elif not is_secret_key(prefix):
        out[prefix] = uris.redact_uri(node) if isinstance(node, str) else node


def flat_params(cfg: GeorConfig, sections: tuple[str, ...] = ()) -> dict[str, Any]:
    """Dotted ``section.key -> value`` pairs of ``sections`` (sections, or ``section.field``
    paths; all sections when none), secret-looking keys removed and the credentials of URIs
    masked (for MLflow params)."""
    out: dict[str, Any] = {}
    data = cfg.to_dict()
    for path in sections or tuple(data):
        node: Any = data
        for part in path.split("."):
            node = node[part]
        _clean(path, node, out)
    return out


def stage_params(cfg: GeorConfig, stage: str) -> dict[str, Any]:
    """The params of ``stage``'s run: the config it reads (``STAGE_READS``), else the whole config."""
    return flat_params(cfg, tuple(STAGE_READS[stage].values()) if stage in STAGE_READS else ())


def config_yaml(cfg: GeorConfig) -> str:
    """The full resolved config as YAML, secret-looking keys removed and URI credentials masked."""

    def clean(node: Any, prefix: str) -> Any:
        if isinstance(node, dict):
            return {
                k: clean(v, f"{prefix}.{k}") for k, v in node.items() if not is_secret_key(f"{prefix}.{k}")
            }
        if isinstance(node, list):
            return [clean(v, prefix) for v in node]
        return uris.redact_uri(node) if isinstance(node, str) else node

    return yaml.safe_dump(clean(cfg.to_dict(), ""), sort_keys=False)
