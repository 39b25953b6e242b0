"""The registry's champion alias, its history and rollback (geor_core/registry/registry.py), and `geor models
list | promote | rollback` through the real CLI, against the session's MLflow server. Versions are
registered from an empty run (no model files): these tests are about the alias, not the weights."""

from __future__ import annotations

import dataclasses
import json
import sys
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from flows.cli import main
from geor_core.errors import UserFacingError
from geor_core.registry import registry

MANIFEST = "/data/world/manifest.csv"


@dataclass
class Registered:
    """A registered model of its own, with its versions' scorecards, in an experiment of its own."""

    name: str
    experiment: str
    client: Any
    cards: dict[str, dict[str, Any]]


def scorecard(index: int) -> dict[str, Any]:
    return {
        "geoscore": 1000.0 + 111.0 * index,
        "acc_200km": 10.0 * index,
        "acc_750km": 20.0 * index,
        "median_km": 900.0 - 100 * index,
        "format_rate": 90.0 + index,
        "benchmark": f"/data/run{index}/prepared",
    }


def register_versions(client: Any, name: str, run_id: str, count: int) -> dict[str, dict[str, Any]]:
    cards = {}
    for index in range(1, count + 1):
        card = scorecard(index)
        tags = {
            registry.SCORECARD_TAG: json.dumps(card),
            registry.BENCHMARK_TAG: card["benchmark"],
            f"{registry.LINEAGE_PREFIX}training_data": json.dumps([f"/data/run{index}/prepared"]),
            f"{registry.LINEAGE_PREFIX}manifest": MANIFEST,
            "geor.gate": f"gate verdict {index}",
        }
        version = registry.register(client, name, run_id, tags)
        cards[version.version] = card
    return cards


@pytest.fixture
def tracking_env(mlflow_server, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # storage.root (the registry lock's folder) is relative: keep it in tmp
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.delenv("GEOR_PARENT_RUN_ID", raising=False)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])  # flows.cli.main rewrites it


@pytest.fixture
def three_versions(mlflow_server, tracking_env) -> Registered:
    """Versions 1, 2, 3 of a fresh model name, no champion yet."""
    client = registry.client(mlflow_server)
    experiment = f"models-{uuid.uuid4().hex[:10]}"
    run = client.create_run(client.create_experiment(experiment))
    name = f"reg-{uuid.uuid4().hex[:10]}"
    return Registered(name, experiment, client, register_versions(client, name, run.info.run_id, 3))


def champions(model: Registered) -> list[str]:
    """Every version carrying the champion alias (MLflow's own view, version by version)."""
    found = [registry.get_version(model.client, model.name, v) for v in model.cards]
    return [v.version for v in found if registry.CHAMPION in v.aliases]


def geor_models(model: Registered, capsys, action: str, *args: str) -> tuple[int, str, str]:
    """`geor models ACTION --config test [ARGS] k=v ...` through flows.cli.main, on the model's name and
    experiment (options and VERSION before the overrides, as argparse wants them)."""
    overrides = [f"registry.model_name={model.name}", f"tracking.experiment={model.experiment}"]
    code = main(["models", action, "--config", "test", *args, *overrides])
    out, err = capsys.readouterr()
    return code, out, err


def move_runs(model: Registered, stage: str) -> list[Any]:
    experiment = model.client.get_experiment_by_name(model.experiment)
    return model.client.search_runs(
        [experiment.experiment_id],
        f"tags.`geor.stage` = '{stage}' and tags.`geor.model_name` = '{model.name}'",
        order_by=["attributes.start_time ASC"],
    )


def test_rollback_walks_back_through_the_champions_and_stops_at_the_first(three_versions):
    model, client = three_versions, three_versions.client
    for version in ("1", "2", "3"):
        registry.set_champion(client, model.name, version, f"promoted {version}")
        assert champions(model) == [version]
    assert registry.previous_champion(client, model.name) == "2"

    registry.set_champion(client, model.name, "2", "back", rollback=True)
    assert registry.champion(client, model.name).version == "2" and champions(model) == ["2"]
    assert registry.previous_champion(client, model.name) == "1"

    registry.set_champion(client, model.name, "1", "back again", rollback=True)
    assert champions(model) == ["1"]
    with pytest.raises(UserFacingError, match="version 1 has no earlier champion"):
        registry.previous_champion(client, model.name)
    assert [(m["version"], m["rollback"]) for m in registry.history(client, model.name)] == [
        ("1", False),
        ("2", False),
        ("3", False),
        ("2", True),
        ("1", True),
    ]


def test_a_promotion_after_a_rollback_is_rolled_back_to_the_version_underneath(three_versions):
    model, client = three_versions, three_versions.client
    for version in ("1", "2"):
        registry.set_champion(client, model.name, version, "promoted")
    registry.set_champion(client, model.name, "1", "back", rollback=True)
    registry.set_champion(client, model.name, "3", "promoted")
    assert registry.previous_champion(client, model.name) == "1"


