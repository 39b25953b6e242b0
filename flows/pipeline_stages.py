"""The pipeline's stages, each declared once as a :class:`~geor_core.registry.stage_state.Stage`
record: prepare -> SFT -> mine hard samples -> GRPO -> evaluate -> register.

A record names the stages it consumes, its folder under the pipeline root, the config its key
hashes, its body and the checks to run before any stage starts; flows/pipeline_run.py derives
skipping, resuming, ``--from``/``--only``, preflight and dispatch from ``STAGES``. A body is
``body(run, overwrite=...) -> outputs``: it reads its inputs' outputs with ``run.out(stage, name)``
and writes under ``run.output_dir(stage)``; ``overwrite`` is False when it resumes a crashed run.

GRPO trains on the mined hard rows (``grpo.pipeline_rows=hard``, the paper's) or on every prepared
training row (``all``: mining is then not needed and does not run); when mining keeps none (the
SFT model is already within the radius everywhere) it falls back to the full prepared rows and
says so. Register offers every
model the pipeline trained and evaluated (SFT, then SFT+GRPO) to the champion gate, each with its
scorecard from the evaluation; the gate registers each and promotes the best one under its rule.
The config each stage reads is declared once, in ``geor_core.config.logged_params.STAGE_READS``:
its key hashes it and its MLflow run logs it as params.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import TYPE_CHECKING, Any

from flows.promotion_gate import Candidate, gate_and_register
from geor_core import uris
from geor_core.config import GeorConfig
from geor_core.config.logged_params import STAGE_READS
from geor_core.data.manifest import list_manifest_files, manifest_fingerprint
from geor_core.errors import UserFacingError
from geor_core.registry.lineage import code_version, data_fingerprint
from geor_core.registry.stage_state import Stage
from geor_core.registry.tracking import tracking_uri

if TYPE_CHECKING:
    from flows.pipeline_run import PipelineRun


def log(message: str) -> None:
    print(f"[geor pipeline {time.strftime('%H:%M:%S')}] {message}", flush=True)


def manifest_files(cfg: GeorConfig) -> list[Any]:
    if not cfg.prepare.manifest:
        raise UserFacingError("no manifest: pass --manifest URI (or set prepare.manifest)")
    return list_manifest_files(cfg.prepare.manifest)


# ---- checks before any stage runs (each runs once, however many stages share it) ----
def check_manifest(cfg: GeorConfig) -> None:
    manifest_files(cfg)


def check_base_model(cfg: GeorConfig) -> None:
    from tasks.training_run import check_model_source

    check_model_source(cfg.model.name_or_path)


def check_sft_resources(cfg: GeorConfig) -> None:
    from tasks.training_run import check_resources

    check_resources(cfg.sft, cfg.cluster.worker_resources)


def check_grpo_resources(cfg: GeorConfig) -> None:
    from tasks.training_run import check_resources

    check_resources(cfg.grpo, cfg.cluster.worker_resources)


def manifest_key(cfg: GeorConfig) -> dict[str, Any]:
    return {"manifest": manifest_fingerprint(manifest_files(cfg))}


# ---- the stage bodies ----
def prepare(run: PipelineRun, *, overwrite: bool) -> dict[str, Any]:
    from tasks.prepare import run_prepare

    output = run.output_dir("prepare")
    cfg = dataclasses.replace(
        run.cfg, prepare=dataclasses.replace(run.cfg.prepare, output=output, overwrite=overwrite)
    )
    outcome = run_prepare(cfg)
    return {
        "output": output,
        "splits": outcome.stats.get("splits", {}),
        "rows_in": outcome.stats.get("rows_in"),
    }


def sft(run: PipelineRun, *, overwrite: bool) -> dict[str, Any]:
    from tasks.sft import run_sft

    result = run_sft(
        run.cfg,
        run.out("prepare", "output"),
        run.cfg.model.name_or_path,
        run.output_dir("sft"),
        overwrite=overwrite,
    )
    return {"output": result.export_uri, "global_step": result.global_step, "metrics": result.metrics}


def trains_on_mined_rows(cfg: GeorConfig) -> bool:
    """Whether the pipeline's GRPO trains on mined hard rows, i.e. whether mining is needed."""
    return cfg.grpo.pipeline_rows == "hard"


def mine_hard(run: PipelineRun, *, overwrite: bool) -> dict[str, Any]:
    from tasks.mine_hard import run_mine_hard

    output = run.output_dir("mine-hard")
    result = run_mine_hard(
        run.cfg,
        run.out("prepare", "output"),
        run.out("sft", "output"),
        output,
        run.cfg.grpo.hard_radius_km,
        overwrite=overwrite,
    )
    return {"output": output, "kept": int(result.stats["mining"]["kept"])}


