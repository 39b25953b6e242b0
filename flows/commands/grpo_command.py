"""`geor grpo --data URI --model URI --output URI [...]`: GRPO with Haversine rewards on Ray.

Starts from an SFT export (or any model URI). Runs on the Ray cluster in place (``RAY_ADDRESS``)
or a local one; checkpoints under ``<output>/ray``, the Hugging Face export under
``<output>/model``; prints one JSON line. Re-running resumes, or skips a complete export.
"""

from __future__ import annotations

import argparse

from flows.commands.training_arguments import add_training_arguments, run_training_command

EXAMPLES = """examples:
  geor grpo --data runs/hard --model runs/sft/model --output runs/grpo
  geor grpo --data runs/hard --model runs/sft/model --output runs/grpo-b grpo.beta=0.02
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_training_arguments(
        parser, start_help="model to start from (an SFT export, local dir, s3://, hub id, models:/)"
    )


def run(args: argparse.Namespace) -> int:
    from tasks.grpo import run_grpo

    return run_training_command(args, "grpo", run_grpo, summary_keys=("eval_reward", "reward"))
