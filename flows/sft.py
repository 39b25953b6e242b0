"""`geor sft --data URI --model URI --output URI [...]`: fine-tune a VLM on Chain-of-Region rows.

Runs on the Ray cluster in place (``RAY_ADDRESS``) or a local one. Writes Ray Train checkpoints
under ``<output>/ray`` and the Hugging Face export under ``<output>/model``; prints one JSON line.
Re-running resumes from the last checkpoint, or skips when the export is complete.
"""

from __future__ import annotations

import argparse
import json

from flows.config_args import add_config_arguments, config_from_args

FLAG_KEYS = {"data": "data.dataset", "model": "model.name_or_path", "output": "sft.output"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="a `geor prepare` output (local or s3://)")
    parser.add_argument("--model", help="model to start from: local dir, s3://, hub id or models:/NAME@ALIAS")
    parser.add_argument("--output", help="where checkpoints and the exported model go")
    parser.add_argument("--overwrite", action="store_true", help="start over, deleting what --output holds")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args, FLAG_KEYS)
    from geor_core.errors import UserFacingError
    from tasks.sft import run_sft

    for key, value in (("--data", cfg.data.dataset), ("--model", cfg.model.name_or_path), ("--output", cfg.sft.output)):
        if not value:
            raise UserFacingError(f"{key} is required (or set it in the config)")
    result = run_sft(cfg, cfg.data.dataset, cfg.model.name_or_path, cfg.sft.output, overwrite=args.overwrite)
    print(
        json.dumps(
            {
                "export": result.export_uri,
                "skipped": result.skipped,
                "global_step": result.global_step,
                "resumed_from_step": result.resumed_from_step,
                "eval_loss": result.metrics.get("eval_loss"),
            }
        )
    )
    return 0
