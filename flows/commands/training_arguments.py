"""What `geor sft` and `geor grpo` share: their flags and how a run is reported."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from flows.commands.config_args import add_config_arguments, config_from_args


def add_training_arguments(parser: argparse.ArgumentParser, *, start_help: str) -> None:
    parser.add_argument("--data", help="a `geor prepare` (or `geor mine-hard`) output, local or s3://")
    parser.add_argument("--model", help=start_help)
    parser.add_argument("--output", help="where checkpoints and the exported model go")
    parser.add_argument(
        "--overwrite", action="store_true", help="start over, deleting the checkpoints and export in --output"
    )
    add_config_arguments(parser)


def run_training_command(
    args: argparse.Namespace, stage: str, runner: Callable, *, summary_keys: tuple[str, ...]
) -> int:
    from geor_core.errors import UserFacingError

    flags = {"data": "data.dataset", "model": "model.name_or_path", "output": f"{stage}.output"}
    cfg = config_from_args(args, flags)
    output = getattr(cfg, stage).output
    for flag, value in (
        ("--data", cfg.data.dataset),
        ("--model", cfg.model.name_or_path),
        ("--output", output),
    ):
        if not value:
            raise UserFacingError(f"{flag} is required (or set it in the config)")
    result = runner(cfg, cfg.data.dataset, cfg.model.name_or_path, output, overwrite=args.overwrite)
    summary = {
        "export": result.export_uri,
        "skipped": result.skipped,
        "global_step": result.global_step,
        "resumed_from_step": result.resumed_from_step,
        **{key: result.metrics.get(key) for key in summary_keys},
    }
    print(json.dumps(summary))
    return 0
