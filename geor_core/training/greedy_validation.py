"""Greedy validation inside a training run: after each of the Trainer's evaluations, greedy
completions on the fixed val rows, scored with the field's metrics.

TRL's own GRPO evaluation samples ``num_generations`` completions per row at the training
temperature; what a shipped model answers is its greedy completion, so sweeps and checkpoints are
judged on this instead (``eval_greedy/geoscore`` etc.). Every rank generates for its share of the
rows (all ranks call ``generate`` together, as ZeRO-3 needs; a rank without rows takes one row at
weight 0) and the sums are all-reduced. The values are added to the evaluation's entry in
``state.log_history`` (what Ray's checkpoint report reads) and logged to MLflow from rank 0.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from transformers import TrainerCallback

from geor_core.config import GeorConfig

PREFIX = "eval_greedy/"
SUMMED = ("geoscore", "format_rate", "acc_25km", "acc_200km", "acc_750km", "country_match_rate")


def _rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class GreedyValidationCallback(TrainerCallback):
    """Greedy metrics of the val ``rows`` after every evaluation (see the module docstring)."""

    def __init__(self, rows: pa.Table, cfg: GeorConfig, run_id: str | None = None) -> None:
        self.rows, self.cfg, self.run_id = rows, cfg, run_id

    def _share(self) -> tuple[pa.Table, float]:
        rank, world = _rank_and_world()
        indices = list(range(rank, self.rows.num_rows, world))
        if indices:
            return self.rows.take(indices), 1.0
        return self.rows.slice(0, 1), 0.0  # still generates, so collective ZeRO-3 steps line up

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kwargs: Any
    ) -> None:
        model, processor = kwargs.get("model"), kwargs.get("processing_class")
        if model is None or processor is None or self.rows.num_rows == 0:
            return
        import torch

        from geor_core.training.sampled_reward import greedy_metrics

        rows, weight = self._share()
        was_training = model.training
        model.eval()
        try:
            found = greedy_metrics(model, processor, rows, self.cfg)
        finally:
            model.train(was_training)
        n = weight * (found.get("n") or 0)
        sums = [n] + [n * float(found.get(name) or 0.0) for name in SUMMED]
        totals = torch.tensor(sums, dtype=torch.float64)
        if _rank_and_world()[1] > 1:
            import torch.distributed as dist

            dist.all_reduce(totals)
        count = float(totals[0])
        greedy = (
            {f"{PREFIX}{name}": float(totals[i + 1]) / count for i, name in enumerate(SUMMED)}
            if count
            else {}
        )
        greedy[f"{PREFIX}n"] = count
        if metrics is not None:
            metrics.update(greedy)
        if state.log_history:
            state.log_history[-1].update(greedy)
        if self.run_id and state.is_world_process_zero:
            import mlflow

            mlflow.log_metrics(greedy, step=state.global_step, run_id=self.run_id, synchronous=False)
