"""geor_core.registry.tracking and geor_core.registry.lineage against the session's real MLflow server (and moto)."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest
import yaml

from geor_core import uris
from geor_core.config import is_secret_key, load_config
from geor_core.errors import UserFacingError
from geor_core.registry import dataset_inputs, lineage, tracking
from tests.plugins.servers import free_port


@pytest.fixture
def no_tracking_env(monkeypatch):
    """No tracking or parent variables leak in from the caller's environment."""
    for name in ("MLFLOW_TRACKING_URI", "GEOR_PARENT_RUN_ID", "RANK", "GEOR_CODE_VERSION"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def cfg(mlflow_server, no_tracking_env):
    """The test preset pointed at the session's MLflow server, in an experiment of its own."""
    return load_config(
        "test", [f"tracking.uri={mlflow_server}", f"tracking.experiment=t-{uuid.uuid4().hex[:10]}"]
    )


@pytest.fixture
def client(mlflow_server):
    import mlflow

    return mlflow.MlflowClient(mlflow_server)


def runs_of(client, cfg):
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def test_no_uri_means_no_tracking(no_tracking_env):
    cfg = load_config("test")
    assert tracking.tracking_uri(cfg) == ""
    with tracking.stage_run(cfg, "prepare") as run:
        assert run is None
    with tracking.parent_run(cfg, "pipeline") as parent:
        assert parent is None
    assert tracking.tracking_env(cfg) == {}
    assert tracking.MetricLogger(None, 1).log(0, {"loss": 1.0}) is False
    assert dataset_inputs.log_dataset(".", "train", "training") is None
    assert tracking.start_system_metrics(cfg, "some-run") is None


def test_env_uri_turns_tracking_on(cfg, client, monkeypatch, mlflow_server):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    cfg.tracking.uri = ""
    with tracking.stage_run(cfg, "prepare") as run:
        assert run is not None
    assert [r.info.run_id for r in runs_of(client, cfg)] == [run.info.run_id]


@pytest.mark.parametrize("how", ["argument", "env"])
def test_rank_other_than_zero_logs_nothing(cfg, client, monkeypatch, how):
    if how == "env":
        monkeypatch.setenv("RANK", "1")
    with tracking.stage_run(cfg, "sft", rank=1 if how == "argument" else None) as run:
        assert run is None
        assert tracking.MetricLogger(run, 1).log(0, {"loss": 1.0}) is False
    assert runs_of(client, cfg) == []


def test_bad_rank_env_is_named(cfg, monkeypatch):
    monkeypatch.setenv("RANK", "zero")
    with pytest.raises(UserFacingError, match="RANK='zero'"), tracking.stage_run(cfg, "sft"):
        pass


def test_stage_run_logs_what_the_stage_reads_its_inputs_and_the_config_but_no_secrets(cfg, client, tmp_path):
    cfg.prepare.splits = {"train": 0.95, "aws_secret_access_key": 0.05}
    data = str(tmp_path / "prepared")
    uris.write_marker(data, {"rows": 10, uris.MARKER_RUN_ID: "run-that-wrote-it"})
    tags = {
        "geor.data_fingerprint": lineage.data_fingerprint(data),
        "geor.upstream.prepare": data,
        "hf_token": "hf_should_never_be_logged",
    }
    inputs = {"data": data, "model": "org/hub-model"}
    with tracking.stage_run(cfg, "prepare", tags=tags, inputs=inputs, output=str(tmp_path / "out")) as run:
        pass
    logged = client.get_run(run.info.run_id).data
    assert logged.tags["geor.stage"] == "prepare"
    assert logged.tags["geor.config_hash"] == cfg.fingerprint()
    assert logged.tags["geor.code_version"] == lineage.code_version()
    assert logged.tags["geor.data_fingerprint"] == lineage.data_fingerprint(data)
    assert logged.tags["geor.upstream.prepare"] == data
    assert "hf_token" not in logged.tags
    assert "hf_should_never_be_logged" not in logged.tags.values()
    # params: the config the stage reads, and its real inputs and output; nothing else
    assert logged.params["prepare.splits.train"] == "0.95"
    assert "grpo.beta" not in logged.params and "model.name_or_path" not in logged.params
    assert {k for k in logged.params if not k.startswith("prepare.")} == {
        "input.data", "input.data.run_id", "input.model", "output"
    }  # fmt: skip
    assert logged.params["input.data"] == data and logged.params["input.model"] == "org/hub-model"
    assert logged.params["input.data.run_id"] == "run-that-wrote-it"
    assert logged.params["output"] == str(tmp_path / "out")
    assert not [key for key in logged.params if is_secret_key(key)]
    # the full resolved config, secrets left out
    config_text = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
    config = yaml.safe_load(Path(config_text).read_text())
    assert config["grpo"]["beta"] == cfg.grpo.beta and config["prepare"]["splits"] == {"train": 0.95}
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


def test_exception_marks_the_run_failed_and_propagates(cfg, client):
    with pytest.raises(ZeroDivisionError), tracking.stage_run(cfg, "evaluate") as run:
        1 / 0  # noqa: B018
    finished = client.get_run(run.info.run_id)
    assert finished.info.status == "FAILED"
    assert finished.data.tags["geor.error"].startswith("ZeroDivisionError")
    import mlflow

    assert mlflow.active_run() is None  # the failed run was ended, not left active


def test_parent_and_child_runs(cfg, client, monkeypatch):
    with tracking.parent_run(cfg, "pipeline", tags={"geor.flow": "pipeline"}) as parent_id:
        assert tracking.tracking_env(cfg)["GEOR_PARENT_RUN_ID"] == parent_id
        with tracking.stage_run(cfg, "prepare") as prepare:
            pass
        with tracking.parent_run(cfg, "trial-0") as trial_id, tracking.stage_run(cfg, "grpo") as grpo:
            pass
    assert "GEOR_PARENT_RUN_ID" not in os.environ  # restored on exit

    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["geor.stage"] == "pipeline"
    assert parent.data.params["grpo.beta"] == str(cfg.grpo.beta)
    assert client.get_run(prepare.info.run_id).data.tags[tracking.PARENT_RUN_TAG] == parent_id
    assert client.get_run(trial_id).data.tags[tracking.PARENT_RUN_TAG] == parent_id
    assert client.get_run(grpo.info.run_id).data.tags[tracking.PARENT_RUN_TAG] == trial_id
    assert {r.info.experiment_id for r in runs_of(client, cfg)} == {parent.info.experiment_id}


def test_parent_id_from_config_and_a_missing_parent(cfg, client):
    with tracking.parent_run(cfg, "retrain") as parent_id:
        pass
    cfg.tracking.parent_run_id = parent_id
    with tracking.stage_run(cfg, "evaluate") as run:
        pass
    assert client.get_run(run.info.run_id).data.tags[tracking.PARENT_RUN_TAG] == parent_id
    cfg.tracking.parent_run_id = uuid.uuid4().hex
    with pytest.raises(UserFacingError, match=cfg.tracking.parent_run_id), tracking.stage_run(cfg, "x"):
        pass


def test_failed_flow_marks_its_parent_failed(cfg, client):
    with pytest.raises(RuntimeError), tracking.parent_run(cfg, "pipeline") as parent_id:
        raise RuntimeError("stage crashed")
    assert client.get_run(parent_id).info.status == "FAILED"


def test_ray_worker_opens_a_child_run_from_tracking_env(cfg, client, ray_cluster):
    import ray

    @ray.remote(num_cpus=0.5)
    def worker_stage(stage_cfg) -> str:
        with tracking.stage_run(stage_cfg, "reward-actor") as run:
            return run.info.run_id

    with tracking.parent_run(cfg, "pipeline") as parent_id:
        worker_cfg = load_config("test", [f"tracking.experiment={cfg.tracking.experiment}"])
        env = tracking.tracking_env(cfg)
        child_id = ray.get(worker_stage.options(runtime_env={"env_vars": env}).remote(worker_cfg))
    child = client.get_run(child_id)
    assert child.data.tags[tracking.PARENT_RUN_TAG] == parent_id
    assert child.data.tags["geor.code_version"] == lineage.code_version()


def test_unreachable_server_fails_fast_with_its_uri(no_tracking_env):
    uri = f"http://127.0.0.1:{free_port()}"
    cfg = load_config("test", [f"tracking.uri={uri}"])
    started = time.monotonic()
    with pytest.raises(UserFacingError, match=uri), tracking.stage_run(cfg, "sft"):
        pass
    assert time.monotonic() - started < 10


def test_metric_logger_logs_every_n_steps_only(cfg, client):
    with tracking.stage_run(cfg, "sft") as run:
        logger = tracking.MetricLogger(run, every_n_steps=3)
        sent = [step for step in range(10) if logger.log(step, {"loss": 1.0 / (step + 1)})]
        assert logger.log(10, {"loss": 0.01}, force=True)
        with pytest.raises(TypeError, match="'loss'"):
            logger.log(12, {"loss": "low"})
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sent == [0, 3, 6, 9]
    assert sorted(m.step for m in history) == [0, 3, 6, 9, 10]


def test_system_metrics_come_from_the_process_that_starts_them_not_the_stage_run(cfg, client, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    with tracking.stage_run(cfg, "sft") as training_run:
        time.sleep(0.6)
        assert not client.get_run(training_run.info.run_id).data.metrics  # the driver logs none
        monitor = tracking.start_system_metrics(cfg, training_run.info.run_id)  # as rank 0 does
        time.sleep(1.0)
        monitor.finish()
    logged = client.get_run(training_run.info.run_id).data
    assert any(key.startswith("system/") for key in logged.metrics)
    assert logged.tags[tracking.SYSTEM_METRICS_TAG].endswith(f"pid {os.getpid()}")
    cfg.tracking.system_metrics = False
    assert tracking.start_system_metrics(cfg, training_run.info.run_id) is None


@pytest.mark.parametrize("where", ["local", "s3"])
def test_log_dataset_records_source_fingerprint_rows_and_schema_once_complete(
    cfg, client, tmp_path, request, where
):
    import json

    import pyarrow as pa

    data = str(tmp_path / "prepared") if where == "local" else request.getfixturevalue("s3_prefix")
    uris.write_atomic(uris.join(data, "data", "part-0.parquet"), b"rows")
    schema = pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("lat", pa.float64())])
    with tracking.stage_run(cfg, "sft") as run:
        with pytest.raises(ValueError, match="complete"):  # no marker yet: its digest is not final
            dataset_inputs.log_dataset(data, "train", "training", schema)
        uris.write_marker(data, {"stats": {"rows_out": 7, "splits": {"train": 5, "test": 2}}})
        fingerprint = dataset_inputs.log_dataset(data, "train", "training", schema)
    inputs = client.get_run(run.info.run_id).inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("train", fingerprint)]
    assert fingerprint == lineage.data_fingerprint(data)
    assert data.removeprefix("file://") in inputs[0].dataset.source
    assert inputs[0].tags[0].value == "training"
    assert json.loads(inputs[0].dataset.profile) == {"num_rows": 7, "splits": {"train": 5, "test": 2}}
    columns = json.loads(inputs[0].dataset.schema)["mlflow_colspec"]
    assert [(c["name"], c["type"], c["required"]) for c in columns] == [
        ("id", "string", True),
        ("lat", "double", False),
    ]


