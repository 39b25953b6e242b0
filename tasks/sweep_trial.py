"""One trial of `geor sweep`: a Ray Tune function trainable that runs a short GRPO training (the
same TorchTrainer as `geor grpo`: tasks/grpo.run_grpo) and reports its validation
objective to Tune through Ray Train V2's callback.

- Train V2 has no ``Tuner(trainer)``: the trial is a plain function that launches the trainer, and
  :class:`ObjectiveReporter` (a ``TuneReportCallback`` in the trainer's RunConfig, run by the Train
  controller) forwards each checkpoint report to Tune. A report carries the GRPO evaluation that
  preceded it (``grpo.save_steps`` is a multiple of ``grpo.eval_steps``), renamed to the sweep's
  objectives (``val_geoscore``, ...; geor_core.training.sweep_space.OBJECTIVES); the worker's last report
  (no evaluation in it) is not forwarded. ASHA can stop the trial at any report.
- Each trial writes ``<sweep output>/trials/<trial id>/``: the GRPO checkpoints (``ray/``), the
  export (``model/``) and ``trial.json`` (params, status running / finished / failed, the error,
  attempts, start and end times, its MLflow run), so the sweep can tell a finished trial from one
  the scheduler stopped, and a re-run can tell what was repeated.
- MLflow: the trial opens a child run of the sweep's run (``trial-<id>``, the trial's full config
  as params, the objectives by step as its curve); the GRPO stage run nests under it.
- A trial whose GRPO export is already complete (finished just before an interruption) reports
  the objectives from the export's marker instead of training again.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

from ray.tune.integration.ray_train import TuneReportCallback

from geor_core import uris
from geor_core.ownership import claim_output
from geor_core.registry.tracking import parent_run, tracking_uri
from geor_core.training.sweep_space import trial_config, validation_metrics

TRIAL_RECORD = "trial.json"
TRIALS_DIR = "trials"


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of one sweep shares (handed to the trainable with ``tune.with_parameters``)."""

    base: dict[str, Any]  # the sweep's config (GeorConfig.to_dict()) that a trial's params override
    data_uri: str
    model_uri: str
    output_uri: str  # the sweep's output; a trial writes under <output>/trials/<trial id>
    objective: str  # a name in geor_core.training.sweep_space.OBJECTIVES
    env: dict[str, str]  # tracking variables for the trial process (URI, the sweep's run id)


def trial_output(output_uri: str, trial_id: str) -> str:
    """Where trial ``trial_id`` of the sweep at ``output_uri`` writes."""
    return uris.join(output_uri, TRIALS_DIR, trial_id)


def read_trial_record(output_uri: str, trial_id: str) -> dict[str, Any] | None:
    """The trial's ``trial.json``, or None when the trial never started."""
    uri = uris.join(trial_output(output_uri, trial_id), TRIAL_RECORD)
    return json.loads(uris.read_text(uri)) if uris.exists(uri) else None


def _write_record(record: dict[str, Any]) -> None:
    uris.write_text(
        uris.join(record["output"], TRIAL_RECORD), json.dumps(record, indent=2, default=str) + "\n"
    )


class ObjectiveReporter(TuneReportCallback):
    """Forwards each GRPO checkpoint report to Tune as the sweep's objectives (plus ``step``), and
    logs them to the trial's MLflow run as its curve. Runs inside the Ray Train controller."""

    def __init__(self, objective: str, run_id: str | None, tracking: str) -> None:
        super().__init__()
        self.objective = objective
        self.run_id = run_id
        self.tracking = tracking

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        values: dict[str, Any] = validation_metrics(metrics[0])
        if self.objective not in values:
            return  # the worker's final report: no evaluation in it
        step = int(metrics[0].get("step", 0))
        if self.run_id:  # first: Tune may stop the trial on this very report
            self._log_curve(values, step)
        super().after_report(run_context, [{**values, "step": step}], checkpoint)

    def _log_curve(self, values: dict[str, float], step: int) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        try:
            MlflowClient(self.tracking).log_batch(
                self.run_id, metrics=[Metric(key, value, now, step) for key, value in values.items()]
            )
        except Exception as exc:  # the curve is a view; a tracking hiccup must not stop training
            print(f"geor sweep: could not log the validation curve of run {self.run_id}: {exc}")


def grpo_trial(params: dict[str, Any], setup: TrialSetup) -> None:
    """The Tune trainable: ``params`` (dotted keys from the space) on top of the sweep's config."""
    from ray import tune

    from tasks.grpo import run_grpo

    os.environ.update(setup.env)
    trial_id = tune.get_context().get_trial_id()
    output = trial_output(setup.output_uri, trial_id)
    record = read_trial_record(setup.output_uri, trial_id)
    # the trial's folder is GRPO's output: claimed for it before trial.json goes in (an older
    # geor's trial folder is known by its trial.json)
    claim_output(output, "grpo", adopt=record is not None)
    record = record or {"attempts": 0}
    record.update(
        trial_id=trial_id,
        params=params,
        output=output,
        status="running",
        error=None,
        attempts=record["attempts"] + 1,
        started_at=time.time(),
        ended_at=None,
    )
    _write_record(record)
    try:
        cfg = trial_config(setup.base, params)
        cfg.grpo.output = output
        tags = {"geor.sweep.trial_id": trial_id, "geor.sweep.params": json.dumps(params, default=str)}
        with parent_run(cfg, f"trial-{trial_id}", tags=tags) as run_id:
            record["run_id"] = run_id
            _write_record(record)
            reporter = ObjectiveReporter(setup.objective, run_id, tracking_uri(cfg))
            # a trial's export is exploration, deleted unless best: not logged as an MLflow model
            result = run_grpo(
                cfg, setup.data_uri, setup.model_uri, output, callbacks=[reporter], log_model=False
            )
            if result.skipped:
                tune.report({**validation_metrics(result.metrics), "step": result.global_step})
    except Exception as exc:
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}", ended_at=time.time())
        _write_record(record)
        raise
    record.update(status="finished", ended_at=time.time(), global_step=result.global_step)
    _write_record(record)
