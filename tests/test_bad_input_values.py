"""Values that used to go silently wrong or crash: malformed score inputs, non-finite config
numbers, YAML alias bombs, file-store tracking URIs, corrupt run-lock records, and credentials
in URIs reaching logs. Each ends in a clear message (or a counted reject), never a traceback."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

from flows.cli import main
from geor_core import uris
from geor_core.config import ConfigError, flat_params, load_config
from geor_core.errors import UserFacingError
from geor_core.registry import tracking
from geor_core.registry.run_lock import LockHeld, RunLock
from geor_core.scoring.scoring import read_table
from tests.plugins.servers import free_port

TRUTH = "id,lat,lon\na,10.0,20.0\nb,30.0,40.0\nc,50.0,60.0\n"


def score(capsys, *argv: object) -> tuple[int, str, str]:
    code = main(["score", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


# --- geor score ---------------------------------------------------------------------------


def test_csv_lines_with_extra_or_missing_fields_are_counted_rejects_not_shifted_columns(capsys, tmp_path):
    (tmp_path / "truth.csv").write_text(TRUTH)
    # The first data line has one field too many (pandas used to make the ids an index and shift
    # every column left, so every row scored 0 with exit code 0); the last has one too few.
    (tmp_path / "pred.csv").write_text("id,lat,lon\na,10.0,20.0,oops\nb,30.0,40.0\n\nc,50.0\n")
    code, out, err = score(capsys, "--predictions", tmp_path / "pred.csv", "--truth", tmp_path / "truth.csv")
    assert code == 3 and "Traceback" not in err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["n_malformed_rows"] == {"predictions": 2, "truth": 0}
    assert [(row["table"], row["line"], row["reason"]) for row in result["malformed_rows"]] == [
        ("predictions", 2, "extra_fields"),
        ("predictions", 5, "missing_fields"),
    ]
    assert result["n_prediction_rows"] == 1 and result["acc_1km"] == pytest.approx(100 / 3)  # b is exact
    assert result["missing_reasons"] == {"no_prediction_row": 2}
    assert "n_malformed_rows" in out and "2 malformed CSV rows" in err and "line 2" in err


def test_read_table_without_a_reject_list_refuses_a_malformed_line(tmp_path):
    (tmp_path / "t.csv").write_text("id,lat,lon\na,1,2,3\n")
    with pytest.raises(UserFacingError, match=r"line 2: 4 fields where the header has 3"):
        read_table(str(tmp_path / "t.csv"))


def test_float_ids_in_parquet_are_an_error_naming_the_column_type(capsys, tmp_path):
    (tmp_path / "truth.csv").write_text(TRUTH.replace("a,", "1,").replace("b,", "2,").replace("c,", "3,"))
    pd.DataFrame({"id": [1.0, 2.0, None], "lat": [10.0, 30.0, 50.0], "lon": [20.0, 40.0, 60.0]}).to_parquet(
        tmp_path / "pred.parquet"
    )
    code, _, err = score(
        capsys, "--predictions", tmp_path / "pred.parquet", "--truth", tmp_path / "truth.csv"
    )
    assert code == 2
    assert "predictions table's 'id' column holds floating-point numbers (type float64" in err


def test_json_output_naming_a_directory_is_a_clear_error(capsys, tmp_path):
    (tmp_path / "truth.csv").write_text(TRUTH)
    (tmp_path / "out").mkdir()
    code, out, err = score(
        capsys,
        "--predictions",
        tmp_path / "truth.csv",
        "--truth",
        tmp_path / "truth.csv",
        "--json",
        tmp_path / "out",
    )
    assert code == 2 and "is a directory" in err and "score.json" in err and out == ""


# --- config ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("grpo.top_p=nan", "grpo.top_p"),
        ("sft.learning_rate=.inf", "sft.learning_rate"),
        ("grpo.beta=-.inf", "grpo.beta"),
        ("eval.temperature=1e400", "eval.temperature"),
        ("prepare.splits={train: .5, test: .nan}", "prepare.splits.test"),
        ("prepare.splits={train: .nan, test: .nan}", "prepare.splits.train"),
    ],
)
def test_non_finite_numbers_are_refused_by_key(override: str, key: str):
    with pytest.raises(ConfigError, match=rf"^{key}: got .*finite"):
        load_config("test", [override])


def _alias_bomb(levels: int = 9) -> str:
    """A ~600-byte YAML whose aliases expand to 9**levels strings (a "billion laughs")."""
    lines = ["  lora:", '    target_modules: [&l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"],']
    lines += [f"      &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]," for i in range(1, levels)]
    return "extends: test\nmodel:\n" + "\n".join(lines) + f"\n      *l{levels - 1}]\n"


def test_yaml_alias_bomb_is_refused_quickly(tmp_path):
    path = tmp_path / "laughs.yaml"
    path.write_text(_alias_bomb())
    assert len(path.read_bytes()) < 700
    started = time.monotonic()
    with pytest.raises(ConfigError, match="laughs.yaml.*aliases expand to more than"):
        load_config(str(path))
    assert time.monotonic() - started < 5
    with pytest.raises(ConfigError, match="override.*aliases expand"):
        load_config("test", ["model.lora.target_modules=" + _alias_bomb().split("target_modules: ", 1)[1]])


def test_self_referring_alias_and_huge_documents_are_refused_but_small_anchors_work(tmp_path):
    (tmp_path / "loop.yaml").write_text("model:\n  lora:\n    target_modules: &a [q_proj, *a]\n")
    with pytest.raises(ConfigError, match="refers to the collection that contains it"):
        load_config(str(tmp_path / "loop.yaml"))
    (tmp_path / "big.yaml").write_text("# " + "x" * 2_000_000 + "\n")
    with pytest.raises(ConfigError, match="big.yaml.*characters"):
        load_config(str(tmp_path / "big.yaml"))
    (tmp_path / "ok.yaml").write_text("extends: test\nmodel:\n  lora:\n    target_modules: &m [q_proj]\n")
    assert load_config(str(tmp_path / "ok.yaml")).fingerprint()


# --- tracking ------------------------------------------------------------------------------


@pytest.fixture
def no_tracking_env(monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "GEOR_PARENT_RUN_ID", "RANK", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("uri", ["file:///tmp/geor-mlruns", "/tmp/geor-mlruns", "./mlruns"])
def test_file_store_tracking_uri_is_a_clear_error_naming_a_store_that_works(
    no_tracking_env, monkeypatch, uri
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = load_config("test")
    with (
        pytest.raises(UserFacingError, match=r"file store.*sqlite:///.*http://"),
        tracking.stage_run(cfg, "x"),
    ):
        pass
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow's own opt-in still works
    assert tracking.tracking_uri(cfg) == uri


SECRET_URI = "https://alice:s3cr3t-pw@mlflow.example.com:8443/prefix?token=tok-123&page=2"


def test_redact_uri_masks_passwords_and_secret_query_values_only():
    assert uris.redact_uri(SECRET_URI) == "https://alice:***@mlflow.example.com:8443/prefix?token=***&page=2"
    assert uris.redact_uri("http://tok-123@host/x") == "http://***@host/x"  # a lone user is often a token
    presigned = "s3://b/k?X-Amz-Credential=AKIA&X-Amz-Signature=abc&X-Amz-Security-Token=t&partNumber=1"
    assert uris.redact_uri(presigned) == (
        "s3://b/k?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Security-Token=***&partNumber=1"
    )
    message = f"server {SECRET_URI} is down; also 'postgresql://u:pw@db/mlflow'"
    assert uris.redact_uri(message) == (
        "server https://alice:***@mlflow.example.com:8443/prefix?token=***&page=2 is down; "
        "also 'postgresql://u:***@db/mlflow'"
    )
    for plain in (
        "s3://bucket/run/train",
        "/local/path",
        "sqlite:///tmp/mlflow.db",
        "models:/geo-r@champion",
    ):
        assert uris.redact_uri(plain) == plain


def test_params_and_tags_never_carry_uri_credentials(no_tracking_env):
    cfg = load_config("test", [f"tracking.uri={SECRET_URI}", "data.dataset=s3://b/d?api_key=k3y"])
    params = flat_params(cfg)
    tags = tracking.lineage_tags(cfg, "sft", {"geor.upstream.model": "https://bob:s3cr3t-pw@hub/x"})
    logged = json.dumps([params, tags])
    assert "s3cr3t" not in logged and "tok-123" not in logged and "k3y" not in logged
    assert params["tracking.uri"].startswith("https://alice:***@mlflow.example.com")
    assert tracking.tracking_env(cfg)["MLFLOW_TRACKING_URI"] == SECRET_URI  # workers still connect


def test_credentials_in_the_tracking_uri_are_used_but_never_logged_or_printed(
    no_tracking_env, mlflow_server, monkeypatch, capfd
):
    import mlflow

    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "false")  # restored after the test
    uri = mlflow_server.replace("http://", "http://alice:s3cr3t-pw@")
    cfg = load_config("test", [f"tracking.uri={uri}", f"tracking.experiment=t-{uuid.uuid4().hex[:10]}"])
    with pytest.raises(RuntimeError), tracking.stage_run(cfg, "sft") as run:
        raise RuntimeError(f"upload to {uri} failed")
    logged = mlflow.MlflowClient(mlflow_server).get_run(run.info.run_id).data
    config = mlflow.MlflowClient(mlflow_server).download_artifacts(run.info.run_id, "config.yaml")
    config_text = open(config).read()  # noqa: SIM115 - a temporary download
    assert f"uri: {mlflow_server.replace('http://', 'http://alice:***@')}" in config_text
    assert "s3cr3t" not in json.dumps([logged.params, logged.tags]) + config_text
    assert "alice:***@" in logged.tags["geor.error"]
    out, err = capfd.readouterr()
    assert "s3cr3t" not in out + err

    down = f"http://alice:s3cr3t-pw@127.0.0.1:{free_port()}"
    cfg.tracking.uri = down
    with pytest.raises(UserFacingError) as refused, tracking.stage_run(cfg, "sft"):
        pass
    assert "alice:***@127.0.0.1" in str(refused.value) and "s3cr3t" not in str(refused.value)


# --- run lock ------------------------------------------------------------------------------


def _record(**fields: object) -> bytes:
    now = time.time()
    record = {"owner": "ghost@node pid 1", "token": uuid.uuid4().hex, "acquired_at": now}
    record |= {"heartbeat_at": now, "ttl_s": 60.0, "beats": 0, **fields}
    return json.dumps(record).encode()


CORRUPT_RECORDS = {
    "deeply_nested_json": (b"[" * 20_000 + b"]" * 20_000, "nested too deeply"),
    "acquired_at_1e20": (_record(acquired_at=1e20), "acquired_at 1e+20 is not a time"),
    "ttl_nan": (_record(ttl_s=float("nan")), "ttl_s nan is not a positive number"),
    "ttl_negative": (_record(ttl_s=-5.0), "ttl_s -5.0 is not a positive number"),
    "huge": (b" " * 100_000, "more than a lock record's"),
}


@pytest.mark.parametrize("name", list(CORRUPT_RECORDS))
def test_corrupt_lock_record_counts_as_held_until_its_age_passes_the_ttl(tmp_path: Path, name: str):
    data, problem = CORRUPT_RECORDS[name]
    path = tmp_path / "retrain.lock"
    path.write_bytes(data)
    with pytest.raises(LockHeld) as refused:
        RunLock(str(path), ttl_s=5.0, heartbeat_s=1.0).acquire()
    message = str(refused.value)
    assert "unreadable lock record" in message and problem in message and f"rm {path}" in message
    assert path.read_bytes() == data  # not taken over while it may belong to a live holder
    old = time.time() - 30.0
    os.utime(path, (old, old))  # no heartbeat for 30 s > the 5 s TTL: a dead holder's
    with RunLock(str(path), ttl_s=5.0, heartbeat_s=1.0, owner="successor"):
        assert json.loads(path.read_bytes())["owner"] == "successor"


def test_corrupt_lock_record_on_s3_is_refused_with_a_message(s3_prefix: str):
    uri = f"{s3_prefix}/retrain.lock"
    uris.write_atomic(uri, _record(acquired_at=1e20))
    with pytest.raises(LockHeld, match="acquired_at 1e\\+20 is not a time"):
        RunLock(uri, ttl_s=3.0, heartbeat_s=0.3).acquire()


def test_lock_path_that_is_a_directory_is_refused_and_left_alone(tmp_path: Path):
    path = tmp_path / "retrain.lock"
    (path / "keep").mkdir(parents=True)
    with pytest.raises(UserFacingError, match="is a directory, not a lock file"):
        RunLock(str(path), ttl_s=5.0, heartbeat_s=1.0).acquire()
    assert (path / "keep").is_dir()
