"""The `geor` command line: one subcommand per stage, each in its own module under flows/commands/.

A command module defines ``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported
only when their command runs, so `geor score` never pays for importing Ray or torch.
Expected failures (bad config, bad input) raise ``UserFacingError`` or ``ConfigError`` and end
with a one-line message on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from geor_core.config import ConfigError
from geor_core.errors import UserFacingError

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "score": (
        "flows.commands.score_command",
        "score a predictions file against truth (the field's standard table)",
    ),
    "make-tiny-model": (
        "flows.commands.make_tiny_model_command",
        "build the tiny random-init Qwen2.5-VL model",
    ),
    "make-world": (
        "flows.commands.make_world_command",
        "render the synthetic learnable world: JPEGs + manifest",
    ),
    "prepare": (
        "flows.commands.prepare_command",
        "manifest of photos with GPS -> Chain-of-Region training rows (Ray Data)",
    ),
    "grpo": (
        "flows.commands.grpo_command",
        "GRPO with Haversine rewards from Ray reward actors (Ray Train + DeepSpeed + TRL)",
    ),
    "sft": (
        "flows.commands.sft_command",
        "supervised fine-tuning on Chain-of-Region rows (Ray Train + DeepSpeed + TRL)",
    ),
    "evaluate": (
        "flows.commands.evaluate_command",
        "batch inference on Ray Data: metrics, reasoning, plots, comparison",
    ),
    "predict": (
        "flows.commands.predict_command",
        "geolocate photos without truth: CoR text and coordinates as Parquet + CSV",
    ),
    "mine-hard": (
        "flows.commands.mine_hard_command",
        "keep the training rows predicted beyond a radius (GRPO hard samples)",
    ),
    "sweep": (
        "flows.commands.sweep_command",
        "hyper-parameter sweeps of GRPO on Ray Tune, trials judged on validation",
    ),
    "pipeline": (
        "flows.commands.pipeline_command",
        "the whole workflow: prepare, SFT, mine hard, GRPO, evaluate, register with the champion gate",
    ),
    "demo": (
        "flows.commands.demo_command",
        "the whole pipeline on the tiny model and synthetic world, with a local MLflow server",
    ),
    "retrain": (
        "flows.commands.retrain_command",
        "retrain the champion on new photos; promote only through the champion gate",
    ),
    "models": (
        "flows.commands.models_command",
        "the model registry: list versions with scores and lineage, promote, roll back",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="geor", description="Geo-R on Ray: Chain-of-Region SFT + GRPO for image geolocation."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(_module=module_name)
        if "--help" in sys.argv or "-h" in sys.argv or _wanted(name):
            importlib.import_module(module_name).add_arguments(command)
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
