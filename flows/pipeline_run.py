"""The end-to-end pipeline: prepare -> SFT -> mine hard samples -> GRPO -> evaluate -> register.

Choices:
- Outputs live under one root (``storage.root``): ``prepared/ sft/ hard/ grpo/ eval/ gate/`` and
  ``pipeline/<stage>.json`` records (geor_core/registry/stage_state.py). The root is claimed for the
  pipeline and each stage's folder for its stage (geor_core/ownership.py): a folder geor did not
  write is refused, and a stage deletes only its own entries in its own folder. A stage is
  skipped when its record is complete, its key (its settings + its inputs' keys) is unchanged
  and its output is complete; a stage that crashed with the same key resumes (training from its
  last checkpoint); a changed key redoes the stage from scratch, and every later stage follows
  because their keys change.
- ``from_stage`` forces that stage and the later ones; ``only`` runs just the named stages, their
  inputs taken from earlier complete records (an error before anything starts when missing).
- Everything checkable is checked before the first stage: the manifest, the base model, Ray's
  resources, the tracking server (opening the parent run).
- One MLflow parent run per invocation; each stage's run is its child (a skipped stage gets a
  short child run tagged ``geor.stage_status=skipped``). One local Ray session serves all stages.
- GRPO trains on the mined hard rows; when mining keeps none (the SFT model is already within the
  radius everywhere) it falls back to the full prepared rows and says so.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flows.promotion_gate import GateOutcome, gate_and_register
from geor_core import uris
from geor_core.config import GeorConfig
from geor_core.data.manifest import list_manifest_files, manifest_fingerprint
from geor_core.errors import UserFacingError
from geor_core.ownership import check_output, claim_output
from geor_core.registry.lineage import CODE_VERSION_ENV, code_version, data_fingerprint
from geor_core.registry.stage_state import (
    COMPLETE,
    RECORDS_DIR,
    StageRecord,
    mark_complete,
    mark_running,
    read_record,
    stage_key,
)
from geor_core.registry.tracking import parent_run, stage_run, tracking_uri

STAGES = ("prepare", "sft", "mine-hard", "grpo", "evaluate", "register")
UPSTREAM = {
    "prepare": (),
    "sft": ("prepare",),
    "mine-hard": ("prepare", "sft"),
    "grpo": ("mine-hard", "sft"),
    "evaluate": ("prepare", "sft", "grpo"),
    "register": ("prepare", "mine-hard", "sft", "grpo", "evaluate"),
}
OUTPUT_DIRS = {"prepare": "prepared", "sft": "sft", "mine-hard": "hard", "grpo": "grpo", "evaluate": "eval"}
_NOT_SETTINGS = ("output", "overwrite")


@dataclass
class StageOutcome:
    """How one stage went in this invocation."""

    stage: str
    status: str  # ran | resumed | skipped | not-selected
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


def _section(cfg: GeorConfig, name: str) -> dict[str, Any]:
    values = dataclasses.asdict(getattr(cfg, name))
    return {k: v for k, v in values.items() if k not in _NOT_SETTINGS}


def _log(message: str) -> None:
    print(f"[geor pipeline {time.strftime('%H:%M:%S')}] {message}", flush=True)


class PipelineRun:
    """One invocation: works out what to run, runs it, and remembers it."""

    def __init__(self, cfg: GeorConfig, root: str, from_stage: str | None, only: list[str] | None) -> None:
        for name in [from_stage, *(only or [])]:
            if name is not None and name not in STAGES:
                raise UserFacingError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
        if from_stage and only:
            raise UserFacingError("--from and --only do not combine: pick one")
        self.cfg, self.root = cfg, root
        self.selected = [s for s in STAGES if (only is None or s in only)]
        self.forced = set(STAGES[STAGES.index(from_stage) :]) if from_stage else set()
        self.outcomes: dict[str, StageOutcome] = {}

    # ---- what each stage reads, and where its output goes ----
    def settings(self, stage: str) -> dict[str, Any]:
        cfg = self.cfg
        if stage == "prepare":
            return {
                "prepare": _section(cfg, "prepare"),
                "manifest": manifest_fingerprint(self._manifest_files()),
            }
        if stage == "sft":
            return {"model": _section(cfg, "model"), "sft": _section(cfg, "sft")}
        if stage == "mine-hard":
            return {"eval": _section(cfg, "eval"), "radius_km": cfg.grpo.hard_radius_km}
        if stage == "grpo":
            return {"grpo": _section(cfg, "grpo"), "reward": _section(cfg, "reward")}
        if stage == "evaluate":
            return {"eval": _section(cfg, "eval"), "reward": _section(cfg, "reward")}
        return {"registry": _section(cfg, "registry")}

    def output_dir(self, stage: str) -> str:
        return uris.join(self.root, OUTPUT_DIRS[stage])

    def _manifest_files(self) -> list[Any]:
        if not self.cfg.prepare.manifest:
            raise UserFacingError("no manifest: pass --manifest URI (or set prepare.manifest)")
        return list_manifest_files(self.cfg.prepare.manifest)

    def out(self, stage: str, name: str) -> Any:
        return self.outcomes[stage].outputs[name]

    # ---- checks before anything runs ----
    def check_upstream(self) -> None:
        """Stages left out by --only must have left complete outputs for the selected ones."""
        for stage in self.selected:
            for needed in UPSTREAM[stage]:
                if needed in self.selected:
                    continue
                record = read_record(self.root, needed)
                if record is None or record.status != COMPLETE:
                    raise UserFacingError(
                        f"stage {stage!r} needs {needed!r}'s output, but {self.root} has no complete "
                        f"{needed} (run `geor pipeline` without --only, or add {needed} to --only)"
                    )

    def preflight(self) -> None:
        """The inputs and the cluster: a clear error now rather than in stage k."""
        from tasks.training_run import check_model_source, check_resources

        if "prepare" in self.selected:
            self._manifest_files()
        if {"sft", "evaluate"} & set(self.selected):
            check_model_source(self.cfg.model.name_or_path)
        if "sft" in self.selected:
            check_resources(self.cfg.sft)
        if "grpo" in self.selected:
            check_resources(self.cfg.grpo)

    # ---- the loop ----
    def run(self) -> PipelineResult:
        from tasks.ray_session import connect_ray

        legacy = (f"{RECORDS_DIR}/*.json",)
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
                for index, stage in enumerate(STAGES, 1):
                    self._one_stage(index, stage)
                register = self.outcomes.get("register")
                result.gate = register.outputs.get("gate") if register and register.status == "ran" else None
                self._log_summary(parent_id)
        finally:
            if started_ray:
                import ray

                ray.shutdown()
        return result

    def _one_stage(self, index: int, stage: str) -> None:
        upstream = {name: self.outcomes[name].key for name in UPSTREAM[stage] if name in self.outcomes}
        record = read_record(self.root, stage)
        if stage not in self.selected:
            if record is not None and record.status == COMPLETE:
                self.outcomes[stage] = StageOutcome(stage, "not-selected", record.key, record.outputs)
            return
        key = stage_key(stage, self.settings(stage), upstream)
        if stage not in self.forced and self._is_done(record, key):
            _log(f"stage {index}/{len(STAGES)} {stage}: skipped (complete, inputs and settings unchanged)")
            self.outcomes[stage] = StageOutcome(stage, "skipped", key, record.outputs)
            with stage_run(self.cfg, stage, tags={"geor.stage_status": "skipped", "geor.stage_key": key}):
                pass
            return
        resume = stage not in self.forced and record is not None and record.key == key
        _log(f"stage {index}/{len(STAGES)} {stage}: {'resuming' if resume else 'running'} (key {key})")
        started = time.monotonic()
        if stage in OUTPUT_DIRS:  # the stage's folder; geor's when a record says the stage ran here
            claim_output(self.output_dir(stage), stage, adopt=record is not None)
        record = mark_running(self.root, stage, key)
        outputs = STAGE_RUNNERS[stage](self, overwrite=not resume)
        mark_complete(self.root, record, _serialisable(outputs))
        seconds = time.monotonic() - started
        self.outcomes[stage] = StageOutcome(stage, "resumed" if resume else "ran", key, outputs, seconds)
        _log(f"stage {index}/{len(STAGES)} {stage}: done in {seconds:.1f} s")

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

    # ---- the stages ----
    def prepare(self, *, overwrite: bool) -> dict[str, Any]:
        from tasks.prepare import run_prepare

        output = self.output_dir("prepare")
        cfg = dataclasses.replace(
            self.cfg, prepare=dataclasses.replace(self.cfg.prepare, output=output, overwrite=overwrite)
        )
        outcome = run_prepare(cfg)
        return {
            "output": output,
            "splits": outcome.stats.get("splits", {}),
            "rows_in": outcome.stats.get("rows_in"),
        }

    def sft(self, *, overwrite: bool) -> dict[str, Any]:
        from tasks.sft import run_sft

        result = run_sft(
            self.cfg,
            self.out("prepare", "output"),
            self.cfg.model.name_or_path,
            self.output_dir("sft"),
            overwrite=overwrite,
        )
        return {"output": result.export_uri, "global_step": result.global_step, "metrics": result.metrics}

    def mine_hard(self, *, overwrite: bool) -> dict[str, Any]:
        from tasks.mine_hard import run_mine_hard

        output = self.output_dir("mine-hard")
        result = run_mine_hard(
            self.cfg,
            self.out("prepare", "output"),
            self.out("sft", "output"),
            output,
            self.cfg.grpo.hard_radius_km,
            overwrite=overwrite,
        )
        return {"output": output, "kept": int(result.stats["mining"]["kept"])}

    def grpo(self, *, overwrite: bool) -> dict[str, Any]:
        from tasks.grpo import run_grpo

        data = self.out("mine-hard", "output")
        if self.out("mine-hard", "kept") == 0:
            _log(
                "mining kept no hard rows (SFT is within the radius everywhere): GRPO uses all prepared rows"
            )
            data = self.out("prepare", "output")
        result = run_grpo(
            self.cfg, data, self.out("sft", "output"), self.output_dir("grpo"), overwrite=overwrite
        )
        return {
            "output": result.export_uri,
            "data": data,
            "global_step": result.global_step,
            "metrics": result.metrics,
        }

    def evaluate(self, *, overwrite: bool) -> dict[str, Any]:
        from tasks.evaluate import run_evaluate

        output = self.output_dir("evaluate")
        models = [
            f"base={self.cfg.model.name_or_path}",
            f"sft={self.out('sft', 'output')}",
            f"grpo={self.out('grpo', 'output')}",
        ]
        result = run_evaluate(self.cfg, self.out("prepare", "output"), models, output, overwrite=overwrite)
        final = next(e for e in result.models if e.label == "grpo")
        return {"output": output, "comparison": result.comparison, "final_metrics": final.report.metrics}

    def register(self, *, overwrite: bool) -> dict[str, Any]:
        del overwrite  # registering again always makes a new version
        if not tracking_uri(self.cfg):
            _log(
                "register: no MLflow tracking configured (tracking.uri / MLFLOW_TRACKING_URI): not registered"
            )
            return {"registered": False}
        prepared = self.out("prepare", "output")
        lineage = {
            "manifest": self.cfg.prepare.manifest,
            "manifest_fingerprint": manifest_fingerprint(self._manifest_files()),
            "prepared": prepared,
            "prepared_fingerprint": data_fingerprint(prepared),
            "training_data": json.dumps([prepared]),
            "hard": self.out("mine-hard", "output"),
            "base_model": self.cfg.model.name_or_path,
            "sft_model": self.out("sft", "output"),
            "grpo_model": self.out("grpo", "output"),
            "config_hash": self.cfg.fingerprint(),
            "code_version": code_version(),
            "pipeline_run_id": os.environ.get("GEOR_PARENT_RUN_ID", ""),
        }
        same_rows = list(self.cfg.eval.splits) == ["test"]
        gate = gate_and_register(
            self.cfg,
            self.out("grpo", "output"),
            lineage=lineage,
            work_uri=uris.join(self.root, "gate"),
            default_benchmark=prepared,
            candidate_metrics=self.out("evaluate", "final_metrics") if same_rows else None,
            candidate_metrics_benchmark=prepared if same_rows else None,
        )
        return {
            "registered": True,
            "model_name": gate.model_name,
            "version": gate.version,
            "promoted": gate.promoted,
            "reason": gate.decision.reason,
            "benchmark": gate.benchmark,
            "gate": gate,
        }


def _serialisable(outputs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in outputs.items() if not isinstance(v, GateOutcome)}


STAGE_RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {
    "prepare": PipelineRun.prepare,
    "sft": PipelineRun.sft,
    "mine-hard": PipelineRun.mine_hard,
    "grpo": PipelineRun.grpo,
    "evaluate": PipelineRun.evaluate,
    "register": PipelineRun.register,
}


def run_pipeline(
    cfg: GeorConfig, root: str, *, from_stage: str | None = None, only: list[str] | None = None
) -> PipelineResult:
    """Run the pipeline under ``root`` (see the module docstring for skipping and resuming)."""
    return PipelineRun(cfg, root, from_stage, only).run()