def test_no_champion_means_nothing_to_roll_back(three_versions):
    with pytest.raises(UserFacingError, match="has no champion: nothing to roll back"):
        registry.previous_champion(three_versions.client, three_versions.name)


def test_models_list_prints_every_version_newest_first_with_scores_and_lineage(three_versions, capsys):
    model = three_versions
    registry.set_champion(model.client, model.name, "1", "first")
    registry.set_champion(model.client, model.name, "2", "better")

    code, out, _ = geor_models(model, capsys, "list")
    assert code == 0
    rows = [line for line in out.splitlines() if line.startswith("| ") and "version" not in line]
    assert [row.split("|")[1].strip() for row in rows] == ["3", "2", "1"]
    for row in rows:
        version = row.split("|")[1].strip()
        card = model.cards[version]
        cells = [cell.strip() for cell in row.split("|")[1:-1]]
        assert f"{card['geoscore']:.2f}" in cells and f"{card['median_km']:.2f}" in cells
        assert f"run{version}/prepared" in cells  # the benchmark, short
        assert f"data run{version}/prepared; manifest world/manifest.csv" in cells
        assert f"gate verdict {version}" in cells
        assert ("*champion*" in cells) == (version == "2")
    assert "champion: v2 (better)" in out
    assert "rollback would return to: v1" in out

    code, out, _ = geor_models(model, capsys, "list", "--json")
    listing = json.loads(out)
    assert code == 0 and listing["champion"] == "2" and listing["rollback_to"] == "1"
    assert [v["version"] for v in listing["versions"]] == ["3", "2", "1"]
    by_version = {v["version"]: v for v in listing["versions"]}
    assert by_version["3"]["scorecard"] == model.cards["3"]
    assert by_version["2"]["champion"] and not by_version["3"]["champion"]
    assert by_version["1"]["lineage"]["manifest"] == MANIFEST
    assert [m["version"] for m in listing["champion_history"]] == ["1", "2"]


def test_models_promote_and_rollback_move_the_alias_and_log_each_move(three_versions, capsys):
    model = three_versions
    code, out, _ = geor_models(model, capsys, "promote", "1")
    assert code == 0 and "champion none -> v1: manual promotion by" in out
    code, out, _ = geor_models(model, capsys, "promote", "--reason", "hotfix", "v3")
    assert code == 0 and "champion v1 -> v3" in out and champions(model) == ["3"]
    reason = registry.history(model.client, model.name)[-1]["reason"]
    assert reason.startswith("manual promotion by ") and reason.endswith(": hotfix")
    assert registry.get_version(model.client, model.name, "3").tags["geor.promoted_reason"] == reason

    code, out, _ = geor_models(model, capsys, "rollback")
    assert code == 0 and "champion v3 -> v1: rollback by" in out and champions(model) == ["1"]

    promotions = move_runs(model, "models-promote")
    assert [(r.data.tags["geor.from_version"], r.data.tags["geor.to_version"]) for r in promotions] == [
        ("none", "1"),
        ("1", "3"),
    ]
    assert promotions[1].data.tags["geor.reason"] == reason and promotions[1].info.status == "FINISHED"
    (rollback,) = move_runs(model, "models-rollback")
    assert (rollback.data.tags["geor.from_version"], rollback.data.tags["geor.to_version"]) == ("3", "1")
    assert rollback.data.tags["geor.user"] and rollback.info.run_id in out


def test_models_errors_are_one_line_and_name_the_problem(three_versions, capsys, monkeypatch):
    model = three_versions
    code, _, err = geor_models(model, capsys, "promote", "7")
    assert code == 2 and "has no version '7' (versions: 3, 2, 1)" in err
    code, _, err = geor_models(model, capsys, "rollback")
    assert code == 2 and "has no champion: nothing to roll back" in err
    geor_models(model, capsys, "promote", "2")
    code, _, err = geor_models(model, capsys, "promote", "2")
    assert code == 2 and "version 2 is already the champion" in err
    code, _, err = geor_models(model, capsys, "rollback")
    assert code == 2 and "no earlier champion" in err
    assert champions(model) == ["2"] and len(move_runs(model, "models-promote")) == 1  # failures log no move

    code, _, err = geor_models(dataclasses.replace(model, name=f"absent-{model.name}"), capsys, "list")
    assert code == 2 and f"no model named 'absent-{model.name}' is registered" in err

    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    code, _, err = geor_models(model, capsys, "list")
    assert code == 2 and "needs MLflow: set tracking.uri or MLFLOW_TRACKING_URI" in err
    assert len(err.strip().splitlines()) == 1