def test_data_fingerprint_follows_the_marker_else_the_listing(tmp_path):
    data = str(tmp_path / "ds")
    uris.write_atomic(uris.join(data, "a.parquet"), b"12345")
    first = lineage.data_fingerprint(data)
    assert lineage.data_fingerprint(data) == first  # stable
    uris.write_atomic(uris.join(data, "a.parquet"), b"123456")
    assert lineage.data_fingerprint(data) != first  # a size changed
    uris.write_marker(data, {"rows": 3})
    with_marker = lineage.data_fingerprint(data)
    uris.write_atomic(uris.join(data, "b.parquet"), b"new")
    assert lineage.data_fingerprint(data) == with_marker  # the marker, not the listing, decides
    uris.write_marker(data, {"rows": 4})
    assert lineage.data_fingerprint(data) != with_marker
    with pytest.raises(FileNotFoundError, match="nothing"):
        lineage.data_fingerprint(str(tmp_path / "nothing"))


def test_data_fingerprint_is_the_same_on_s3_and_locally(tmp_path, s3_prefix):
    for base in (str(tmp_path / "ds"), s3_prefix):
        uris.write_atomic(uris.join(base, "x", "a.parquet"), b"12345")
    assert lineage.data_fingerprint(str(tmp_path / "ds")) == lineage.data_fingerprint(s3_prefix)


def test_code_version_env_override_and_source_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("GEOR_CODE_VERSION", "abc123")
    assert lineage.code_version() == "abc123"
    package = tmp_path / "geor_core"
    package.mkdir()
    (package / "x.py").write_text("A = 1\n")
    before = lineage.source_hash(tmp_path)
    (package / "x.py").write_text("A = 2\n")
    after = lineage.source_hash(tmp_path)
    assert after != before
    (tmp_path / "unrelated.py").write_text("B = 1\n")  # outside the project's packages
    assert lineage.source_hash(tmp_path) == after


def test_every_run_name_with_declared_reads_logs_just_those(no_tracking_env):
    from geor_core.config.logged_params import STAGE_READS, stage_params

    cfg = load_config("test")
    for stage, reads in STAGE_READS.items():
        params = stage_params(cfg, stage)
        assert params and all(key.startswith(tuple(reads.values())) for key in params), stage
    assert stage_params(cfg, "pipeline").keys() >= {"grpo.beta", "prepare.seed", "tracking.experiment"}
    assert stage_params(cfg, "mine-hard")["grpo.hard_radius_km"] == cfg.grpo.hard_radius_km
