"""`geor retrain` against the MLflow and moto fixtures: no new data is a no-op; new data trains a
challenger from the champion that only the gate can promote; an injected worse model is
rejected and a better one promoted; a second retrain is refused by the lock naming the holder; a
killed retrain leaves exactly one champion and its lock expires."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from geor_core.registry import registry

QUICK = ("grpo.max_steps=2", "grpo.eval_steps=2", "grpo.save_steps=2", "grpo.val_rows=4")
GATE = ("eval.max_rows=12", "eval.sampled_rows=0")


def new_manifest(world_dir: Path, target: Path, rows: int) -> Path:
    """``rows`` photos of the world under new ids (absolute image paths): "new photos arrived"."""
    with open(world_dir / "manifest.csv") as source:
        reader = csv.DictReader(source)
        picked = [row for _, row in zip(range(rows), reader, strict=False)]
    with open(target, "w", newline="") as sink:
        writer = csv.DictWriter(sink, fieldnames=list(picked[0]))
        writer.writeheader()
        for row in picked:
            writer.writerow(row | {"id": f"new-{row['id']}", "image": str(world_dir / row["image"])})
    return target


def champion_of(mlflow_server: str, name: str) -> str:
    versions = registry.versions(registry.client(mlflow_server), name)
    holders = [v.version for v in versions if "champion" in v.aliases]
    assert len(holders) == 1, holders  # exactly one champion, always
    return holders[0]


def register_champion(cfg: Any, model: str, prepared: str, work: Path) -> str:
    from flows.promotion_gate import Candidate, gate_and_register

    lineage = {"training_data": f'["{prepared}"]', "prepared": prepared}
    outcome = gate_and_register(
        cfg, [Candidate("champion", model, lineage)], work_uri=str(work), default_benchmark=prepared
    )
    assert outcome.promoted
    return outcome.version


@pytest.fixture
def tracked(monkeypatch, mlflow_server) -> str:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    return f"retrain-{uuid.uuid4().hex[:8]}"


def retrain(name: str, manifest: Path, root: Path, *overrides: str) -> int:
    from flows.cli import main

    return main(
        ["retrain", "--config", "test", "--manifest", str(manifest), "--output", str(root),
         f"registry.model_name={name}", *GATE, *overrides]
    )  # fmt: skip


def test_retrain_without_new_rows_does_nothing(
    tracked, prepared_world, world_dir, tmp_path, capsys, mlflow_server
):
    first = recorded_champion(mlflow_server, tracked, prepared_world)  # never loaded: no rows to train on
    assert retrain(tracked, world_dir / "manifest.csv", tmp_path / "root") == 0
    out = capsys.readouterr().out
    assert "nothing to do" in out and '"rows_new": 0' in out
    assert [v.version for v in registry.versions(registry.client(mlflow_server), tracked)] == [first]
    assert not (tmp_path / "root" / "retrain.lock").exists()  # released


def test_new_rows_train_a_challenger_that_only_the_gate_can_promote(
    tracked, ray_cluster, sft_checkpoint, prepared_world, world_dir, tiny_model_dir, tmp_path, mlflow_server
):
    from flows.retrain_run import run_retrain
    from geor_core.config import load_config

    cfg = load_config(
        "test",
        [f"registry.model_name={tracked}", *GATE, *QUICK, f"prepare.images_root={world_dir}"],
        {"storage.root": str(tmp_path / "root")},
    )  # the new manifest names photos in world_dir: outside its own folder
    first = register_champion(cfg, sft_checkpoint.export_uri, prepared_world, tmp_path / "gate")
    manifest = new_manifest(world_dir, tmp_path / "new.csv", 120)

    trained = run_retrain(cfg, str(manifest))
    assert trained.new_rows.rows_new == 120 and trained.gate is not None
    decision = trained.gate.decision
    assert trained.gate.champion_version == first and decision.champion is not None
    better = decision.candidate["geoscore"] - decision.champion["geoscore"] > cfg.registry.margin
    assert trained.gate.promoted == (better and decision.deltas["format_rate"] >= -cfg.registry.tolerance)
    version = registry.get_version(registry.client(mlflow_server), tracked, trained.gate.version)
    assert [(e.label, e.version) for e in trained.gate.registered] == [("grpo", version.version)]
    assert (
        version.lineage["warm_start"] == f"models:/{tracked}/{first}"
        and version.lineage["candidate"] == "grpo"
    )
    assert len(json.loads(version.lineage["training_data"])) == 2  # champion's data + the new rows
    champion = champion_of(mlflow_server, tracked)

    worse = dataclass_replace(cfg, challenger=str(tiny_model_dir))
    rejected = run_retrain(worse, str(manifest))
    assert rejected.status == "kept champion" and not rejected.gate.promoted
    assert champion_of(mlflow_server, tracked) == champion  # alias unchanged


def dataclass_replace(cfg: Any, **retrain: Any) -> Any:
    import dataclasses

    return dataclasses.replace(cfg, retrain=dataclasses.replace(cfg.retrain, **retrain))


def test_a_better_model_is_promoted_through_retrain(
    tracked, ray_cluster, sft_checkpoint, prepared_world, world_dir, tiny_model_dir, tmp_path, mlflow_server
):
    from flows.retrain_run import run_retrain
    from geor_core.config import load_config

    cfg = load_config(
        "test",
        [f"registry.model_name={tracked}", *GATE, f"prepare.images_root={world_dir}"],
        {"storage.root": str(tmp_path / "root")},
    )  # the new manifest names photos in world_dir: outside its own folder
    first = register_champion(cfg, str(tiny_model_dir), prepared_world, tmp_path / "gate")  # untrained: weak
    manifest = new_manifest(world_dir, tmp_path / "new.csv", 40)
    result = run_retrain(dataclass_replace(cfg, challenger=sft_checkpoint.export_uri), str(manifest))
    assert result.status == "promoted", result.gate.decision
    assert champion_of(mlflow_server, tracked) == result.gate.version != first


def recorded_champion(mlflow_server: str, name: str, prepared: str) -> str:
    """A champion registered straight into the registry (no files, no scorecard): enough for the
    tests that never get as far as loading it (no new rows, the lock tests)."""
    client = registry.client(mlflow_server)
    experiment = client.create_experiment(f"{name}-setup")
    run = client.create_run(experiment)
    version = registry.register(
        client, name, run.info.run_id, {"geor.lineage.training_data": f'["{prepared}"]'}
    )
    registry.set_champion(client, name, version.version, "test setup")
    return version.version


def test_a_second_retrain_is_refused_naming_the_holder(
    tracked, s3_prefix, prepared_world, world_dir, tmp_path, capsys, mlflow_server
):
    from geor_core.registry.run_lock import RunLock

    recorded_champion(mlflow_server, tracked, prepared_world)
    lock = f"{s3_prefix}/retrain.lock"
    manifest = new_manifest(world_dir, tmp_path / "new.csv", 10)
    with RunLock(lock, ttl_s=30, owner="nightly@node-7 pid 4242"):
        code = retrain(tracked, manifest, tmp_path / "root", f"retrain.lock={lock}")
    err = capsys.readouterr().err
    assert code == 2 and "nightly@node-7 pid 4242" in err, err


def test_a_killed_retrain_leaves_one_champion_and_its_lock_expires(
    tracked, prepared_world, world_dir, tmp_path, mlflow_server
):
    from geor_core.registry.run_lock import RunLock

    first = recorded_champion(mlflow_server, tracked, prepared_world)
    manifest = new_manifest(world_dir, tmp_path / "new.csv", 10)
    lock = tmp_path / "root" / "retrain.lock"
    process = subprocess.Popen(
        [sys.executable, "-m", "flows", "retrain", "--config", "test", "--manifest", str(manifest),
         "--output", str(tmp_path / "root"), f"registry.model_name={tracked}", "retrain.lock_ttl_s=4"],
        env=os.environ | {"MLFLOW_TRACKING_URI": mlflow_server},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not lock.exists():
            assert process.poll() is None and time.monotonic() < deadline, "the retrain never took its lock"
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert champion_of(mlflow_server, tracked) == first
    with pytest.raises(Exception, match="pid"):
        RunLock(str(lock), ttl_s=4).__enter__()  # still fresh: refused
    time.sleep(5)
    with RunLock(str(lock), ttl_s=4):  # expired: taken over
        pass
