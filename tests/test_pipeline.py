"""`geor pipeline` end to end on the test preset, continuing the session's shared root (whose
prepare and SFT stages the shared fixtures built through the pipeline itself), against the
MLflow server fixture: runs, skips on a re-run, `--from grpo`, lineage on the registered version."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

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
    """The full pipeline, a plain re-run, then `--from grpo`, all through the CLI module."""
    from flows.pipeline_run import run_pipeline

    name = f"pipeline-{uuid.uuid4().hex[:8]}"
    overrides = (*OVERRIDES, f"registry.model_name={name}")
    runs: dict[str, Any] = {"name": name}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        cfg = pipeline_config(*overrides)
        runs["first"] = run_pipeline(cfg, pipeline_root)
        runs["again"] = run_pipeline(pipeline_config(*overrides), pipeline_root)
        runs["from_grpo"] = run_pipeline(pipeline_config(*overrides), pipeline_root, from_stage="grpo")
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
    gate = pipeline_runs["first"].gate
    assert gate.promoted and gate.version == "1" and gate.decision.reason == "no champion yet"
    grpo = uris.read_marker(pipeline_runs["first"].stages["grpo"].outputs["output"])
    assert grpo["global_step"] == 2 and grpo["ref_model_loaded"] is False  # beta = 0


def test_rerun_skips_every_stage(pipeline_runs):
    assert set(statuses(pipeline_runs["again"]).values()) == {"skipped"}
    assert pipeline_runs["again"].gate is None  # nothing registered twice


def test_from_grpo_reruns_only_the_later_stages(pipeline_runs):
    assert statuses(pipeline_runs["from_grpo"]) == {
        "prepare": "skipped",
        "sft": "skipped",
        "mine-hard": "skipped",
        "grpo": "ran",
        "evaluate": "ran",
        "register": "ran",
    }
    gate = pipeline_runs["from_grpo"].gate
    assert gate.version == "2" and gate.champion_version == "1"


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
    assert registry.champion(client, pipeline_runs["name"]).version in {"1", "2"}

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
