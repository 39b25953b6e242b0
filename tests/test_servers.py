"""Smoke tests: the session servers are real, on loopback, and every S3 client reaches moto."""

from __future__ import annotations

import json
import os
import sys
import urllib.request

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from tests.plugins.servers import free_port, start_server


def test_s3_server_reached_by_boto3_s3fs_and_pyarrow_from_env_alone(s3_server, s3_prefix):
    import boto3
    import s3fs

    assert os.environ["AWS_ENDPOINT_URL"] == s3_server.endpoint_url
    assert s3_server.endpoint_url.startswith("http://127.0.0.1:")
    key = s3_prefix.split("/", 3)[3] + "/hello.txt"

    boto3.client("s3").put_object(Bucket=s3_server.bucket, Key=key, Body=b"hi")  # no endpoint given
    plain_s3fs = s3fs.S3FileSystem(skip_instance_cache=True)  # endpoint from the environment only
    assert plain_s3fs.cat_file(f"{s3_server.bucket}/{key}") == b"hi"
    arrow_fs, path = pafs.FileSystem.from_uri(f"s3://{s3_server.bucket}/{key}")
    with arrow_fs.open_input_stream(path) as stream:
        assert stream.read() == b"hi"
    assert s3_server.fs.cat_file(f"{s3_server.bucket}/{key}") == b"hi"


def test_s3_prefixes_are_fresh_per_call(s3_server, s3_prefix):
    assert s3_prefix.startswith(f"s3://{s3_server.bucket}/")
    assert not s3_server.fs.exists(s3_prefix)
    assert s3_server.fresh_prefix() != s3_server.fresh_prefix()


def test_mlflow_server_healthy_and_not_exported(mlflow_server):
    assert mlflow_server.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(f"{mlflow_server}/health", timeout=5) as response:
        assert response.status == 200
    assert "MLFLOW_TRACKING_URI" not in os.environ
    request = urllib.request.Request(
        f"{mlflow_server}/api/2.0/mlflow/experiments/search",
        data=json.dumps({"max_results": 10}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert "experiments" in json.load(response)


def test_ray_cluster_is_local_on_loopback_and_reads_s3(ray_cluster, s3_server, s3_prefix):
    import ray

    assert ray.cluster_resources()["CPU"] == 2
    assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}

    @ray.remote(num_cpus=0.5)
    def worker_env() -> tuple[str, str]:
        return os.environ.get("AWS_ENDPOINT_URL", ""), os.environ.get("GEOR_EXTRA", "")

    assert ray.get(worker_env.remote()) == (s3_server.endpoint_url, "")
    # A task's own env_vars are merged with the cluster's, not a replacement for them.
    extra = worker_env.options(runtime_env={"env_vars": {"GEOR_EXTRA": "1"}}).remote()
    assert ray.get(extra) == (s3_server.endpoint_url, "1")

    table = pa.table({"id": list(range(10)), "lat": [float(i) for i in range(10)]})
    pq.write_table(table, f"{s3_prefix}/part-0.parquet".removeprefix("s3://"), filesystem=s3_server.fs)
    rows = ray.data.read_parquet(s3_prefix).take_all()  # filesystem resolved from the URI and env
    assert sorted(row["id"] for row in rows) == list(range(10))


def test_a_server_that_dies_at_startup_fails_loudly_with_its_log(tmp_path):
    crash = [sys.executable, "-c", "print('bind failed: address in use'); raise SystemExit(3)"]
    url = f"http://127.0.0.1:{free_port()}/health"
    with pytest.raises(RuntimeError, match=r"(?s)exited with code 3.*bind failed: address in use"):
        start_server("crashy", crash, url, tmp_path / "crashy.log", dict(os.environ), timeout_s=30)
