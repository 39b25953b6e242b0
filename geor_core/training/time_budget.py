"""A training stage's wall-clock budget (``<stage>.max_seconds``): stop after the step that spends it,
and optionally lay the learning-rate schedule over that budget instead of over the steps.

The clock starts when training starts (or restarts after a worker failure: the budget is per
attempt) and is read after every optimizer step. With several workers the ranks agree through one
all-reduce per step (the slowest rank's elapsed seconds), so every rank stops after the same step;
a rank that stopped alone would leave the others waiting in their next collective. The Trainer
then ends as at its last step: the export and the marker follow, and the marker records
``stopped_by_time_budget``.

``<stage>.lr_schedule_over: max_seconds``: the schedule (``lr_scheduler_type`` with its
``warmup_ratio``) is a function of the budget's share spent, elapsed / max_seconds, so a run
stopped by its clock always ends at the end of its schedule, however fast its steps were. (A
schedule over ``max_steps`` stops wherever the clock cuts it: at 50% of a cosine, still at half
the peak rate, when the steps ran slower than predicted.) The Trainer's own scheduler stays in
place; only its factor function is swapped for the clock's, so DeepSpeed, checkpoints and logging
see the usual scheduler. Every rank applies the factor of the same agreed elapsed time, so their
learning rates stay identical.
"""

from __future__ import annotations

import math
import time
from typing import Any

from transformers import TrainerCallback


def schedule_factor(kind: str, warmup_share: float, progress: float) -> float:
    """The learning rate's share of its peak at ``progress`` (0..1) of a schedule, with the
    formulas of Hugging Face's schedulers of the same names (``constant`` ignores the warm-up)."""
    progress = min(max(progress, 0.0), 1.0)
    if kind == "constant":
        return 1.0
    if progress < warmup_share:
        return progress / warmup_share
    if kind == "constant_with_warmup":
        return 1.0
    decayed = (progress - warmup_share) / (1.0 - warmup_share) if warmup_share < 1.0 else 1.0
    if kind == "linear":
        return max(0.0, 1.0 - decayed)
    if kind == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * decayed)))
    raise ValueError(f"no clock schedule for lr_scheduler_type {kind!r}")


class TimeBudgetCallback(TrainerCallback):
    """Ends training after the first optimizer step that finishes ``max_seconds`` or more after
    training began (0: no budget). With ``lr_schedule`` = (lr_scheduler_type, warmup_ratio), the
    Trainer's learning rate follows that schedule over the budget's seconds."""

    def __init__(
        self, max_seconds: float, clock: Any = time.monotonic, lr_schedule: tuple[str, float] | None = None
    ) -> None:
        if lr_schedule is not None and not max_seconds:
            raise ValueError("a learning-rate schedule over the clock needs max_seconds > 0")
        self.max_seconds = max_seconds
        self.clock = clock
        self.lr_schedule = lr_schedule
        self.started: float | None = None
        self.stopped_at_step: int | None = None
        self.progress = 0.0  # the budget's share spent, as every rank agreed at the last step
        self._lambda_lr: Any = None  # the Trainer's scheduler, when the schedule follows the clock

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.started = self.clock()
        self.progress = 0.0
        if self.lr_schedule is not None:
            self._follow_the_clock(kwargs.get("lr_scheduler"))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self.max_seconds or self.started is None:
            return
        elapsed = _slowest_rank(self.clock() - self.started)
        self.progress = elapsed / self.max_seconds
        if self._lambda_lr is not None:
            self._set_rates()  # the next step's rate, from the share spent before it
        if elapsed >= self.max_seconds:
            control.should_training_stop = True
            self.stopped_at_step = state.global_step

    def factor(self, _step: int = 0) -> float:
        """The learning rate's share of its peak now (``_step``: LambdaLR's argument, unused)."""
        kind, warmup_share = self.lr_schedule or ("constant", 0.0)
        return schedule_factor(kind, warmup_share, self.progress)

    def _follow_the_clock(self, scheduler: Any) -> None:
        """Swap the Trainer's LambdaLR factor for the clock's and set the first step's rate."""
        lambda_lr = getattr(scheduler, "scheduler", scheduler)  # accelerate wraps the scheduler
        if not hasattr(lambda_lr, "lr_lambdas"):
            raise RuntimeError(
                f"lr_schedule_over=max_seconds needs the Trainer's LambdaLR scheduler, got {type(scheduler)}"
            )
        lambda_lr.lr_lambdas = [self.factor] * len(lambda_lr.lr_lambdas)
        self._lambda_lr = lambda_lr
        self._set_rates()

    def _set_rates(self) -> None:
        """Each parameter group's rate now, and the scheduler's record of it (``get_last_lr``, which
        the Trainer logs). The scheduler's own step, after the next optimizer step, computes the
        same from the same share."""
        groups = self._lambda_lr.optimizer.param_groups
        for group, base in zip(groups, self._lambda_lr.base_lrs, strict=True):
            group["lr"] = base * self.factor()
        self._lambda_lr._last_lr = [group["lr"] for group in groups]


def _slowest_rank(elapsed: float) -> float:
    """The largest ``elapsed`` over the ranks of the process group (this rank's own without one)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return elapsed
    device = f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([elapsed], dtype=torch.float64, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return float(value.item())
