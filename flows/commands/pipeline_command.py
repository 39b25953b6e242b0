"""`geor pipeline [--config P] [--manifest URI] [--model URI] [--output ROOT] [--from STAGE | --only
STAGE[,STAGE]] [key=value ...]`: the whole workflow, prepare -> SFT -> mine hard -> GRPO ->
evaluate (base / SFT / SFT+GRPO) -> register with the champion gate.

Re-running skips every stage whose output is complete for unchanged inputs and settings, and
resumes a crashed one (flows/pipeline_run.py; the stages are declared in flows/pipeline_stages.py).
Prints stage progress, the comparison table, the gate's decision (every registered version, and
which became champion and why, or why none did) and one JSON line. Submit it to a
cluster with
``ray job submit --runtime-env clusters/runtime_env.yaml -- geor pipeline ...`` (docs/clusters.md).
"""

from __future__ import annotations

import argparse
import json
import sys

from flows.commands.config_args import (
    add_config_arguments,
    add_verbose_argument,
    config_from_args,
    local_paths_absolute,
)
from flows.pipeline_run import LEFT_BEHIND, run_pipeline
from flows.pipeline_stages import STAGES
from geor_core.config import GeorConfig

STAGE_NAMES = [stage.name for stage in STAGES]
FLAG_KEYS = {"manifest": "prepare.manifest", "model": "model.name_or_path", "output": "storage.root"}


EXAMPLES = """examples:
  geor pipeline --manifest runs/world/manifest.csv --model runs/tiny-model --output runs/pipeline
  geor pipeline --manifest photos.csv --model runs/tiny-model --output runs/p --from grpo grpo.beta=0.02
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--manifest", help="photos with GPS: CSV / Parquet / JSONL, local or s3:// (prepare.manifest)"
    )
    parser.add_argument("--model", help="the base model: local dir, s3://, hub id or models:/NAME@ALIAS")
    parser.add_argument("--output", help="root of every stage's output, local or s3:// (storage.root)")
    parser.add_argument(
        "--from", dest="from_stage", choices=STAGE_NAMES, help="re-run this stage and the later ones"
    )
    parser.add_argument(
        "--only",
        help=f"run just these stages (comma-separated: {','.join(STAGE_NAMES)}); inputs from earlier runs",
    )
    add_verbose_argument(parser)
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from geor_core.console import console_log
    from geor_core.ownership import claim_output
    from geor_core.uris import is_s3

    cfg = config_from_args(args, FLAG_KEYS)
    root = str(local_paths_absolute("output", cfg.storage.root))
    if is_s3(root):
        return _pipeline(args, cfg, root)
    claim_output(root, "pipeline", legacy=LEFT_BEHIND)  # first, as the run would: the full log goes there
    with console_log(root, "pipeline", verbose=args.verbose):
        return _pipeline(args, cfg, root)


def _pipeline(args: argparse.Namespace, cfg: GeorConfig, root: str) -> int:
    from geor_core.registry.tracking import tracking_uri
    from geor_core.scoring.evaluation_report import comparison_columns, group_reward_change, markdown_table
    from geor_core.uris import redact_uri

    # preset paths are relative to where the command runs; Ray workers run elsewhere
    cfg.model.name_or_path = str(local_paths_absolute("name_or_path", cfg.model.name_or_path))
    if cfg.prepare.manifest:
        cfg.prepare.manifest = str(local_paths_absolute("manifest", cfg.prepare.manifest))
    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    result = run_pipeline(cfg, root, from_stage=args.from_stage, only=only)
    if result.comparison:
        print(markdown_table(result.comparison, comparison_columns(result.comparison)))
        change = group_reward_change(result.comparison, "sft", "grpo")
        if change:
            print(change + "\n")
    register = result.stages.get("register")
    if result.gate is None and register is not None and register.status == "ran":  # the gate printed its own
        print("registered nothing: no MLflow tracking (tracking.uri / MLFLOW_TRACKING_URI)")
    summary = {
        "root": root,
        "stages": {name: outcome.status for name, outcome in result.stages.items()},
        "parent_run_id": result.parent_run_id,
        "mlflow": redact_uri(tracking_uri(cfg)) or None,
    }
    if result.gate is not None:
        summary["registered"] = {
            "model": result.gate.model_name,
            "versions": {entry.label: entry.version for entry in result.gate.registered},
            "best": result.gate.version,
            "promoted": result.gate.promoted,
            "reason": result.gate.decision.reason,
            "champion": result.gate.champion,
        }
    print(json.dumps(summary), flush=True)
    print(f"MLflow: {summary['mlflow'] or 'not tracking'}", file=sys.stderr)
    return 0
