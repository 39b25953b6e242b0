"""Champion moves are crash-safe and compare-and-set (geor_core/registry/registry.py, flows/promotion_gate.py):
each move is an event on the version it promotes, written before the alias moves, so history and
alias never disagree; a move decided against a champion that has changed since is refused; moves
are serialised by the registry lock. Against the session's MLflow server, with versions registered
from an empty run (no model files): these tests are about the alias, not the weights."""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from geor_core.errors import UserFacingError
from geor_core.registry import registry
from geor_core.registry.run_lock import LockHeld, RunLock


@dataclass
class Model:
    name: str
    client: Any
    lock: str  # the registry lock's path


@pytest.fixture
def model(mlflow_server, tmp_path) -> Model:
    """Versions 1, 2, 3 of a fresh model name, no champion yet."""
    client = registry.client(mlflow_server)
    run = client.create_run(client.create_experiment(f"cas-{uuid.uuid4().hex[:10]}"))
    name = f"cas-{uuid.uuid4().hex[:10]}"
    for _ in range(3):
        registry.register(client, name, run.info.run_id, {})
    return Model(name, client, str(tmp_path / "registry.lock"))


def promote(model: Model, version: str, expected: str | None, **more: Any) -> None:
    registry.set_champion(
        model.client,
        model.name,
        version,
        f"to {version}",
        expected_champion=expected,
        lock_uri=model.lock,
        **more,
    )


def champion(model: Model) -> str | None:
    current = registry.champion(model.client, model.name)
    return current.version if current else None


def moves(model: Model) -> list[str]:
    return [move["version"] for move in registry.history(model.client, model.name)]


def events(model: Model, version: str) -> list[str]:
    tags = registry.get_version(model.client, model.name, version).tags
    return [key for key in tags if key.startswith(registry.EVENT_PREFIX)]


def test_a_crash_between_the_event_and_the_alias_move_leaves_history_and_alias_consistent(model, monkeypatch):
    promote(model, "1", None)
    promote(model, "2", "1")
    move_alias = model.client.set_registered_model_alias

    def never_arrives(*args: Any) -> None:
        raise ConnectionError("the registry went away")

    monkeypatch.setattr(model.client, "set_registered_model_alias", never_arrives)
    with pytest.raises(ConnectionError):
        promote(model, "3", "2")
    assert len(events(model, "3")) == 1  # written before the alias move...
    assert champion(model) == "2" and moves(model) == ["1", "2"]  # ...and counting for nothing
    assert registry.previous_champion(model.client, model.name) == "1"
    assert not Path(model.lock).exists()  # released

    def answer_lost(*args: Any) -> None:
        move_alias(*args)
        raise ConnectionError("the answer was lost")

    monkeypatch.setattr(model.client, "set_registered_model_alias", answer_lost)
    with pytest.raises(ConnectionError):
        promote(model, "3", "2")
    assert champion(model) == "3" and moves(model) == ["1", "2", "3"]
    assert registry.previous_champion(model.client, model.name) == "2"

    monkeypatch.setattr(model.client, "set_registered_model_alias", move_alias)
    promote(model, "2", "3", rollback=True)
    assert champion(model) == "2" and registry.previous_champion(model.client, model.name) == "1"


