"""`geor sft --data URI --model URI --output URI [...]`: fine-tune a VLM on Chain-of-Region rows.

Runs on the Ray cluster in place (``RAY_ADDRESS``) or a local one. Writes Ray Train checkpoints
under ``<output>/ray`` and the Hugging Face export under ``<output>/model``; prints one JSON line.
Re-running resumes from the last checkpoint, or skips when the export is complete.
"""

from __future__ import annotations

import argparse

from flows.commands.training_arguments import add_training_arguments, run_training_command

EXAMPLES = """examples:
  geor sft --data runs/prepared --model runs/tiny-model --output runs/sft
  geor sft --config qwen2.5-vl-7b --data s3://bucket/prepared --output s3://bucket/sft
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(
        parser, start_help="model to start from: local dir, s3://, hub id or models:/NAME@ALIAS"
    )


def run(args: argparse.Namespace) -> int:
    from tasks.sft import run_sft

    return run_training_command(args, "sft", run_sft, summary_keys=("eval_loss", "train_loss"))
