"""The arguments every config-driven command shares: `--config PRESET_OR_YAML` and `key=value ...`."""

from __future__ import annotations

import argparse

from geor_core.config import GeorConfig, load_config


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default=None, help="preset name (tiny, test, qwen2.5-vl-7b, ...) or YAML path"
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. grpo.beta=0.02"
    )


def config_from_args(args: argparse.Namespace, flags: dict[str, str] | None = None) -> GeorConfig:
    """The config from --config and overrides; ``flags`` maps argparse dests to dotted keys (flag sugar).

    A flag given on the command line wins over the same key in the preset and in overrides.
    """
    values = {}
    for dest, key in (flags or {}).items():
        value = getattr(args, dest, None)
        if value is not None and value is not False:
            values[key] = value
    return load_config(args.config, args.overrides, values)