def test_concurrent_promotions_one_wins_and_the_other_is_refused(model, mlflow_server, monkeypatch):
    from mlflow import MlflowClient

    promote(model, "1", None)
    move_alias = MlflowClient.set_registered_model_alias
    both_checked = threading.Barrier(2, timeout=5)

    def slow_move(self, *args: Any) -> None:  # without the lock both would pass the check by now
        with contextlib.suppress(threading.BrokenBarrierError):
            both_checked.wait(timeout=1.5)
        move_alias(self, *args)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", slow_move)
    scored = threading.Barrier(2, timeout=30)
    outcomes: dict[str, BaseException | None] = {}

    def gate(version: str) -> None:
        client = registry.client(mlflow_server)
        compared_with = registry.champion(client, model.name).version  # "scored" against it
        scored.wait()
        try:
            registry.set_champion(
                client, model.name, version, "gate", expected_champion=compared_with, lock_uri=model.lock
            )
            outcomes[version] = None
        except BaseException as exc:
            outcomes[version] = exc

    threads = [threading.Thread(target=gate, args=(version,)) for version in ("2", "3")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    (winner,) = [version for version, exc in outcomes.items() if exc is None]
    (loser,) = [version for version, exc in outcomes.items() if exc is not None]
    assert isinstance(outcomes[loser], UserFacingError)
    assert f"the champion changed from v1 to v{winner} since it was scored; re-run the gate" in str(
        outcomes[loser]
    )
    assert champion(model) == winner and moves(model) == ["1", winner]
    assert events(model, loser) == []  # a refused move writes nothing


def test_a_move_decided_against_an_old_champion_is_refused_and_changes_nothing(model):
    promote(model, "1", None)
    with pytest.raises(UserFacingError, match="the champion changed from none to v1 since it was scored"):
        promote(model, "2", None)
    promote(model, "2", "1")  # someone else's promotion while a gate scored v3 against v1
    with pytest.raises(registry.ChampionChanged, match=r"changed from v1 to v2 since it was scored; re-run"):
        promote(model, "3", "1")
    assert champion(model) == "2" and moves(model) == ["1", "2"] and events(model, "3") == []


def test_the_gate_refuses_when_the_champion_changed_while_it_scored(
    model, mlflow_server, tmp_path, monkeypatch
):
    from flows import promotion_gate
    from geor_core.config import load_config

    benchmark, candidate = tmp_path / "benchmark", tmp_path / "candidate"
    for folder in (benchmark, candidate):
        folder.mkdir()
        (folder / "part-0.txt").write_text("rows")
    monkeypatch.delenv("GEOR_PARENT_RUN_ID", raising=False)
    cfg = load_config(
        "test",
        [
            f"registry.model_name={model.name}",
            f"registry.benchmark={benchmark}",
            f"registry.lock={model.lock}",
            f"tracking.uri={mlflow_server}",
            f"tracking.experiment=cas-gate-{uuid.uuid4().hex[:8]}",
        ],
    )
    promote(model, "1", None)

    def score_champion(cfg: Any, model_uri: str, label: str, settings: dict, output_uri: str) -> dict:
        promote(model, "2", "1")  # `geor models promote 2` while the gate scores v1 for minutes
        return {"geoscore": 1000.0, "format_rate": 100.0, **settings}

    monkeypatch.setattr(promotion_gate, "evaluate_scorecard", score_champion)
    with pytest.raises(UserFacingError) as refused:
        promotion_gate.gate_and_register(
            cfg,
            [
                promotion_gate.Candidate(
                    "candidate",
                    str(candidate),
                    {"training_data": "[]"},
                    {"geoscore": 4000.0, "format_rate": 100.0},
                    str(benchmark),
                )
            ],
            work_uri=str(tmp_path / "gate"),
            default_benchmark=str(benchmark),
        )
    message = str(refused.value)
    assert "the champion changed from v1 to v2 since it was scored; re-run the gate" in message
    assert "v4 stays registered, not promoted" in message
    assert champion(model) == "2" and moves(model) == ["1", "2"] and events(model, "4") == []
    gate = registry.get_version(model.client, model.name, "4").tags[registry.GATE_TAG]
    assert gate == "not promoted: the champion changed from v1 to v2 during the gate"


def test_rollback_after_three_promotions_goes_to_the_second(
    model, mlflow_server, tmp_path, monkeypatch, capsys
):
    from flows.cli import main

    for version, before in (("1", None), ("2", "1"), ("3", "2")):
        promote(model, version, before)
    # the single history list an earlier release kept, as a crash between its two writes left it
    stale = [{"version": "1", "rollback": False}, {"version": "2", "rollback": False}]
    model.client.set_registered_model_tag(model.name, registry.LEGACY_HISTORY_TAG, json.dumps(stale))

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.delenv("GEOR_PARENT_RUN_ID", raising=False)
    monkeypatch.setattr("sys.argv", ["geor"])
    overrides = [
        f"registry.model_name={model.name}",
        f"registry.lock={model.lock}",
        f"tracking.experiment=cas-{uuid.uuid4().hex[:8]}",
    ]
    assert main(["models", "rollback", "--config", "test", *overrides]) == 0
    assert "champion v3 -> v2" in capsys.readouterr().out and champion(model) == "2"
    (promoted,) = events(model, "3")  # the rollback read it: v3 was promoted from v2
    assert json.loads(registry.get_version(model.client, model.name, "3").tags[promoted])["from"] == "2"
    assert main(["models", "rollback", "--config", "test", *overrides]) == 0
    assert champion(model) == "1" and moves(model) == ["1", "2", "3", "2", "1"]
    assert main(["models", "rollback", "--config", "test", *overrides]) == 2
    assert "no earlier champion" in capsys.readouterr().err


def test_a_registry_promoted_by_an_earlier_release_keeps_its_rollback_history(model):
    model.client.set_registered_model_alias(model.name, registry.CHAMPION, "2")
    earlier = [{"version": "1", "rollback": False}, {"version": "2", "rollback": False}]
    model.client.set_registered_model_tag(model.name, registry.LEGACY_HISTORY_TAG, json.dumps(earlier))
    assert moves(model) == ["1", "2"] and registry.previous_champion(model.client, model.name) == "1"
    promote(model, "3", "2")
    assert moves(model) == ["1", "2", "3"] and registry.previous_champion(model.client, model.name) == "2"


def test_a_move_waits_for_the_registry_lock_then_names_its_holder(model, monkeypatch):
    monkeypatch.setattr(registry, "LOCK_WAIT_S", 0.5)
    with (
        RunLock(model.lock, ttl_s=30, owner="nightly@node-7 pid 4242"),
        pytest.raises(LockHeld, match="nightly@node-7 pid 4242"),
    ):
        promote(model, "1", None)
    assert champion(model) is None and events(model, "1") == []
