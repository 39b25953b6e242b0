"""The arguments every config-driven command shares: `--config PRESET_OR_YAML` and `key=value ...`."""

from __future__ import annotations

import argparse

from geor_core import uris
from geor_core.config import GeorConfig, load_config, preset_names
from geor_core.config.loading import DEFAULT_PRESET


def add_config_arguments(parser: argparse.ArgumentParser, default_preset: str = DEFAULT_PRESET) -> None:
    parser.add_argument(
        "--config",
        default=None,
        metavar="PRESET_OR_YAML",
        help=f"a preset ({', '.join(preset_names())}) or a YAML file; default: {default_preset}",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted config overrides, e.g. grpo.beta=0.02 (every key: docs/configuration.md)",
    )


PATH_KEYS = ("manifest", "output", "dataset", "images_root", "name_or_path")


def local_paths_absolute(key: str, value: object) -> object:
    """Flag values that are local paths, made absolute: Ray workers run in other directories."""
    leaf = key.rsplit(".", 1)[-1]
    if not isinstance(value, str) or leaf not in PATH_KEYS:
        return value
    return uris.absolute(value, may_be_hub_id=leaf == "name_or_path")


def config_from_args(args: argparse.Namespace, flags: dict[str, str] | None = None) -> GeorConfig:
    """The config from --config and overrides; ``flags`` maps argparse dests to dotted keys (flag sugar).

    A flag given on the command line wins over the same key in the preset and in overrides.
    """
    values = {}
    for dest, key in (flags or {}).items():
        value = getattr(args, dest, None)
        if value is not None and value is not False:
            values[key] = local_paths_absolute(key, value)
    return load_config(args.config, args.overrides, values)


def add_verbose_argument(parser: argparse.ArgumentParser) -> None:
    """``--verbose`` for the commands that keep a full log under their output (geor_core/console.py)."""
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show everything on the console (Ray, its workers, the libraries); "
        "the full log is always written under OUTPUT/logs/",
    )
