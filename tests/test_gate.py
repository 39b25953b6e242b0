"""The champion gate end to end with real models on the real registry (flows/promotion_gate.py):
the untrained tiny model and the session's SFT model, scored on the prepared world's test split.

One sequence, three evaluations in all:
1. untrained, scored with eval.max_rows=10: no champion, so promoted (v1);
2. SFT with eval.max_rows=12: v1's scorecard was computed with other settings, so v1 is scored
   again (downloaded from the registry as ``models:/NAME/1``); SFT beats it and is promoted (v2);
3. untrained again, its metrics from step 2's re-scoring (same rows, same settings): far worse
   than SFT, so registered (v3) but NOT promoted; the alias stays on v2.

And, with no model scored, several candidates at once (the pipeline's SFT and SFT+GRPO models):
each is registered, the best one by the gate's rule is compared with the champion.
"""

from __future__ import annotations

import contextlib
import io
import json
import uuid
from typing import Any

import pytest

from flows.cli import main
from geor_core.registry import registry

SETTINGS = ("eval.sampled_rows=0",)


@pytest.fixture(scope="module")
def gate_runs(ray_cluster, mlflow_server, tiny_model_dir, sft_checkpoint, prepared_world, tmp_path_factory):
    from flows.promotion_gate import Candidate, gate_and_register
    from geor_core.config import load_config

    name = f"gate-{uuid.uuid4().hex[:8]}"
    experiment = f"gate-{uuid.uuid4().hex[:8]}"
    work = tmp_path_factory.mktemp("gate")
    client = registry.client(mlflow_server)

    def config(max_rows: int) -> Any:
        overrides = [
            f"registry.model_name={name}",
            f"eval.max_rows={max_rows}",
            f"tracking.experiment={experiment}",
            f"registry.lock={work / 'registry.lock'}",
        ]
        return load_config("test", [*overrides, *SETTINGS])

    def gate(step: str, cfg: Any, model: str, metrics: dict | None = None) -> dict[str, Any]:
        printed = io.StringIO()
        lineage = {"training_data": json.dumps([prepared_world]), "step": step}
        candidate = Candidate("candidate", model, lineage, metrics, prepared_world if metrics else None)
        with contextlib.redirect_stdout(printed):
            outcome = gate_and_register(
                cfg, [candidate], work_uri=str(work / step), default_benchmark=prepared_world
            )
        return {
            "outcome": outcome,
            "printed": printed.getvalue(),
            "champion": registry.champion(client, name).version,
            "v1_card": registry.get_version(client, name, "1").scorecard,
        }

    runs: dict[str, Any] = {"name": name, "experiment": experiment, "client": client}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        patch.delenv("GEOR_PARENT_RUN_ID", raising=False)
        runs["untrained"] = gate("untrained", config(10), str(tiny_model_dir))
        runs["sft"] = gate("sft", config(12), sft_checkpoint.export_uri)
        runs["untrained_again"] = gate(
            "untrained-again", config(12), str(tiny_model_dir), runs["sft"]["v1_card"]
        )
    return runs


def test_with_no_champion_the_first_model_is_promoted(gate_runs, prepared_world):
    first = gate_runs["untrained"]
    outcome = first["outcome"]
    assert outcome.promoted and outcome.version == "1" and outcome.champion_version is None
    assert outcome.decision.reason == "no champion yet" and first["champion"] == "1"
    assert outcome.benchmark == prepared_world
    assert first["v1_card"]["n"] == 10 and "v1 NOT promoted" not in first["printed"]
    assert (
        registry.registered_tags(gate_runs["client"], gate_runs["name"])[registry.BENCHMARK_TAG]
        == prepared_world
    )


def test_a_stale_champion_scorecard_is_recomputed_and_a_better_model_is_promoted(gate_runs):
    first, second = gate_runs["untrained"], gate_runs["sft"]
    assert "scoring champion v1" in second["printed"] and "stale" in second["printed"]
    stale, fresh = first["v1_card"], second["v1_card"]
    assert (stale["n"], fresh["n"]) == (10, 12) and stale["eval_key"] != fresh["eval_key"]
    assert fresh["benchmark_fingerprint"] == stale["benchmark_fingerprint"]

    outcome = second["outcome"]
    assert outcome.promoted and outcome.version == "2" and outcome.champion_version == "1"
    assert outcome.decision.champion == fresh  # compared with the re-scored card, not the stale one
    assert outcome.decision.candidate["n"] == 12
    assert outcome.decision.candidate["geoscore"] > fresh["geoscore"]
    assert outcome.decision.candidate["format_rate"] > fresh["format_rate"]
    assert second["champion"] == "2" and "v2: PROMOTED to champion" in second["printed"]


def test_a_worse_model_is_registered_but_not_promoted_and_both_scorecards_are_logged(gate_runs):
    from mlflow import MlflowClient

    third = gate_runs["untrained_again"]
    outcome = third["outcome"]
    assert not outcome.promoted and outcome.version == "3" and outcome.champion_version == "2"
    assert third["champion"] == "2"  # the alias did not move
    assert "scoring champion" not in third["printed"]  # v2's card matches these settings: reused
    assert "v3: NOT promoted (champion kept)" in third["printed"]

    client, name = gate_runs["client"], gate_runs["name"]
    v3 = registry.get_version(client, name, "3")
    assert v3.tags["geor.gate"] == f"kept champion: {outcome.decision.reason}"
    assert v3.lineage["step"] == "untrained-again"
    assert registry.CHAMPION not in v3.aliases
    assert [v.version for v in registry.versions(client, name) if registry.CHAMPION in v.aliases] == ["2"]

    tracking = MlflowClient(gate_runs["client"].tracking_uri)
    experiment = tracking.get_experiment_by_name(gate_runs["experiment"])
    (register_run,) = tracking.search_runs(
        [experiment.experiment_id], "tags.`geor.stage` = 'register' and tags.`geor.registered_version` = '3'"
    )
    metrics, tags = register_run.data.metrics, register_run.data.tags
    champion_card = gate_runs["sft"]["outcome"].decision.candidate
    assert (
        metrics["promoted"] == 0.0 and tags["geor.decision"] == "keep" and tags["geor.compared_with"] == "2"
    )
    assert metrics["candidate/geoscore"] == pytest.approx(outcome.decision.candidate["geoscore"])
    assert metrics["champion/geoscore"] == pytest.approx(champion_card["geoscore"])
    assert metrics["champion/format_rate"] == pytest.approx(champion_card["format_rate"])


