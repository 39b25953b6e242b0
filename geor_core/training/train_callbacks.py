"""Hugging Face TrainerCallbacks for a training stage's metrics: to its MLflow run, and to the console.

Only the process with global rank 0 logs, and only when the Trainer logs (every
``logging_steps``), so MLflow costs one asynchronous call per logging interval. Adds throughput
(``samples_per_s`` over the interval, from the global batch) beside the Trainer's own loss,
learning rate and gradient norm. On the console rank 0 shows a progress bar over the steps (with
its ETA) and one compact line per log (geor_core/console.py); the Trainer's own printer of raw
dicts is removed (:func:`console_only`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from geor_core.console import metric_line


class MlflowMetricsCallback(TrainerCallback):
    """Log the Trainer's numeric logs to MLflow run ``run_id`` from rank 0 (a no-op without a run)."""

    def __init__(self, run_id: str | None, global_batch_size: int, prefix: str = "") -> None:
        self.run_id = run_id
        self.global_batch_size = global_batch_size
        self.prefix = prefix
        self._last: tuple[int, float] | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._last = (state.global_step, time.perf_counter())

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if not self.run_id or not state.is_world_process_zero or not logs:
            return
        metrics = {f"{self.prefix}{k}": float(v) for k, v in logs.items() if isinstance(v, int | float)}
        now = time.perf_counter()
        if self._last is not None and state.global_step > self._last[0]:
            steps, seconds = state.global_step - self._last[0], now - self._last[1]
            metrics[f"{self.prefix}samples_per_s"] = steps * self.global_batch_size / max(seconds, 1e-9)
            self._last = (state.global_step, now)
        import mlflow

        mlflow.log_metrics(metrics, step=state.global_step, run_id=self.run_id, synchronous=False)


class ConsoleCallback(TrainerCallback):
    """Rank 0's console: a progress bar over the optimizer steps and one compact line per log.

    ``progress_bar(total=..., desc=..., unit=...)`` makes the bar (tqdm's signature; under Ray
    Train the worker passes Ray's distributed tqdm, drawn by the driver); None: lines only."""

    def __init__(self, stage: str, progress_bar: Callable[..., Any] | None = None) -> None:
        self.stage = stage
        self.progress_bar = progress_bar
        self._bar: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero and self.progress_bar is not None:
            self._bar = self.progress_bar(total=state.max_steps, desc=f"{self.stage} steps", unit="step")
            if state.global_step:  # resumed from a checkpoint
                self._bar.update(state.global_step)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._bar is not None:
            self._bar.update(state.global_step - self._bar.n)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and logs:
            print(metric_line(self.stage, state.global_step, state.max_steps, logs), flush=True)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def console_only(trainer: Any) -> Any:
    """Remove the Trainer's own console printers (raw log dicts, its tqdm bar): the
    :class:`ConsoleCallback` among ``trainer``'s callbacks speaks instead."""
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer
