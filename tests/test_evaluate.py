"""`geor evaluate`: model labels, resumable shards and one-line CLI errors, and on the shared Ray
cluster: every row scored, metrics equal to `geor score`, a two-model comparison with the
untrained (garbage) model fully reported, MLflow runs, and a killed run resuming shard by shard.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.cli import main
from flows.commands import evaluate_command as evaluate_command
from geor_core import uris
from geor_core.config import load_config
from geor_core.data import shards
from geor_core.data.dataset import read_prepared
from geor_core.scoring.scoring import read_table, score_files
from tests.plugins.models import run_command
from tests.test_evaluation_report import FILE_KEYS, assert_png, close, score_predictions

FAST = ["eval.max_new_tokens=96", "eval.batch_size=8", "eval.rows_per_shard=8"]


def test_model_labels_are_unique_and_can_be_named():
    from tasks.evaluate import model_labels

    pairs = model_labels(["runs/a/model", "runs/b/model/", "sft=runs/c", "models:/geo@champion", "s3://b/x"])
    assert pairs == [
        ("model", "runs/a/model"),
        ("model-2", "runs/b/model/"),
        ("sft", "runs/c"),
        ("geo-champion", "models:/geo@champion"),
        ("x", "s3://b/x"),
    ]


def test_shards_resume_only_with_the_same_fingerprint_and_ids(tmp_path):
    directory = str(tmp_path / "p")
    plan = shards.plan_shards([f"id{i}" for i in range(10)], 4)
    assert [(s.start, s.stop) for s in plan] == [(0, 4), (4, 8), (8, 10)]
    column = pa.chunked_array([[f"id{i}" for i in range(3)], [f"id{i}" for i in range(3, 10)]])
    assert shards.plan_shards(column, 4) == plan  # an Arrow column: the same shards and digests
    table = pa.table({"id": [f"id{i}" for i in range(4)]})
    shards.write_shard(directory, plan[0], table, "fp1")
    assert 0 in shards.scan(directory, plan, "fp1")[0]
    assert 0 not in shards.scan(directory, plan, "fp2")[0]
    moved = shards.plan_shards([f"other{i}" for i in range(4)], 4)[0]
    assert shards.scan(directory, [moved], "fp1")[0] == set()
    with pytest.raises(ValueError, match="covers 4 input rows but 3"):
        shards.write_shard(directory, plan[1], table.slice(0, 3), "fp1")
    shards.write_shard(directory, plan[2], table.slice(0, 2), "fp1")
    # every finished shard, and every marked one
    assert shards.scan(directory, plan, "fp1") == ({0, 2}, {0, 2})
    assert shards.scan(directory, plan, "fp2") == (set(), {0, 2})
    assert shards.scan(str(tmp_path / "none"), plan, "fp1") == (set(), set())
    os.remove(shards.shard_uri(directory, 2))  # a marker whose file is gone: not done, still marked
    assert shards.scan(directory, plan, "fp1") == ({0}, {0, 2})
    shards.write_shard(directory, plan[2], table.slice(0, 2), "fp1")
    assert shards.remove_beyond(directory, 2) and not uris.exists(shards.shard_uri(directory, 2))
    assert 0 in shards.scan(directory, plan, "fp1")[0]


def test_cli_errors_are_one_line(capsys, tmp_path):
    code = main(
        ["evaluate", "--data", str(tmp_path), "--model", str(tmp_path), "--output", str(tmp_path / "o")]
    )
    assert code == 2
    assert "has no config.json" in capsys.readouterr().err


# --- on the shared Ray cluster ------------------------------------------------------------------


def _evaluate(argv: list[str], capsys) -> dict:
    return _evaluate_printing(argv, capsys)[0]


def _evaluate_printing(argv: list[str], capsys) -> tuple[dict, str]:
    """Run `geor evaluate argv`: (the JSON summary line, everything printed before it)."""
    assert run_command(evaluate_command, argv) == 0
    *table, summary = capsys.readouterr().out.strip().splitlines()
    return json.loads(summary), "\n".join(table)


def test_two_models_each_fully_reported_and_equal_to_geor_score(
    ray_cluster, prepared_world, tiny_model_dir, sft_checkpoint, mlflow_server, tmp_path, capsys, monkeypatch
):
    import tasks.evaluate

    pools = []  # every run_inference call: one pool per call
    real_run_inference = tasks.evaluate.run_inference
    monkeypatch.setattr(
        tasks.evaluate,
        "run_inference",
        lambda cfg, jobs, **kw: pools.append(jobs) or real_run_inference(cfg, jobs, **kw),
    )
    output = tmp_path / "eval"
    overrides = [
        *FAST,
        "eval.splits=[val,test]",
        "eval.max_rows=12",
        "eval.num_actors=2",
        "eval.report_in_driver_rows=0",  # the report in Ray Data, as above 20,000 rows
        f"tracking.uri={mlflow_server}",
    ]

    def forbidden(*args, **kwargs):
        raise AssertionError("the driver read a predictions table: the report is computed in Ray Data")

    with monkeypatch.context() as driver:  # Ray Data's workers are other processes
        driver.setattr(pd, "read_parquet", forbidden)
        driver.setattr(pq, "read_table", forbidden)
        summary, printed = _evaluate_printing(
            ["--data", prepared_world, "--model", f"untrained={tiny_model_dir}", "--model", sft_checkpoint.export_uri,
             "--output", str(output), "--config", "test", *overrides],
            capsys,
        )  # fmt: skip
    expected_ids = [
        *read_prepared(prepared_world, "val", ["id"]).column(0).to_pylist()[:12],
        *read_prepared(prepared_world, "test", ["id"]).column(0).to_pylist()[:12],
    ]
    assert list(summary["models"]) == ["untrained", "model"]
    # ONE pool served both models' greedy rows and sampled draws, model after model
    (jobs,) = pools
    assert [(job.source, job.decoding.samples) for job in jobs] == [
        (str(tiny_model_dir), 1), (str(tiny_model_dir), 4), (sft_checkpoint.export_uri, 1), (sft_checkpoint.export_uri, 4)
    ]  # fmt: skip
    reports = {}
    for label in ("untrained", "model"):
        directory = output / "models" / label
        predictions = read_table(str(directory / "predictions"))
        assert predictions["id"].tolist() == expected_ids  # rows in = rows scored, in order
        report = json.loads((directory / "metrics.json").read_text())
        reports[label] = report
        assert report["metrics"]["n"] == 24 and sum(report["splits"][s]["n"] for s in ("val", "test")) == 24
        same = score_files(
            str(directory / "predictions"),
            str(directory / "predictions"),
            text_col="completion",
            lat_col="truth_lat",
            lon_col="truth_lon",
        )
        assert same["n_malformed_rows"] == {"predictions": 0, "truth": 0}
        # computed in Ray Data, merged over the shards: equal to `geor score` (sums to 1e-12)
        assert close(report["metrics"], {k: v for k, v in same.items() if k not in FILE_KEYS})
        val_rows = predictions[predictions["split"] == "val"]
        assert close(report["splits"]["val"], score_predictions(val_rows))
        # the test preset keeps the world's group column: its photos are all clean
        assert set(predictions["group"]) == {"clean"} and report["groups"]["clean"]["n"] == 24
        for name in ("error_cdf.png", "world_map.png", "per_country.png"):
            assert_png((directory / "plots" / name).read_bytes())
        assert len(pd.read_csv(directory / "worst.csv")) == min(24, load_config("test").eval.worst_n)
        assert (directory / "per_country.md").read_text().startswith("| country_code |")

    garbage = reports["untrained"]["metrics"]
    assert garbage["n_missing"] == 24 and garbage["format_rate"] == 0.0 and garbage["acc_2500km"] == 0.0
    assert sum(garbage["missing_reasons"].values()) == 24
    trained = reports["model"]["metrics"]
    assert trained["format_rate"] >= 90.0 and trained["acc_750km"] >= 50.0
    assert_png((output / "error_cdf.png").read_bytes())
    comparison = json.loads((output / "comparison.json").read_text())
    assert [row["model"] for row in comparison["rows"]] == ["untrained", "model"]
    assert comparison["benchmark"] is None
    # the sampled reward (the test preset: eval.sampled_rows 32 > the 24 rows evaluated: all of them)
    sampled = {label: reports[label]["sampled"] for label in ("untrained", "model")}
    assert all(s["rows"] == 24 and s["samples_per_row"] == 4 for s in sampled.values())
    reward = {row["model"]: row["sampled_reward"] for row in comparison["rows"]}
    assert reward == {label: s["combined"] for label, s in sampled.items()}
    assert reward["model"] >= reward["untrained"] + 0.3 and sampled["untrained"]["parse_failed"] >= 0.9
    # and each group's mean greedy reward, after it (the test world's rows are all clean)
    assert all(
        row["reward_clean"] == reports[row["model"]]["groups"]["clean"]["reward"]
        for row in comparison["rows"]
    )
    header = next(line for line in printed.splitlines() if line.startswith("| model |"))
    assert header.rstrip(" |").endswith("sampled_reward | reward_clean")  # `geor evaluate` prints them
    assert uris.read_marker(str(output))["models"]["model"]["source"] == sft_checkpoint.export_uri

    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("geo-r").experiment_id
    (parent,) = client.search_runs([experiment], f"tags.`geor.output` = '{output}'")
    assert parent.data.metrics["model/acc_750km"] == trained["acc_750km"]
    assert parent.data.metrics["model/sampled_reward"] == pytest.approx(reward["model"])
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    child = {run.data.tags["geor.model_label"]: run for run in children}
    assert set(child) == {"untrained", "model"}
    sft_run = child["model"]
    assert sft_run.data.tags["geor.predictions_uri"] == str(output / "models" / "model" / "predictions")
    assert (
        sft_run.data.metrics["acc_200km"] == trained["acc_200km"] and "val/acc_200km" in sft_run.data.metrics
    )
    assert sft_run.data.metrics["group/clean/acc_200km"] == trained["acc_200km"]  # one group: all rows
    assert sft_run.data.metrics["group/clean/reward"] == pytest.approx(
        reports["model"]["groups"]["clean"]["reward"]
    )
    assert sft_run.data.metrics["sampled_reward"] == pytest.approx(reward["model"])
    assert sft_run.data.metrics["sampled/format"] == pytest.approx(sampled["model"]["format"])
    artifacts = {a.path for a in client.list_artifacts(sft_run.info.run_id)}
    assert {"per_country.json", "worst.json", "metrics.json", "plots"} <= artifacts
    plot_files = {a.path for a in client.list_artifacts(sft_run.info.run_id, "plots")}
    assert "plots/world_map.png" in plot_files


def test_killed_evaluate_resumes_without_redoing_finished_shards(
    ray_cluster, prepared_world, sft_checkpoint, tmp_path, capsys
):
    output = tmp_path / "eval"
    argv = ["--data", prepared_world, "--model", sft_checkpoint.export_uri, "--output", str(output),
            "--config", "test", *FAST, "eval.max_rows=24"]  # fmt: skip
    first = _evaluate(argv, capsys)["models"]["model"]
    assert first["shards_computed"] == 3 and first["shards_skipped"] == 0
    predictions = output / "models" / "model" / "predictions"
    before = pd.read_parquet(predictions / "part-00001.parquet")
    # The state a crash leaves: shard 1 written but not marked, shard 2 never written.
    (predictions / "_markers" / "part-00001.json").unlink()
    (predictions / "part-00002.parquet").unlink()
    (predictions / "_markers" / "part-00002.json").unlink()
    (output / "_SUCCESS.json").unlink()
    finished = os.stat(predictions / "part-00000.parquet").st_mtime_ns
    sampled_file = output / "models" / "model" / "sampled_reward.json"
    sampled_at = os.stat(sampled_file).st_mtime_ns

    from tasks.evaluate import run_evaluate

    cfg = load_config("test", [*FAST, "eval.max_rows=24"])
    result = run_evaluate(cfg, prepared_world, [sft_checkpoint.export_uri], str(output))
    (evaluation,) = result.models
    assert sorted(evaluation.inference.shards_computed) == [1, 2] and evaluation.inference.shards_skipped == 1
    assert os.stat(predictions / "part-00000.parquet").st_mtime_ns == finished
    assert evaluation.report.metrics["n"] == 24 and uris.is_complete(str(output))
    again = pd.read_parquet(predictions / "part-00001.parquet")
    assert again["completion"].tolist() == before["completion"].tolist()  # greedy: the same answers
    assert os.stat(sampled_file).st_mtime_ns == sampled_at  # same model, rows and settings: reused
    assert evaluation.sampled["rows"] == 24

    bigger = run_evaluate(
        load_config("test", [*FAST, "eval.max_rows=0"]),
        prepared_world,
        [sft_checkpoint.export_uri],
        str(output),
    )
    n_test = read_prepared(prepared_world, "test", ["id"]).num_rows
    assert bigger.models[0].report.metrics["n"] == n_test
    assert bigger.models[0].inference.shards_skipped == 3  # only the rows beyond 24 were generated
    assert bigger.models[0].sampled["rows"] == min(32, n_test)  # more rows than 24 now: measured again
    assert len(read_table(str(predictions))) == n_test


def test_evaluate_needs_models_and_known_splits(prepared_world, tiny_model_dir, tmp_path):
    from geor_core.errors import UserFacingError
    from tasks.evaluate import run_evaluate

    with pytest.raises(UserFacingError, match="no rows in it"):
        run_evaluate(
            load_config("test", ["eval.splits=[holdout]"]),
            prepared_world,
            [str(tiny_model_dir)],
            str(tmp_path),
        )
    with pytest.raises(UserFacingError, match="no model given"):
        run_evaluate(load_config("test"), prepared_world, [], str(tmp_path))
    assert not Path(tmp_path / "_SUCCESS.json").exists()
