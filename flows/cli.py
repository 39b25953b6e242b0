"""The `geor` command line: one subcommand per stage, each in its own module under flows/commands/.

A command module defines ``add_arguments(parser)``, ``run(args) -> int`` and ``EXAMPLES`` (the
epilog of its ``--help``: one or two command lines). Modules are imported only when their command
runs, so `geor score` never pays for importing Ray or torch. Commands are listed in the order of
the workflow; a mistyped command or choice is answered with the nearest valid one.
Expected failures (bad config, bad input) raise ``UserFacingError`` or ``ConfigError`` and end
with a one-line message on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys
from importlib import metadata
from typing import Any

from geor_core.config import ConfigError
from geor_core.errors import UserFacingError

# command -> (module, one-line help), in the order of the workflow
COMMANDS: dict[str, tuple[str, str]] = {
    "make-world": (
        "flows.commands.make_world_command",
        "render the synthetic learnable world: JPEGs + manifest",
    ),
    "make-tiny-model": (
        "flows.commands.make_tiny_model_command",
        "build the tiny random-init Qwen2.5-VL model",
    ),
    "prepare": (
        "flows.commands.prepare_command",
        "manifest of photos with GPS -> Chain-of-Region training rows (Ray Data)",
    ),
    "sft": (
        "flows.commands.sft_command",
        "supervised fine-tuning on Chain-of-Region rows (Ray Train + DeepSpeed + TRL)",
    ),
    "mine-hard": (
        "flows.commands.mine_hard_command",
        "keep the training rows predicted beyond a radius (GRPO hard samples)",
    ),
    "grpo": (
        "flows.commands.grpo_command",
        "GRPO with Haversine rewards from Ray reward actors (Ray Train + DeepSpeed + TRL)",
    ),
    "evaluate": (
        "flows.commands.evaluate_command",
        "batch inference on Ray Data: metrics, reasoning, plots, comparison",
    ),
    "score": (
        "flows.commands.score_command",
        "score a predictions file against truth (the field's standard table)",
    ),
    "predict": (
        "flows.commands.predict_command",
        "geolocate photos without truth: CoR text and coordinates as Parquet + CSV",
    ),
    "pipeline": (
        "flows.commands.pipeline_command",
        "the whole workflow: prepare, SFT, mine hard, GRPO, evaluate, register with the champion gate",
    ),
    "models": (
        "flows.commands.models_command",
        "the model registry: list versions with scores and lineage, promote, roll back",
    ),
    "sweep": (
        "flows.commands.sweep_command",
        "hyper-parameter sweeps of GRPO on Ray Tune, trials judged on validation",
    ),
    "retrain": (
        "flows.commands.retrain_command",
        "retrain the champion on new photos; promote only through the champion gate",
    ),
    "demo": (
        "flows.commands.demo_command",
        "the whole pipeline on the tiny model and synthetic world, with a local MLflow server",
    ),
    "config": (
        "flows.commands.config_command",
        "print the resolved configuration, or the configuration reference",
    ),
}

EPILOG = """Run `geor COMMAND --help` for a command's options and examples.
Configuration: docs/configuration.md; `geor config show` prints the resolved one.
"""


class _Parser(argparse.ArgumentParser):
    """argparse that answers a mistyped command or choice with the nearest valid one."""

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is not None and value not in action.choices:
            close = difflib.get_close_matches(str(value), [str(choice) for choice in action.choices], n=1)
            if close:
                raise argparse.ArgumentError(action, f"invalid choice: {value!r}; did you mean {close[0]!r}?")
        super()._check_value(action, value)


def _version() -> str:
    try:
        return f"geor {metadata.version('geor')}"
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "geor (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="geor",
        description="Geo-R on Ray: Chain-of-Region SFT + GRPO for image geolocation.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        command = sub.add_parser(
            name, help=help_text, description=help_text, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        command.set_defaults(_module=module_name)
        if "--help" in sys.argv or "-h" in sys.argv or _wanted(name):
            module = importlib.import_module(module_name)
            module.add_arguments(command)
            command.epilog = module.EXAMPLES
    return parser


def _wanted(name: str) -> bool:
    return name in sys.argv[1:2]


def main(argv: list[str] | None = None) -> int:
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    parser = build_parser()
    args = parser.parse_args()
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except (ConfigError, UserFacingError) as exc:
        print(f"geor {args.command}: error: {exc}", file=sys.stderr)
        return 2
