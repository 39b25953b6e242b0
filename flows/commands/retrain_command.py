"""`geor retrain [--config P] --manifest URI [--min-new-rows N] [--output ROOT] [key=value ...]`:
retrain the champion on the manifest's new photos and promote the challenger only if it passes
the champion gate (flows/retrain_run.py). Exits 0 with "nothing to do" when there are too few new
rows; exits 2 with the holder's name when another retrain holds the lock. Prints the decision,
both scorecards and one JSON line.
"""

from __future__ import annotations

import argparse
import json

from flows.commands.config_args import add_config_arguments, config_from_args, local_paths_absolute

FLAG_KEYS = {"manifest": "prepare.manifest", "min_new_rows": "retrain.min_new_rows", "output": "storage.root"}


EXAMPLES = """examples:
  geor retrain --manifest s3://bucket/photos.csv --output s3://bucket/retrain
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--manifest", help="photos with GPS, old and new (CSV / Parquet / JSONL, local or s3://)"
    )
    parser.add_argument(
        "--min-new-rows", dest="min_new_rows", type=int, help="retrain only with at least this many new rows"
    )
    parser.add_argument("--output", help="root for retrain runs and the lock (storage.root)")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args, FLAG_KEYS)
    from flows.retrain_run import run_retrain
    from geor_core.errors import UserFacingError

    if not cfg.prepare.manifest:
        raise UserFacingError("--manifest is required (or set prepare.manifest)")
    cfg.storage.root = str(local_paths_absolute("output", cfg.storage.root))
    result = run_retrain(cfg, cfg.prepare.manifest)
    summary = {
        "status": result.status,
        "champion_before": result.champion_version,
        "rows_total": result.new_rows.rows_total,
        "rows_new": result.new_rows.rows_new,
        "work_dir": result.work_dir or None,
    }
    if result.gate is not None:
        summary |= {"registered_version": result.gate.version, "reason": result.gate.decision.reason}
    print(json.dumps(summary), flush=True)
    return 0
