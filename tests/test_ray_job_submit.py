"""`ray job submit` of the pipeline to a real `ray start --head` cluster with token authentication.

The head runs with ``--block`` as a child of this test, on free loopback ports and its own temp
dir, in a process group of its own, so it never meets the session's in-process cluster and
stopping it (SIGTERM, then SIGKILL, to that group) takes down exactly its processes (``ray stop``
would kill every Ray on the machine). The
client side is the real CLI: ``ray job submit --working-dir .``, ``ray job status``, ``ray job logs``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
HEAD_START_TIMEOUT_S = 90
JOB_TIMEOUT_S = 150
ANSI_CODES = re.compile(r"\x1b\[[0-9;]*m")


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Head:
    """A running head node: its dashboard address and the client environment (with the token)."""

    def __init__(self, address: str, env: dict[str, str]) -> None:
        self.address, self.env = address, env

    def ray(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "ray"), *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def wait_for(self, job_id: str) -> str:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while time.monotonic() < deadline:
            answer = self.ray("job", "status", "--address", self.address, job_id)
            status = ANSI_CODES.sub("", answer.stdout + answer.stderr)  # Ray's cli_logger writes to stderr
            for state, words in (
                ("SUCCEEDED", "succeeded"),
                ("FAILED", "failed"),
                ("STOPPED", "was stopped"),
            ):
                if f"Job '{job_id}' {words}" in status:  # what `ray job status` says of a finished job
                    return state
            time.sleep(2)
        raise AssertionError(
            f"job {job_id} did not finish in {JOB_TIMEOUT_S} s:\n{self.logs(job_id)[-4000:]}"
        )

    def logs(self, job_id: str) -> str:
        return self.ray("job", "logs", "--address", self.address, job_id).stdout


@pytest.fixture(scope="module")
def head_node() -> Iterator[Head]:
    gcs, dashboard, *others = free_ports(9)
    temp_dir = tempfile.mkdtemp(prefix="geor-head-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "MLFLOW_", "GEOR_"))}
    env |= {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",  # the job's `python` is the project's
        "HF_HUB_OFFLINE": "1",
    }
    command = [
        str(BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats",
        "--node-ip-address", "127.0.0.1", "--port", str(gcs), "--num-cpus", "2", "--num-gpus", "0",
        "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
        "--temp-dir", temp_dir,
        "--node-manager-port", str(others[0]), "--object-manager-port", str(others[1]),
        "--ray-client-server-port", str(others[2]), "--dashboard-agent-listen-port", str(others[3]),
        "--dashboard-agent-grpc-port", str(others[4]), "--runtime-env-agent-port", str(others[5]),
        "--metrics-export-port", str(others[6]),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    head = Head(f"http://127.0.0.1:{dashboard}", env)
    try:
        deadline = time.monotonic() + HEAD_START_TIMEOUT_S
        while head.ray("job", "list", "--address", head.address, timeout=30).returncode != 0:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"ray start --head did not come up:\n{process.stdout.read()[-3000:]}")
            time.sleep(2)
        yield head
    finally:
        # the head and everything it started share a new process group: stop exactly those
        os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def submit(head: Head, tmp: Path, *pipeline_args: str, env_vars: dict[str, str]) -> str:
    job_id = f"geor-test-{uuid.uuid4().hex[:8]}"
    result = head.ray(
        "job", "submit", "--address", head.address, "--no-wait", "--submission-id", job_id,
        "--working-dir", ".", "--runtime-env-json", json.dumps({"env_vars": env_vars}),
        "--", "python", "-m", "flows", "pipeline", *pipeline_args,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return job_id


def test_a_submitted_pipeline_succeeds_and_lands_in_mlflow(head_node, world_dir, mlflow_server, tmp_path):
    from mlflow import MlflowClient

    code_version = f"submitted-{uuid.uuid4().hex[:8]}"
    experiment = f"job-{uuid.uuid4().hex[:8]}"
    job_id = submit(
        head_node,
        tmp_path,
        "--config", "test", "--only", "prepare",
        "--manifest", str(world_dir / "manifest.csv"), "--output", str(tmp_path / "root"),
        f"tracking.experiment={experiment}",
        env_vars={"MLFLOW_TRACKING_URI": mlflow_server, "GEOR_CODE_VERSION": code_version},
    )  # fmt: skip
    state = head_node.wait_for(job_id)
    logs = head_node.logs(job_id)
    assert state == "SUCCEEDED", logs[-3000:]
    assert "stage 1/6 prepare: running" in logs and '"prepare": "ran"' in logs

    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    by_stage = {run.data.tags["geor.stage"]: run for run in runs}
    assert set(by_stage) == {"pipeline", "prepare"}
    assert by_stage["prepare"].data.tags["mlflow.parentRunId"] == by_stage["pipeline"].info.run_id
    assert {run.data.tags["geor.code_version"] for run in runs} == {code_version}
    assert (tmp_path / "root" / "prepared" / "_SUCCESS.json").is_file()


def test_a_bad_config_fails_the_job_fast_with_the_message_in_its_logs(head_node, tmp_path):
    started = time.monotonic()
    job_id = submit(head_node, tmp_path, "--config", "test", "grpo.beta=-1", env_vars={})
    assert head_node.wait_for(job_id) == "FAILED"
    assert "grpo.beta" in head_node.logs(job_id)
    assert time.monotonic() - started < 60


def test_the_cluster_refuses_a_client_with_a_wrong_token(head_node):
    env = head_node.env | {"RAY_AUTH_TOKEN": secrets.token_hex(32)}
    result = subprocess.run(
        [str(BIN / "ray"), "job", "list", "--address", head_node.address],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