def test_models_list_shows_the_gate_history(gate_runs, capsys, monkeypatch, mlflow_server):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setattr("sys.argv", ["geor"])
    assert (
        main(["models", "list", "--config", "test", "--json", f"registry.model_name={gate_runs['name']}"])
        == 0
    )
    listing = json.loads(capsys.readouterr().out)
    assert listing["champion"] == "2" and listing["rollback_to"] == "1"
    gates = {v["version"]: v["gate"] for v in listing["versions"]}
    assert gates["1"] == "promoted: no champion yet" and gates["3"].startswith("kept champion: ")


def test_every_candidate_is_registered_and_the_best_becomes_champion(mlflow_server, tmp_path, monkeypatch):
    """No model is scored here (the candidates bring their evaluation's metrics, the champion's
    scorecard matches): the pipeline's two candidates as `make demo` once scored them."""
    from mlflow import MlflowClient

    from flows.promotion_gate import Candidate, format_decision, gate_and_register
    from geor_core.config import load_config

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.delenv("GEOR_PARENT_RUN_ID", raising=False)
    name, benchmark = f"best-{uuid.uuid4().hex[:8]}", tmp_path / "prepared"
    for folder in (benchmark, tmp_path / "sft", tmp_path / "grpo"):
        folder.mkdir()
        (folder / "part-0.txt").write_text(folder.name)
    cfg = load_config(
        "test",
        [
            f"registry.model_name={name}",
            f"registry.lock={tmp_path / 'registry.lock'}",
            f"tracking.experiment={name}",
            *SETTINGS,
        ],
    )

    def gate(sft: dict, grpo: dict) -> Any:
        candidates = [
            Candidate(label, str(tmp_path / label), {"step": label}, metrics, str(benchmark))
            for label, metrics in (("sft", sft), ("grpo", grpo))
        ]
        return gate_and_register(
            cfg, candidates, work_uri=str(tmp_path / "gate"), default_benchmark=str(benchmark)
        )

    demo = gate(
        {"geoscore": 3814.0, "acc_25km": 9.38, "format_rate": 100.0},
        {"geoscore": 3806.5, "acc_25km": 4.69, "format_rate": 100.0},
    )
    client = registry.client(mlflow_server)
    assert [(e.label, e.version) for e in demo.registered] == [("sft", "1"), ("grpo", "2")]
    assert demo.promoted and demo.version == "1" and demo.champion == "1" and demo.label == "sft"
    assert registry.champion(client, name).version == "1"
    v2 = registry.get_version(client, name, "2")
    assert v2.tags[registry.GATE_TAG].startswith("not compared with the champion: did not beat sft: geoscore")
    assert v2.scorecard["geoscore"] == 3806.5 and v2.lineage["candidate"] == "grpo"
    description = client.get_model_version(name, "2").description
    assert description.startswith("grpo candidate") and "geoscore 3806" in description
    assert registry.get_version(client, name, "1").tags[registry.GATE_TAG] == "promoted: no champion yet"
    printed = format_decision(demo)
    assert (
        "registered v1 (sft), v2 (grpo)" in printed and "champion: " + name + " v1 (sft): promoted" in printed
    )

    # next run: the SFT+GRPO model beats the champion by the rule, the new SFT model does not
    later = gate({"geoscore": 3700.0, "format_rate": 100.0}, {"geoscore": 3900.0, "format_rate": 100.0})
    assert [(e.label, e.version) for e in later.registered] == [("sft", "3"), ("grpo", "4")]
    assert later.promoted and later.version == "4" and later.champion_version == "1"
    assert later.decision.champion["geoscore"] == 3814.0  # v1's card, reused: same rows and settings
    assert registry.champion(client, name).version == "4"
    # and a run where neither beats the champion: both registered, the alias stays, and it says why
    kept = gate({"geoscore": 3800.0, "format_rate": 100.0}, {"geoscore": 3850.0, "format_rate": 100.0})
    assert not kept.promoted and kept.version == "6" and kept.champion == "4"
    assert "no new version became champion" in format_decision(kept)
    assert registry.champion(client, name).version == "4"

    tracking = MlflowClient(mlflow_server)
    experiment = tracking.get_experiment_by_name(cfg.tracking.experiment)
    (register_run,) = tracking.search_runs(
        [experiment.experiment_id], "tags.`geor.stage` = 'register' and tags.`geor.registered_version` = '4'"
    )
    assert json.loads(register_run.data.tags["geor.registered_versions"]) == {"sft": "3", "grpo": "4"}
    assert register_run.data.tags["geor.champion"] == "4"
    assert (
        register_run.data.metrics["sft/geoscore"] == 3700.0 and register_run.data.metrics["promoted"] == 1.0
    )
