"""A Hugging Face TrainerCallback that sends training metrics to the stage's MLflow run.

Only the process with global rank 0 logs, and only when the Trainer logs (every
``logging_steps``), so MLflow costs one asynchronous call per logging interval. Adds throughput
(``samples_per_s`` over the interval, from the global batch) beside the Trainer's own loss,
learning rate and gradient norm.
"""

from __future__ import annotations

import time
from typing import Any

from transformers import TrainerCallback


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
