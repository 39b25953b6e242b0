"""`geor evaluate --data URI --model URI [--model URI ...] --output URI [--benchmark B]`: batch
inference on Ray Data, the field's standard metrics, reasoning review, plots, model comparison.

``--model`` repeats to compare models on the same rows (``--model LABEL=URI`` names one). Prints
the comparison table, then one JSON line. Re-running resumes: finished prediction shards are
kept. With ``--benchmark im2gps3k|yfcc4k`` (or that name in the data's URI) the published rows
are added to the comparison for reference.
"""

from __future__ import annotations

import argparse
import json

from flows.commands.config_args import add_config_arguments, config_from_args, local_paths_absolute
from geor_core.scoring.published import BENCHMARKS

FLAG_KEYS = {"data": "data.dataset"}


EXAMPLES = """examples:
  geor evaluate --data runs/prepared --model sft=runs/sft/model --model runs/grpo/model --output runs/eval
  geor evaluate --data runs/prepared --model models:/geo-r@champion --output runs/eval-val eval.splits=[val]
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", help="a `geor prepare` output (local or s3://); eval.splits picks the splits"
    )
    parser.add_argument(
        "--model",
        action="append",
        default=None,
        help="model to evaluate (local dir, s3://, hub id, models:/NAME@ALIAS; LABEL=URI names it); repeat to compare",
    )
    parser.add_argument("--output", help="where predictions, report and plots go (local or s3://)")
    parser.add_argument(
        "--benchmark", choices=BENCHMARKS, default=None, help="add this benchmark's published rows"
    )
    add_config_arguments(parser)


def _absolute_model(spec: str) -> str:
    """``URI`` or ``LABEL=URI`` with a local URI made absolute (Ray actors run elsewhere)."""
    label, sep, uri = spec.partition("=")
    if not sep or "/" in label or ":" in label:
        return local_paths_absolute("name_or_path", spec)
    return f"{label}={local_paths_absolute('name_or_path', uri)}"


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args, FLAG_KEYS)
    from geor_core.errors import UserFacingError
    from geor_core.scoring.evaluation_report import comparison_columns, markdown_table
    from tasks.evaluate import run_evaluate

    models = [_absolute_model(m) for m in args.model] if args.model else []
    models = models or ([cfg.model.name_or_path] if cfg.model.name_or_path else [])
    args.output = local_paths_absolute("output", args.output)
    for flag, value in (("--data", cfg.data.dataset), ("--model", models), ("--output", args.output)):
        if not value:
            raise UserFacingError(f"{flag} is required")
    result = run_evaluate(cfg, cfg.data.dataset, models, args.output, args.benchmark)
    print(markdown_table(result.comparison, comparison_columns(result.comparison)))
    summary = {
        "output": result.output,
        "benchmark": result.benchmark,
        "models": {
            e.label: {
                "predictions": e.predictions_uri,
                "n": e.report.metrics["n"],
                "acc_200km": e.report.metrics["acc_200km"],
                "median_km": e.report.metrics["median_km"],
                "shards_computed": len(e.inference.shards_computed),
                "shards_skipped": e.inference.shards_skipped,
                "rows_per_second": e.inference.rows_per_second,
            }
            for e in result.models
        },
    }
    print(json.dumps(summary))
    return 0