def grpo(run: PipelineRun, *, overwrite: bool) -> dict[str, Any]:
    from tasks.grpo import run_grpo

    if not trains_on_mined_rows(run.cfg):
        log("GRPO trains on every prepared training row (grpo.pipeline_rows=all), not on mined ones")
        data = run.out("prepare", "output")
    elif run.out("mine-hard", "kept") == 0:
        log("mining kept no hard rows (SFT is within the radius everywhere): GRPO uses all prepared rows")
        data = run.out("prepare", "output")
    else:
        data = run.out("mine-hard", "output")
    result = run_grpo(run.cfg, data, run.out("sft", "output"), run.output_dir("grpo"), overwrite=overwrite)
    return {
        "output": result.export_uri,
        "data": data,
        "global_step": result.global_step,
        "metrics": result.metrics,
    }


def evaluate(run: PipelineRun, *, overwrite: bool) -> dict[str, Any]:
    from tasks.evaluate import run_evaluate

    output = run.output_dir("evaluate")
    models = [
        f"base={run.cfg.model.name_or_path}",
        f"sft={run.out('sft', 'output')}",
        f"grpo={run.out('grpo', 'output')}",
    ]
    result = run_evaluate(run.cfg, run.out("prepare", "output"), models, output, overwrite=overwrite)
    metrics = {e.label: e.report.metrics for e in result.models if e.label in CANDIDATES}
    return {"output": output, "comparison": result.comparison, "metrics": metrics}


CANDIDATES = ("sft", "grpo")  # the trained models offered to the gate, in the order it weighs them


def register(run: PipelineRun, *, overwrite: bool) -> dict[str, Any]:
    del overwrite  # registering again always makes new versions
    if not tracking_uri(run.cfg):
        log("register: no MLflow tracking configured (tracking.uri / MLFLOW_TRACKING_URI): not registered")
        return {"registered": False}
    prepared = run.out("prepare", "output")
    lineage = {
        "manifest": run.cfg.prepare.manifest,
        "manifest_fingerprint": manifest_fingerprint(manifest_files(run.cfg)),
        "prepared": prepared,
        "prepared_fingerprint": data_fingerprint(prepared),
        "training_data": json.dumps([prepared]),
        "hard": run.out("mine-hard", "output") if trains_on_mined_rows(run.cfg) else "",
        "base_model": run.cfg.model.name_or_path,
        "sft_model": run.out("sft", "output"),
        "grpo_model": run.out("grpo", "output"),
        "config_hash": run.cfg.fingerprint(),
        "code_version": code_version(),
        "pipeline_run_id": os.environ.get("GEOR_PARENT_RUN_ID", ""),
    }
    same_rows = list(run.cfg.eval.splits) == ["test"]  # the evaluation's rows are the benchmark's
    evaluated = run.outcomes["evaluate"].outputs.get("metrics", {})  # an older record has none: re-scored
    candidates = [
        Candidate(
            label,
            run.out(label, "output"),
            lineage,
            evaluated.get(label) if same_rows else None,
            prepared if same_rows else None,
        )
        for label in CANDIDATES
    ]
    gate = gate_and_register(
        run.cfg, candidates, work_uri=uris.join(run.root, "gate"), default_benchmark=prepared
    )
    return {
        "registered": True,
        "model_name": gate.model_name,
        "versions": {entry.label: entry.version for entry in gate.registered},
        "best": gate.label,
        "version": gate.version,
        "promoted": gate.promoted,
        "reason": gate.decision.reason,
        "champion": gate.champion,
        "benchmark": gate.benchmark,
        "gate": gate,
    }


# The order is the run order; a stage consumes only stages above it.
STAGES: tuple[Stage, ...] = (
    Stage(
        "prepare",
        upstream=(),
        output_dir="prepared",
        reads=STAGE_READS["prepare"],
        runner=prepare,
        preflight=(check_manifest,),
        extra_key=manifest_key,
    ),
    Stage(
        "sft",
        upstream=("prepare",),
        output_dir="sft",
        reads=STAGE_READS["sft"],
        runner=sft,
        preflight=(check_base_model, check_sft_resources),
    ),
    Stage(
        "mine-hard",
        upstream=("prepare", "sft"),
        output_dir="hard",
        reads=STAGE_READS["mine-hard"],
        runner=mine_hard,
        needed=trains_on_mined_rows,
    ),
    Stage(
        "grpo",
        upstream=("mine-hard", "sft"),
        output_dir="grpo",
        reads=STAGE_READS["grpo"],
        runner=grpo,
        preflight=(check_grpo_resources,),
    ),
    Stage(
        "evaluate",
        upstream=("prepare", "sft", "grpo"),
        output_dir="eval",
        reads=STAGE_READS["evaluate"],
        runner=evaluate,
        preflight=(check_base_model,),
    ),
    Stage(
        "register",
        upstream=("prepare", "mine-hard", "sft", "grpo", "evaluate"),
        output_dir=None,  # the gate's scratch goes to <root>/gate
        reads=STAGE_READS["register"],
        runner=register,
    ),
)
