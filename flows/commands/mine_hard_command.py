"""`geor mine-hard --data URI --model URI --output URI [--radius-km 200]`: keep the training rows
whose prediction lands farther than the radius from the truth (missing predictions count as
far), as a `geor prepare`-format dataset that `geor grpo --data` accepts. Val and test rows are
copied unchanged. The radius defaults to ``grpo.hard_radius_km``; prints one JSON line.
"""

from __future__ import annotations

import argparse
import json

from flows.commands.config_args import add_config_arguments, config_from_args, local_paths_absolute

FLAG_KEYS = {"data": "data.dataset", "model": "model.name_or_path", "radius_km": "grpo.hard_radius_km"}


EXAMPLES = """examples:
  geor mine-hard --data runs/prepared --model runs/sft/model --output runs/hard --radius-km 200
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="a `geor prepare` output whose train split is mined (local or s3://)")
    parser.add_argument(
        "--model", help="the base or SFT model: local dir, s3://, hub id or models:/NAME@ALIAS"
    )
    parser.add_argument("--output", help="where the hard-sample dataset goes (local or s3://)")
    parser.add_argument(
        "--radius-km",
        type=float,
        default=None,
        help="keep rows predicted farther than this (grpo.hard_radius_km)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a complete output made otherwise")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args, FLAG_KEYS)
    args.output = local_paths_absolute("output", args.output)
    from geor_core.errors import UserFacingError
    from tasks.mine_hard import run_mine_hard

    for flag, value in (
        ("--data", cfg.data.dataset),
        ("--model", cfg.model.name_or_path),
        ("--output", args.output),
    ):
        if not value:
            raise UserFacingError(f"{flag} is required")
    result = run_mine_hard(
        cfg,
        cfg.data.dataset,
        cfg.model.name_or_path,
        args.output,
        cfg.grpo.hard_radius_km,
        overwrite=args.overwrite,
    )
    mining = result.stats["mining"]
    summary = {"output": result.output, "skipped": result.skipped, "splits": result.stats["splits"]}
    summary |= {
        key: mining[key] for key in ("radius_km", "rows_in", "kept", "dropped", "missing_predictions")
    }
    print(json.dumps(summary))
    return 0
