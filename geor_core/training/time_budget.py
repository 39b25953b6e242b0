"""A training stage's wall-clock budget (``<stage>.max_seconds``): stop after the step that spends it.

The clock starts when training starts (or restarts after a worker failure: the budget is per
attempt) and is read after every optimizer step. With several workers the ranks agree through one
all-reduce of a flag per step, so every rank stops after the same step; a rank that stopped alone
would leave the others waiting in their next collective. The Trainer then ends as at its last
step: the export and the marker follow, and the marker records ``stopped_by_time_budget``.
"""

from __future__ import annotations

import time
from typing import Any

from transformers import TrainerCallback


class TimeBudgetCallback(TrainerCallback):
    """Ends training after the first optimizer step that finishes ``max_seconds`` or more after
    training began (0: no budget)."""

    def __init__(self, max_seconds: float, clock: Any = time.monotonic) -> None:
        self.max_seconds = max_seconds
        self.clock = clock
        self.started: float | None = None
        self.stopped_at_step: int | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.started = self.clock()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self.max_seconds or self.started is None:
            return
        if _any_rank(self.clock() - self.started >= self.max_seconds):
            control.should_training_stop = True
            self.stopped_at_step = state.global_step


def _any_rank(flag: bool) -> bool:
    """``flag`` on any rank of the process group (this rank's own flag without one)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
