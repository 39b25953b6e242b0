"""`geor sweep` on Ray Tune with the test preset on the synthetic world, every trial a short GRPO run
from the session's shared SFT checkpoint.

One 4-trial sweep (a 2 x 2 grid, 2 trials at a time, ASHA, MLflow on) is run once for the module
and read by several tests: two trials at a time, ASHA stopping the arms that are obviously bad
(learning rate 1.0 wrecks the policy in one step: its first validation scores nothing), the best
config running `geor grpo` unchanged, the other trials' checkpoints deleted, and the parent/child
runs in MLflow. A second, 2-trial sweep is interrupted with SIGINT (a real Ctrl-C on a `geor
sweep` process) and re-run: its failing trial (a combination the schema rejects) is reported and
not repeated, the unfinished one runs again, and the sweep completes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows import cli
from flows.commands import grpo_command as grpo_command
from flows.commands import sweep_command as sweep_command
from geor_core import uris
from geor_core.config import load_config
from geor_core.errors import UserFacingError
from tests.plugins.models import run_command

ROOT = Path(__file__).resolve().parents[1]
SHORT_TRIALS = [  # 3 GRPO steps of 4 prompts x G = 2, validated (4 val rows) and reported every step
    "grpo.max_steps=3",
    "grpo.eval_steps=1",
    "grpo.save_steps=1",
    "grpo.logging_steps=1",
    "grpo.val_rows=4",
    "grpo.per_device_batch_size=4",
    "grpo.num_generations=2",
    "grpo.max_completion_length=96",
    "grpo.max_failures=0",
    # 2 trials on 2 CPUs: 0.05 (the trial's driver) + 0.5 (its Train worker) + 0.2 (its reward actor) each
    "grpo.cpus_per_worker=0.5",
    "grpo.reward_actor_cpus=0.2",
    "sweep.search=grid",
    "sweep.num_samples=1",
]
GOOD_LR, BAD_LR = 1e-5, 1.0


def sweep_argv(data: str, model: str, output: Path | str, space: Path, *overrides: str) -> list[str]:
    options = ["--config", "test", "--data", data, "--model", model, "--output", str(output)]
    return [*options, "--space", str(space), *SHORT_TRIALS, *overrides]


def write_space(path: Path, space: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def last_json(text: str) -> dict[str, Any]:
    return json.loads(next(line for line in reversed(text.splitlines()) if line.startswith("{")))


def run_sweep_command(argv: list[str]) -> tuple[int, str]:
    """`geor sweep` in this process (on the session's Ray cluster); returns (exit code, stdout)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = run_command(sweep_command, argv)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def finished_sweep(prepared_world, sft_checkpoint, mlflow_server, tmp_path_factory) -> dict[str, Any]:
    """The 4-trial sweep: beta in {0, 0.04} x learning rate in {1e-5, 1.0}, ASHA with grace 1."""
    root = tmp_path_factory.mktemp("sweep")
    space = write_space(
        root / "space.yaml", {"grpo.beta": [0.0, 0.04], "grpo.learning_rate": [GOOD_LR, BAD_LR]}
    )
    output = root / "out"
    argv = sweep_argv(
        prepared_world,
        sft_checkpoint.export_uri,
        output,
        space,
        "sweep.max_concurrent=2",
        "sweep.scheduler=asha",
        "sweep.grace_period=1",
        f"tracking.uri={mlflow_server}",
    )
    code, stdout = run_sweep_command(argv)
    result = json.loads((output / "sweep_result.json").read_text())
    return {
        "code": code,
        "stdout": stdout,
        "line": last_json(stdout),
        "trials": {t["trial_id"]: t for t in result["trials"]},
        "output": output,
    }


def test_four_trials_run_two_at_a_time_and_asha_stops_the_bad_arms(finished_sweep):
    assert finished_sweep["code"] == 0, finished_sweep["stdout"][-3000:]
    trials = list(finished_sweep["trials"].values())
    grid = {(t["params"]["grpo.beta"], t["params"]["grpo.learning_rate"]) for t in trials}
    assert grid == {(0.0, GOOD_LR), (0.04, GOOD_LR), (0.0, BAD_LR), (0.04, BAD_LR)}
    good = [t for t in trials if t["params"]["grpo.learning_rate"] == GOOD_LR]
    bad = [t for t in trials if t["params"]["grpo.learning_rate"] == BAD_LR]

    # The grid's first two trials (the good learning rate) ran side by side; the last two waited
    # for a free slot: never more than sweep.max_concurrent = 2 at once.
    assert all(t["started_at"] < other["ended_at"] for t in good for other in good)
    assert all(t["started_at"] >= min(g["ended_at"] for g in good) for t in bad)

    # Good arms validated every step to the end (they differ only in beta, which at lr 1e-5 moves
    # no greedy token in 3 steps: their validations tie, and ASHA stops no tie). The bad arms,
    # compared at ASHA's first rung with the good arms already recorded there, were stopped after
    # their first validation (their GRPO never finished).
    for t in good:
        assert (t["status"], t["validations"], t["step"]) == ("finished", 3, 3)
        assert t["value"] > 1000.0  # mean GeoScore of the greedy val completions (0..5000)
    for t in bad:
        assert (t["status"], t["validations"], t["step"]) == ("stopped", 1, 1), t
        assert t["value"] < min(g["value"] for g in good)
        record = json.loads((Path(t["output"]) / "trial.json").read_text())
        assert record["status"] != "finished" and t["error"] is None

    line = finished_sweep["line"]
    assert (line["trials"], line["finished"], line["stopped"], line["failed"]) == (4, 2, 2, 0)
    assert line["metric"] == "val_geoscore" and line["best_trial"] in {t["trial_id"] for t in good}
    assert line["value"] == max(t["value"] for t in good)
    table = finished_sweep["stdout"]
    assert "val_geoscore" in table and "stopped" in table and f"{line['best_trial']} *" in table


def test_the_best_config_runs_geor_grpo_unchanged_and_other_checkpoints_are_gone(
    finished_sweep, prepared_world, sft_checkpoint, capsys
):
    best = finished_sweep["trials"][finished_sweep["line"]["best_trial"]]
    path = finished_sweep["output"] / "best_config.yaml"
    assert finished_sweep["line"]["best_config"] == str(path)

    cfg = load_config(str(path))
    assert (cfg.grpo.beta, cfg.grpo.learning_rate) == (best["params"]["grpo.beta"], GOOD_LR)
    assert (cfg.grpo.max_steps, cfg.grpo.num_generations) == (3, 2)  # the sweep's own settings
    assert cfg.grpo.output == best["output"] and cfg.tracking.parent_run_id == ""
    assert cfg.data.dataset == prepared_world and cfg.model.name_or_path == sft_checkpoint.export_uri

    capsys.readouterr()
    assert run_command(grpo_command, ["--config", str(path)]) == 0
    ran = last_json(capsys.readouterr().out)
    assert ran["export"] == uris.join(best["output"], "model") and ran["global_step"] == 3
    assert ran["skipped"] is True  # the best trial's model is there, complete

    for trial in finished_sweep["trials"].values():
        kept = trial["trial_id"] == best["trial_id"]
        for part in ("ray", "model"):
            assert (Path(trial["output"]) / part).exists() == kept, (trial["trial_id"], part)


def test_mlflow_has_the_sweep_with_a_child_run_per_trial(finished_sweep, mlflow_server):
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("geo-r").experiment_id
    output = str(finished_sweep["output"])
    (parent,) = client.search_runs([experiment], f"tags.`geor.sweep.output` = '{output}'")
    assert parent.info.run_name == "sweep" and parent.info.status == "FINISHED"
    best_id = finished_sweep["line"]["best_trial"]
    assert parent.data.tags["geor.sweep.best_trial"] == best_id
    assert parent.data.metrics["best/val_geoscore"] == finished_sweep["line"]["value"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"best_config.yaml", "space.yaml", "trials.txt", "sweep_result.json"} <= artifacts
    logged = Path(client.download_artifacts(parent.info.run_id, "best_config.yaml")).read_text()
    assert logged == (finished_sweep["output"] / "best_config.yaml").read_text()

    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_trial = {run.data.tags["geor.sweep.trial_id"]: run for run in children}
    assert set(by_trial) == set(finished_sweep["trials"]) and len(children) == 4
    for trial_id, trial in finished_sweep["trials"].items():
        run = by_trial[trial_id]
        assert run.info.run_name == f"trial-{trial_id}"
        assert float(run.data.params["grpo.learning_rate"]) == trial["params"]["grpo.learning_rate"]
        curve = client.get_metric_history(run.info.run_id, "val_geoscore")
        assert [m.step for m in sorted(curve, key=lambda m: m.step)] == list(
            range(1, trial["validations"] + 1)
        )
        assert run.info.status == ("FINISHED" if trial["status"] == "finished" else "KILLED")
        assert run.data.tags["geor.sweep.status"] == trial["status"]
        (stage,) = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
        assert stage.info.run_name == "grpo" and "rewards/geoscore/mean" in stage.data.metrics
        assert stage.info.status == run.info.status  # a killed trial's GRPO run is closed too
        assert not client.get_run(stage.info.run_id).outputs.model_outputs  # exploration: no model logged


def test_an_interrupted_sweep_on_s3_resumes_and_reports_its_failing_trial(
    prepared_world, sft_checkpoint, ray_cluster, mlflow_server, s3_prefix, tmp_path
):
    """Grid: per_device_batch_size 2 with G = 4 (each value valid alone; together the schema rejects
    them: the trial fails at once), then batch 4 (a real trial). One trial at a time, everything
    written to S3 (moto). The first `geor sweep` process gets SIGINT as soon as the second trial
    starts; the re-run resumes."""
    space = write_space(
        tmp_path / "space.yaml", {"grpo.per_device_batch_size": [2, 4], "grpo.num_generations": 4}
    )
    output = s3_prefix
    argv = sweep_argv(
        prepared_world,
        sft_checkpoint.export_uri,
        output,
        space,
        "sweep.max_concurrent=1",
        "sweep.scheduler=fifo",
        "grpo.max_steps=2",
        f"tracking.uri={mlflow_server}",
    )
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address_info["address"]}  # AWS_* point at moto
    env.pop("MLFLOW_TRACKING_URI", None)
    log = tmp_path / "first.log"
    with log.open("wb") as sink:
        first = subprocess.Popen(  # -X faulthandler: SIGABRT writes every thread's stack to the log
            [sys.executable, "-X", "faulthandler", "-m", "flows", "sweep", *argv],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 240
            while len(uris.glob(f"{output}/trials/*/trial.json")) < 2 and first.poll() is None:
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.5)
            first.send_signal(signal.SIGINT)
            code = first.wait(timeout=180)
        except subprocess.TimeoutExpired:
            first.send_signal(signal.SIGABRT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                first.wait(timeout=30)
            pytest.fail(f"`geor sweep` still ran 180 s after SIGINT; its stacks:\n{log.read_text()[-8000:]}")
        finally:  # never leave a sweep running trials on the shared cluster
            if first.poll() is None:
                first.kill()
                first.wait()
    assert code == sweep_command.INTERRUPTED_EXIT, log.read_text()[-3000:]
    interrupted = last_json(log.read_text())
    assert interrupted["interrupted"] is True and (interrupted["failed"], interrupted["unfinished"]) == (1, 1)
    parent_id = json.loads(uris.read_text(f"{output}/sweep.json"))["parent_run_id"]

    code, stdout = run_sweep_command(argv)
    assert code == 0, stdout[-3000:]
    line = last_json(stdout)
    assert line["resumed"] is True and (line["trials"], line["finished"], line["failed"]) == (2, 1, 1)
    trials = json.loads(uris.read_text(f"{output}/sweep_result.json"))["trials"]
    failed = next(t for t in trials if t["status"] == "failed")
    finished = next(t for t in trials if t["status"] == "finished")
    assert failed["params"]["grpo.per_device_batch_size"] == 2
    assert "ConfigError" in failed["error"] and "must divide the global batch" in failed["error"]
    assert "must divide the global batch" in stdout  # the table shows the error
    assert failed["attempts"] == 1, "a failed trial must not run again on resume"
    assert finished["attempts"] == 2 and finished["validations"] == 2
    assert line["best_trial"] == finished["trial_id"]
    assert line["best_config"] == f"{output}/best_config.yaml"
    assert load_config_text(uris.read_text(line["best_config"]), tmp_path).grpo.output == finished["output"]
    assert uris.is_complete(f"{finished['output']}/model")

    from mlflow import MlflowClient

    assert json.loads(uris.read_text(f"{output}/sweep.json"))["parent_run_id"] == parent_id
    assert MlflowClient(mlflow_server).get_run(parent_id).info.status == "FINISHED"  # reopened, then closed

    with pytest.raises(UserFacingError, match=r"started with other settings \(grpo.beta differ\)"):
        run_sweep_command([*argv, "grpo.beta=0.02"])


def load_config_text(text: str, folder: Path) -> Any:
    path = folder / "config.yaml"
    path.write_text(text)
    return load_config(str(path))


def test_bad_sweeps_fail_before_any_trial(prepared_world, sft_checkpoint, ray_cluster, tmp_path, capsys):
    space = write_space(tmp_path / "space.yaml", {"grpo.beta": [0.0, 0.04]})
    argv = sweep_argv(prepared_world, sft_checkpoint.export_uri, tmp_path / "out", space)
    with pytest.raises(
        UserFacingError, match=r"sweep.max_concurrent=3 trials x 0.75 CPUs .* set sweep.max_concurrent=2"
    ):
        run_sweep_command([*argv, "sweep.max_concurrent=3"])
    with pytest.raises(UserFacingError, match=r"one trial needs 2.15 CPUs .* the cluster has 2"):
        run_sweep_command([*argv, "grpo.cpus_per_worker=1.9"])  # the worker fits; its reward actor does not

    write_space(tmp_path / "typo.yaml", {"grpo.betta": [0.0]})
    assert (
        cli.main(
            [
                "sweep",
                *sweep_argv(
                    prepared_world, sft_checkpoint.export_uri, tmp_path / "o", tmp_path / "typo.yaml"
                ),
            ]
        )
        == 2
    )
    assert "unknown key 'grpo.betta'; did you mean 'grpo.beta'?" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()


def test_the_best_trial_is_a_finished_one_in_the_objectives_direction():
    from tasks.sweep import TrialSummary, best_trial

    def trial(trial_id: str, status: str, value: float | None) -> TrialSummary:
        return TrialSummary(trial_id, {}, status, value, 1, 1, None, "", 1, None, None, None)

    trials = [
        trial("a", "finished", 10.0),
        trial("b", "stopped", 50.0),  # better, but stopped early: its model was never finished
        trial("c", "finished", 20.0),
        trial("d", "failed", None),
        trial("e", "finished", float("nan")),
    ]
    assert best_trial(trials, "max").trial_id == "c"
    assert best_trial(trials, "min").trial_id == "a"
    assert best_trial([trial("b", "stopped", 50.0), trial("x", "stopped", 60.0)], "max").trial_id == "x"
    assert best_trial([trial("d", "failed", None)], "max") is None


def test_asha_rungs_stop_short_of_a_trials_last_validation():
    from geor_core.config import ConfigError
    from geor_core.training.sweep_space import parse_space
    from tasks.sweep import asha_max_t

    space = parse_space({"grpo.beta": [0.0, 0.04]}, "s.yaml")
    assert (
        asha_max_t(load_config("test", ["grpo.max_steps=3", "grpo.eval_steps=1", "grpo.save_steps=1"]), space)
        == 2
    )
    assert (
        asha_max_t(
            load_config("test", ["grpo.max_steps=10", "grpo.eval_steps=2", "grpo.save_steps=4"]), space
        )
        == 2
    )
    longest = parse_space({"grpo.max_steps": [6, 20]}, "s.yaml")
    assert asha_max_t(load_config("test", ["grpo.eval_steps=2", "grpo.save_steps=2"]), longest) == 9
    with pytest.raises(ConfigError, match=r"sweep.grace_period: got 4, but a trial validates only 2 times"):
        asha_max_t(load_config("test", ["grpo.max_steps=6", "sweep.grace_period=4"]), space)
