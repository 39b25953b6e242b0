"""The end-to-end pipeline's loop: works out which stages to run, runs them, and remembers them.

The stages themselves (prepare -> SFT -> mine hard samples -> GRPO -> evaluate -> register) are
declared once, as records in flows/pipeline_stages.py; everything here derives from that list.

Choices:
- Outputs live under one root (``storage.root``): each stage's folder (``prepared/ sft/ hard/
  grpo/ eval/``, plus ``gate/``) and ``pipeline/<stage>.json`` records
  (geor_core/registry/stage_state.py). The root is claimed for the pipeline and each stage's folder
  for its stage (geor_core/ownership.py): a folder geor did not write is refused, and a stage
  deletes only its own entries in its own folder. A stage is skipped when its record is complete,
  its key (the settings it declares + its inputs' keys) is unchanged and its output is complete; a
  stage that crashed with the same key resumes (training from its last checkpoint); a changed key
  redoes the stage from scratch, and every later stage follows because their keys change.
- A stage the config does not need is not run and enters no later key (mining, when
  ``grpo.pipeline_rows=all`` trains GRPO on every prepared row).
- ``from_stage`` forces that stage and the later ones; ``only`` runs just the named stages, their
  inputs taken from earlier complete records (an error before anything starts when missing).
- Everything checkable is checked before the first stage: the manifest, the base model, Ray's
  resources (the selected stages' ``preflight``), the tracking server (opening the parent run).
- One MLflow parent run per invocation; each stage's run is its child (a skipped stage gets a
  short child run tagged ``geor.stage_status=skipped``). One local Ray session serves all stages.
- ``PipelineResult.gate`` is what the register stage's gate decided in this invocation: every
  registered version (SFT, SFT+GRPO), the best candidate and whether it became champion.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from flows.pipeline_stages import STAGES, log
from flows.promotion_gate import GateOutcome
from geor_core import uris
from geor_core.config import GeorConfig
from geor_core.errors import UserFacingError
from geor_core.ownership import check_output, claim_output
from geor_core.registry.lineage import CODE_VERSION_ENV, code_version
from geor_core.registry.stage_state import (
    COMPLETE,
    RECORDS_DIR,
    Stage,
    StageRecord,
    check_stage_order,
    mark_complete,
    mark_running,
    read_record,
    stage_key,
)
from geor_core.registry.tracking import parent_run, stage_run, tracking_uri

NOT_NEEDED = "not-needed"  # the config does not use the stage's output (Stage.needed): not run
LEFT_BEHIND = (f"{RECORDS_DIR}/*.json",)  # what an older geor's pipeline always left in its root


@dataclass
class StageOutcome:
    """How one stage went in this invocation."""

    stage: str
    status: str  # ran | resumed | skipped | not-selected | not-needed
    key: str
    outputs: dict[str, Any]
    seconds: float = 0.0


@dataclass
class PipelineResult:
    root: str
    stages: dict[str, StageOutcome] = field(default_factory=dict)
    parent_run_id: str | None = None
    gate: GateOutcome | None = None

    @property
    def comparison(self) -> list[dict[str, Any]]:
        evaluate = self.stages.get("evaluate")
        return evaluate.outputs.get("comparison", []) if evaluate else []


class PipelineRun:
    """One invocation: works out what to run, runs it, and remembers it."""

    def __init__(self, cfg: GeorConfig, root: str, from_stage: str | None, only: list[str] | None) -> None:
        check_stage_order(STAGES)
        self.stages: dict[str, Stage] = {stage.name: stage for stage in STAGES}
        names = list(self.stages)
        for name in [from_stage, *(only or [])]:
            if name is not None and name not in self.stages:
                raise UserFacingError(f"unknown stage {name!r}; stages: {', '.join(names)}")
        if from_stage and only:
            raise UserFacingError("--from and --only do not combine: pick one")
        self.cfg, self.root = cfg, root
        self.selected = [s for s in names if (only is None or s in only)]
        self.forced = set(names[names.index(from_stage) :]) if from_stage else set()
        self.outcomes: dict[str, StageOutcome] = {}

    # ---- where a stage's output goes, and what its inputs produced ----
    def output_dir(self, stage: str) -> str:
        folder = self.stages[stage].output_dir
        if folder is None:
            raise ValueError(f"stage {stage!r} declares no output folder")
        return uris.join(self.root, folder)

    def out(self, stage: str, name: str) -> Any:
        return self.outcomes[stage].outputs[name]

    # ---- checks before anything runs ----
    def check_upstream(self) -> None:
        """Stages left out by --only must have left complete outputs for the selected ones."""
        for stage in self.selected:
            for needed in self.stages[stage].upstream:
                if needed in self.selected or not self.stages[needed].is_needed(self.cfg):
                    continue
                record = read_record(self.root, needed)
                if record is None or record.status != COMPLETE:
                    raise UserFacingError(
                        f"stage {stage!r} needs {needed!r}'s output, but {self.root} has no complete "
                        f"{needed} (run `geor pipeline` without --only, or add {needed} to --only)"
                    )

    def preflight(self) -> None:
        """The selected stages' checks (each once, in stage order): a clear error now rather than in
        stage k."""
        checks = [check for stage in self.selected for check in self.stages[stage].preflight]
        for check in dict.fromkeys(checks):
            check(self.cfg)

    # ---- the loop ----
    def run(self) -> PipelineResult:
        from tasks.ray_session import connect_ray

        legacy = LEFT_BEHIND
        check_output(self.root, "pipeline", legacy=legacy)  # before anything; nothing written
        self.check_upstream()
        os.environ.setdefault(CODE_VERSION_ENV, code_version())
        started_ray = connect_ray()
        try:
            self.preflight()
            claim_output(self.root, "pipeline", legacy=legacy)
            tags = {"geor.pipeline_root": self.root, "geor.selected": ",".join(self.selected)}
            with parent_run(self.cfg, "pipeline", tags=tags) as parent_id:
                result = PipelineResult(self.root, self.outcomes, parent_id)
                for index, stage in enumerate(self.stages.values(), 1):
                    self._one_stage(index, stage)
                register = self.outcomes.get("register")
                result.gate = register.outputs.get("gate") if register and register.status == "ran" else None
                self._log_summary(parent_id)
        finally:
            if started_ray:
                import ray

                ray.shutdown()
        return result

    def key(self, stage: Stage) -> str:
        """The stage's key now: its name, its declared settings and its inputs' keys."""
        upstream = {
            name: self.outcomes[name].key
            for name in stage.upstream
            if name in self.outcomes and self.outcomes[name].status != NOT_NEEDED
        }
        return stage_key(stage.name, stage.settings(self.cfg), upstream)

    def _one_stage(self, index: int, stage: Stage) -> None:
        name, progress = stage.name, f"stage {index}/{len(self.stages)} {stage.name}"
        if not stage.is_needed(self.cfg):
            if name in self.selected:
                log(f"{progress}: not run (nothing uses its output with these settings)")
            self.outcomes[name] = StageOutcome(name, NOT_NEEDED, "", {})
            return
        record = read_record(self.root, name)
        if name not in self.selected:
            if record is not None and record.status == COMPLETE:
                self.outcomes[name] = StageOutcome(name, "not-selected", record.key, record.outputs)
            return
        key = self.key(stage)
        if name not in self.forced and self._is_done(record, key):
            log(f"{progress}: skipped (complete, inputs and settings unchanged)")
            self.outcomes[name] = StageOutcome(name, "skipped", key, record.outputs)
            with stage_run(self.cfg, name, tags={"geor.stage_status": "skipped", "geor.stage_key": key}):
                pass
            return
        resume = name not in self.forced and record is not None and record.key == key
        log(f"{progress}: {'resuming' if resume else 'running'} (key {key})")
        started = time.monotonic()
        if stage.output_dir is not None:  # the stage's folder; geor's when a record says it ran here
            claim_output(self.output_dir(name), name, adopt=record is not None)
        record = mark_running(self.root, name, key)
        outputs = stage.runner(self, overwrite=not resume)
        mark_complete(self.root, record, _serialisable(outputs))
        seconds = time.monotonic() - started
        self.outcomes[name] = StageOutcome(name, "resumed" if resume else "ran", key, outputs, seconds)
        log(f"{progress}: done in {seconds:.1f} s")

    def _is_done(self, record: StageRecord | None, key: str) -> bool:
        if record is None or record.status != COMPLETE or record.key != key:
            return False
        produced = record.outputs.get("output")
        return produced is None or uris.is_complete(produced)

    def _log_summary(self, parent_id: str | None) -> None:
        if parent_id is None:
            return
        from mlflow import MlflowClient
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        tags = [RunTag(f"geor.stage.{s}", o.status) for s, o in self.outcomes.items()]
        comparison = (
            self.outcomes["evaluate"].outputs.get("comparison", []) if "evaluate" in self.outcomes else []
        )
        metrics = [
            Metric(f"{row['model']}/{name}", float(value), now, 0)
            for row in comparison
            for name, value in row.items()
            if isinstance(value, int | float) and not isinstance(value, bool) and "@" not in row["model"]
        ]
        MlflowClient(tracking_uri(self.cfg)).log_batch(parent_id, metrics=metrics, tags=tags)


def _serialisable(outputs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in outputs.items() if not isinstance(v, GateOutcome)}


def run_pipeline(
    cfg: GeorConfig, root: str, *, from_stage: str | None = None, only: list[str] | None = None
) -> PipelineResult:
    """Run the pipeline under ``root`` (see the module docstring for skipping and resuming)."""
    return PipelineRun(cfg, root, from_stage, only).run()
