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

The schema is split by purpose: ``fields`` (how a key is declared), ``sections`` (the dataclasses),
``validation`` (checking a nested dict into a GeorConfig), ``bounded_yaml`` (safe YAML reading),
``loading`` (presets, overrides, ``load_config``) and ``logged_params`` (the config as MLflow params).
"""

from __future__ import annotations

from geor_core.config.bounded_yaml import load_yaml
from geor_core.config.fields import ConfigError
from geor_core.config.loading import load_config, parse_overrides, preset_names
from geor_core.config.logged_params import flat_params, is_secret_key
from geor_core.config.sections import (
    DataConfig,
    EvalConfig,
    GeorConfig,
    GrpoConfig,
    LoraConfig,
    ModelConfig,
    PrepareConfig,
    RegistryConfig,
    RetrainConfig,
    RewardConfig,
    SftConfig,
    StorageConfig,
    SweepConfig,
    TrackingConfig,
    TrainingConfig,
)
from geor_core.config.validation import build_config

__all__ = [
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "GeorConfig",
    "GrpoConfig",
    "LoraConfig",
    "ModelConfig",
    "PrepareConfig",
    "RegistryConfig",
    "RetrainConfig",
    "RewardConfig",
    "SftConfig",
    "StorageConfig",
    "SweepConfig",
    "TrackingConfig",
    "TrainingConfig",
    "build_config",
    "flat_params",
    "is_secret_key",
    "load_config",
    "load_yaml",
    "parse_overrides",
    "preset_names",
]
