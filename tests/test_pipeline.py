"""`geor pipeline` end to end on the test preset, continuing the session's shared root (whose
prepare and SFT stages the shared fixtures built through the pipeline itself), against the
MLflow server fixture: runs, skips on a re-run, `--from evaluate` (through the CLI), every trained
model registered and the best one champion, lineage on the registered versions, and the runs as a
reviewer reads them back through the MLflow client (params, config.yaml, metrics, system metrics,
datasets)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import uuid
from typing import Any

import pytest
import yaml

from flows.commands import pipeline_command as pipeline_command
from geor_core import uris
from tests.plugins.models import run_command

# small GRPO and evaluation: the point here is the orchestration, not learning. beta = 0: GRPO
# loads no reference model (checked here, so test_grpo.py needs no second training run for it);
# no sampled reward (test_evaluate.py checks that column).
OVERRIDES = (
    "grpo.max_steps=2",
    "grpo.eval_steps=2",
    "grpo.save_steps=2",
    "grpo.val_rows=4",
    "grpo.beta=0",
    "eval.max_rows=24",
    "eval.sampled_rows=0",
)


@pytest.fixture(scope="module")
def pipeline_runs(shared_stages, pipeline_config, pipeline_root, mlflow_server) -> dict[str, Any]:
    """The full pipeline, a plain re-run, then `--from evaluate` through the CLI module (its output kept)."""
    from flows.pipeline_run import run_pipeline

    name = f"pipeline-{uuid.uuid4().hex[:8]}"
    overrides = (*OVERRIDES, f"registry.model_name={name}")
    runs: dict[str, Any] = {"name": name}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        patch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")  # reaches the training workers
        cfg = pipeline_config(*overrides)
        runs["first"] = run_pipeline(cfg, pipeline_root)
        runs["again"] = run_pipeline(pipeline_config(*overrides), pipeline_root)
        results: list[Any] = []
        patch.setattr(
            pipeline_command,
            "run_pipeline",
            lambda *a, **k: results.append(run_pipeline(*a, **k)) or results[-1],
        )
        printed = io.StringIO()
        argv = [
            "--config", "test", "--from", "evaluate", "--output", pipeline_root,
            "--manifest", cfg.prepare.manifest, "--model", cfg.model.name_or_path, *overrides,
        ]  # fmt: skip
        with contextlib.redirect_stdout(printed):
            assert run_command(pipeline_command, argv) == 0
        runs["from_evaluate"], runs["from_evaluate_printed"] = results[0], printed.getvalue()
    return runs


def statuses(result: Any) -> dict[str, str]:
    return {name: outcome.status for name, outcome in result.stages.items()}


def test_first_run_reuses_the_shared_stages_and_runs_the_rest(pipeline_runs):
    assert statuses(pipeline_runs["first"]) == {
        "prepare": "skipped",
        "sft": "skipped",
        "mine-hard": "ran",
        "grpo": "ran",
        "evaluate": "ran",
        "register": "ran",
    }
    table = {row["model"]: row for row in pipeline_runs["first"].comparison}
    assert set(table) >= {"base", "sft", "grpo"}
    assert table["base"]["format_rate"] < 10 and table["sft"]["format_rate"] > 90, table
    grpo = uris.read_marker(pipeline_runs["first"].stages["grpo"].outputs["output"])
    assert grpo["global_step"] == 2 and grpo["ref_model_loaded"] is False  # beta = 0


def test_rerun_skips_every_stage(pipeline_runs):
    assert set(statuses(pipeline_runs["again"]).values()) == {"skipped"}
    assert pipeline_runs["again"].gate is None  # nothing registered twice


def test_from_evaluate_reruns_only_the_later_stages(pipeline_runs):
    assert statuses(pipeline_runs["from_evaluate"]) == {
        "prepare": "skipped",
        "sft": "skipped",
        "mine-hard": "skipped",
        "grpo": "skipped",
        "evaluate": "ran",
        "register": "ran",
    }


def test_every_trained_model_is_registered_and_the_best_one_becomes_champion(pipeline_runs):
    from geor_core.config import load_config
    from geor_core.registry.promotion import decide

    first = pipeline_runs["first"]
    gate = first.gate
    assert [(e.label, e.version) for e in gate.registered] == [("sft", "1"), ("grpo", "2")]
    cards = {e.label: e.scorecard for e in gate.registered}
    table = {row["model"]: row for row in first.comparison}
    assert cards["sft"]["geoscore"] == pytest.approx(table["sft"]["geoscore"])  # the evaluation's scores
    better = decide(cards["grpo"], cards["sft"], load_config("test").registry, rival="sft").promote
    assert gate.label == ("grpo" if better else "sft") and gate.promoted and gate.champion == gate.version
    assert gate.decision.reason == "no champion yet"
    assert first.stages["register"].outputs["versions"] == {"sft": "1", "grpo": "2"}
    assert first.stages["register"].outputs["champion"] == gate.version

    again = pipeline_runs["from_evaluate"].gate
    assert [(e.label, e.version) for e in again.registered] == [("sft", "3"), ("grpo", "4")]
    assert again.champion_version == gate.version
    printed = pipeline_runs["from_evaluate_printed"]
    assert "registered v3 (sft), v4 (grpo)" in printed and f"champion: {gate.model_name} v" in printed
    summary = json.loads(next(line for line in printed.splitlines() if line.startswith('{"root"')))
    assert summary["registered"]["versions"] == {"sft": "3", "grpo": "4"}
    assert summary["registered"]["champion"] == again.champion


def test_registered_version_traces_back_to_the_manifest_and_prepared_rows(
    pipeline_runs, prepared_world, world_dir, mlflow_server
):
    from mlflow import MlflowClient

    from geor_core.registry import registry
    from geor_core.registry.lineage import data_fingerprint

    client = registry.client(mlflow_server)
    version = registry.get_version(client, pipeline_runs["name"], "1")
    lineage = version.lineage
    assert lineage["manifest"] == str(world_dir / "manifest.csv")
    assert lineage["prepared"] == prepared_world
    assert lineage["prepared_fingerprint"] == data_fingerprint(prepared_world)
    assert json.loads(lineage["training_data"]) == [prepared_world]
    assert lineage["pipeline_run_id"] == pipeline_runs["first"].parent_run_id
    assert version.scorecard["benchmark"] == prepared_world and "geoscore" in version.scorecard
    assert version.lineage["candidate"] == "sft" and version.lineage["model"] == lineage["sft_model"]
    assert (
        registry.champion(client, pipeline_runs["name"]).version
        == pipeline_runs["from_evaluate"].gate.champion
    )

    tracking = MlflowClient(mlflow_server)
    parent = tracking.get_run(pipeline_runs["first"].parent_run_id)
    children = tracking.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(run.data.tags["geor.stage"] for run in children) == sorted(
        ["prepare", "sft", "mine-hard", "grpo", "evaluate", "register"]
    )
    assert parent.data.tags["geor.stage.sft"] == "skipped"
    assert parent.data.metrics["sft/format_rate"] > 90


def test_a_bad_config_fails_before_any_stage(pipeline_root, capsys):
    from flows.cli import main

    assert main(["pipeline", "--config", "test", "--output", pipeline_root, "grpo.beta=-1"]) == 2
    assert "grpo.beta" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_command(pipeline_command, ["--config", "test", "--from", "nowhere"])


def test_each_run_reads_back_as_a_reviewer_needs_it(pipeline_runs, mlflow_server, prepared_world, tmp_path):
    """One pipeline run through the MLflow client: each stage's params are the config it reads
    plus its real inputs and output; every run has config.yaml; no final/* copies of per-step
    metrics; system metrics from the rank-0 training worker; one digest per dataset URI, with its
    row count and schema."""
    from mlflow import MlflowClient

    from geor_core.config.logged_params import STAGE_READS
    from geor_core.registry.lineage import data_fingerprint

    tracking = MlflowClient(mlflow_server)
    first = pipeline_runs["first"]
    parent = tracking.get_run(first.parent_run_id)
    experiment = [parent.info.experiment_id]
    children = tracking.search_runs(experiment, f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    runs = {run.data.tags["geor.stage"]: run for run in children}
    grandchildren = [  # evaluate's run per model
        nested
        for run in children
        for nested in tracking.search_runs(experiment, f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    ]
    out = {name: outcome.outputs for name, outcome in first.stages.items()}

    # (a) params: what the stage reads, and its inputs and output
    for stage, run in runs.items():
        reads = tuple(path if "." in path else f"{path}." for path in STAGE_READS[stage].values())
        other = {key for key in run.data.params if not key.startswith(reads)}
        assert all(key == "output" or key.startswith("input.") for key in other), (stage, other)
    grpo = runs["grpo"].data.params
    assert grpo["input.model"] == out["sft"]["output"] and grpo["output"] == out["grpo"]["output"]
    assert grpo["input.data"] == out["grpo"]["data"] and grpo["grpo.max_steps"] == "2"
    assert "model.name_or_path" not in grpo and "data.dataset" not in grpo
    if out["grpo"]["data"] == out["mine-hard"]["output"]:
        assert grpo["input.data.run_id"] == runs["mine-hard"].info.run_id  # the run that mined it
    mine = runs["mine-hard"].data.params
    assert (mine["input.model"], mine["input.data"], mine["output"]) == (
        out["sft"]["output"], prepared_world, out["mine-hard"]["output"]
    )  # fmt: skip
    assert "grpo.hard_radius_km" in mine and "grpo.beta" not in mine
    assert runs["evaluate"].data.params["input.model.grpo"] == out["grpo"]["output"]
    register = runs["register"].data.params
    assert (register["input.model.sft"], register["input.model.grpo"]) == (
        out["sft"]["output"],
        out["grpo"]["output"],
    )

    # (b) the full resolved config on every run, the parent's too
    assert {run.info.run_name for run in grandchildren} >= {"evaluate:base", "evaluate:sft", "evaluate:grpo"}
    for run in [parent, *children, *grandchildren]:
        assert "config.yaml" in [a.path for a in tracking.list_artifacts(run.info.run_id)], run.info.run_name
    config_file = tracking.download_artifacts(runs["grpo"].info.run_id, "config.yaml", str(tmp_path))
    config = yaml.safe_load(open(config_file).read())  # noqa: SIM115
    assert config["grpo"]["max_steps"] == 2 and config["eval"]["max_rows"] == 24

    # (c) no final/* copies: what the export's marker reports was logged per step
    metrics = runs["grpo"].data.metrics
    assert not [key for key in metrics if key.startswith("final/")]
    logged_at_the_end = set(uris.read_marker(out["grpo"]["output"])["metrics"]) - {"step"}  # the x axis
    assert logged_at_the_end <= set(metrics)

    # (d) system metrics from the rank-0 training worker, not from this (the driver's) process
    assert any(key.startswith("system/") for key in metrics)
    source = runs["grpo"].data.tags["geor.system_metrics_from"]
    assert source.startswith("rank-0 training worker") and not source.endswith(f"pid {os.getpid()}")
    assert not [key for key in runs["evaluate"].data.metrics if key.startswith("system/")]

    # (e) one digest per dataset URI, once complete, with its row count and schema
    digests: dict[str, set[str]] = {}
    hard = None
    for run in [*children, *grandchildren]:
        for entry in run.inputs.dataset_inputs:
            digests.setdefault(entry.dataset.source, set()).add(entry.dataset.digest)
            if entry.dataset.name == "hard-samples":
                hard = entry.dataset
    assert digests and all(len(found) == 1 for found in digests.values()), digests
    assert hard is not None and hard.digest == data_fingerprint(out["mine-hard"]["output"])
    rows = uris.read_marker(out["mine-hard"]["output"])["stats"]["rows_out"]
    assert json.loads(hard.profile)["num_rows"] == rows
    assert "id" in [c["name"] for c in json.loads(hard.schema)["mlflow_colspec"]]
