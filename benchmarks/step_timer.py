"""The benchmarks' per-step clock: a TrainerCallback that marks a training process's trainer build,
train begin and end and every step end, with the process's CPU seconds and run-queue wait.

Its own module so that importing the benchmark does not import transformers (and torch): a Ray
driver, like `geor sft`'s, never does, and its start would otherwise be charged 11-12 s of imports
it does not pay (measured 2026-12-04: `from transformers import TrainerCallback` took 11.6 s here).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback


def _runqueue_wait_s() -> float:
    """Seconds this process's threads have waited on a run queue (Linux schedstat; 0 elsewhere)."""
    total = 0
    for task in Path("/proc/self/task").glob("*/schedstat"):
        try:
            total += int(task.read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


class StepTimer(TrainerCallback):
    """Wall-clock marks of one training process: trainer built, train begin/end, every step end."""

    def __init__(self) -> None:
        self.marks: dict[str, float] = {}
        self.step_ends: list[float] = []
        self.step_cpu: list[float] = []  # this process's CPU seconds (all threads) at each step end
        self.step_waits: list[float] = []  # its threads' seconds spent runnable but not running
        self.setup: dict[str, Any] = {}

    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.marks["trainer_built"] = time.time()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import torch
        import torch.distributed as dist

        self.marks["train_begin"] = time.time()
        self.setup = {
            "torch_threads": torch.get_num_threads(),
            "backend": dist.get_backend() if dist.is_initialized() else None,
            "world_size": args.world_size,
            "per_device_batch": args.per_device_train_batch_size,
            "niceness": os.nice(0),
        }

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.step_ends.append(time.time())
        self.step_cpu.append(time.process_time())
        self.step_waits.append(_runqueue_wait_s())

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.marks["train_end"] = time.time()

    def as_dict(self) -> dict[str, Any]:
        return {
            "marks": self.marks,
            "step_ends": self.step_ends,
            "step_cpu": self.step_cpu,
            "step_waits": self.step_waits,
            "setup": self.setup,
        }
