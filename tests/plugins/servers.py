"""Real servers for the test session: a moto S3 server, an MLflow tracking server, a local Ray cluster.

Each is started once per session on 127.0.0.1 with a free port and stopped at the end; no test
starts its own copy. Fixtures:

- ``s3_server`` -> :class:`S3Server` (``endpoint_url``, ``bucket``, ``fs``, ``env``, ``fresh_prefix()``).
  While the session runs, ``os.environ`` carries ``AWS_ENDPOINT_URL`` and dummy credentials, so
  boto3, s3fs, pyarrow and Ray Data all talk to moto. ``s3_prefix`` gives each test its own
  ``s3://geor-test/<unique>`` prefix.
- ``mlflow_server`` -> the tracking URI ``http://127.0.0.1:P``. It is NOT exported as
  ``MLFLOW_TRACKING_URI``: tests pass it through ``cfg.tracking.uri``.
- ``session_ray`` -> the ``ray.init`` context of a fresh 2-CPU local cluster whose runtime_env
  carries the AWS variables. Tests ask for ``ray_cluster`` (tests/plugins/training.py): the same
  cluster, once the session's shared stages, built on it in the background, have let go of it.

Startup failures raise with the tail of the server's log. Each fixture's start time is recorded
in ``STARTUP_SECONDS`` and printed in the terminal summary.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# Ray reads this once, when it is first imported: set it before any test module imports ray, so
# every Ray socket binds to loopback (docs/design.md, facts about Ray 2.60).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

BIN = Path(sys.executable).parent
LOCALHOST = "127.0.0.1"
S3_BUCKET = "geor-test"
STARTUP_SECONDS: dict[str, float] = {}


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return sock.getsockname()[1]


def console_script(name: str, package: str) -> str:
    """The path of a console script installed beside this interpreter (or on PATH)."""
    beside = BIN / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found beside {sys.executable} or on PATH; install {package}")
    return found


def _log_tail(log_path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log at {log_path}: {exc})"


def stop_process_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process group ``proc`` leads, then SIGKILL whatever is left after ``grace_s``."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; make sure no worker of its group outlives it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return


def start_server(
    name: str, cmd: list[str], health_url: str, log_path: Path, env: dict[str, str], timeout_s: float
) -> subprocess.Popen:
    """Start ``cmd`` in its own process group and wait until ``health_url`` answers 200.

    On failure the process group is stopped and the error carries the tail of the server's log."""
    log = log_path.open("wb")
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=log_path.parent
    )
    log.close()
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{name} exited with code {proc.returncode} before becoming healthy; command: "
                f"{' '.join(cmd)}\n--- log tail ({log_path}) ---\n{_log_tail(log_path)}"
            )
        try:
            with urllib.request.urlopen(health_url, timeout=2) as response:
                if response.status == 200:
                    return proc
        except OSError as exc:
            last_error = exc
        time.sleep(0.2)
    stop_process_group(proc)
    raise RuntimeError(
        f"{name} was not healthy at {health_url} after {timeout_s:.0f} s (last error: {last_error}); "
        f"command: {' '.join(cmd)}\n--- log tail ({log_path}) ---\n{_log_tail(log_path)}"
    )


@dataclass
class S3Server:
    """A running moto S3 server and what tests need to use it."""

    endpoint_url: str
    bucket: str
    env: dict[str, str]  # the AWS variables to hand to subprocesses and Ray's runtime_env
    fs: Any = field(repr=False)  # a ready s3fs.S3FileSystem pointed at the server

    def fresh_prefix(self, name: str = "t") -> str:
        """A new, empty ``s3://<bucket>/<name>-<unique>`` prefix."""
        return f"s3://{self.bucket}/{name}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A moto S3 server on loopback with bucket ``geor-test``; AWS variables set for the session."""
    import boto3
    import s3fs

    port = free_port()
    endpoint = f"http://{LOCALHOST}:{port}"
    aws_env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",  # never probe an instance-metadata endpoint
    }
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    started = time.monotonic()
    proc = start_server(
        "moto_server",
        [console_script("moto_server", "moto[server]"), "-H", LOCALHOST, "-p", str(port)],
        f"{endpoint}/moto-api/",
        log_path,
        env={**os.environ, **aws_env},
        timeout_s=60,
    )
    with pytest.MonkeyPatch.context() as patch:
        for key, value in aws_env.items():
            patch.setenv(key, value)
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            patch.delenv(key, raising=False)
        try:
            fs = s3fs.S3FileSystem(
                key="testing",
                secret="testing",
                client_kwargs={"endpoint_url": endpoint, "region_name": "us-east-1"},
                skip_instance_cache=True,
                use_listings_cache=False,
            )
            # us-east-1 takes no LocationConstraint, which s3fs.mkdir always sends: use boto3.
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=S3_BUCKET)
            STARTUP_SECONDS["s3_server"] = time.monotonic() - started
            yield S3Server(endpoint_url=endpoint, bucket=S3_BUCKET, env=aws_env, fs=fs)
        finally:
            stop_process_group(proc)


@pytest.fixture
def s3_prefix(s3_server: S3Server, request: pytest.FixtureRequest) -> str:
    """A fresh ``s3://geor-test/<test name>-<unique>`` prefix for one test."""
    name = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40].strip("-")
    return s3_server.fresh_prefix(name or "t")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An MLflow tracking server (sqlite store, served artifacts) on loopback; yields its URI."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    uri = f"http://{LOCALHOST}:{port}"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [
        console_script("mlflow", "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--serve-artifacts",
        "--host",
        LOCALHOST,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    started = time.monotonic()
    proc = start_server("mlflow server", cmd, f"{uri}/health", root / "mlflow.log", env, timeout_s=120)
    STARTUP_SECONDS["mlflow_server"] = time.monotonic() - started
    try:
        yield uri
    finally:
        stop_process_group(proc)


@pytest.fixture(scope="session")
def session_ray(s3_server: S3Server) -> Iterator[Any]:
    """A fresh local Ray cluster (2 CPUs, loopback only, a dashboard) for the whole session.

    Its runtime_env carries the moto AWS variables, so workers read and write ``s3://`` there.
    Sized for 2 cores: actors that each take a whole CPU starve Ray Data's read/write tasks and
    the job hangs without an error. Give actor pools fractional CPUs (``num_cpus=0.5``) and use
    ``compute=ActorPoolStrategy``; keep at least one CPU free for tasks. Worker output is not
    forwarded to the test's stdout; set GEOR_TEST_RAY_LOGS=1 to see it.
    """
    import ray

    from tasks.ray_session import start_local_ray

    if ray.is_initialized():
        raise RuntimeError("ray is already initialised in this test process; use the ray_cluster fixture")
    # A short private temp dir (Unix socket paths are limited to ~107 bytes): a fresh cluster per
    # run, never one left over from an earlier run, and no leaked placement groups.
    temp_dir = tempfile.mkdtemp(prefix="geor-ray-", dir="/tmp")
    started = time.monotonic()
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("RAY_ADDRESS", raising=False)
        patch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        patch.setenv("RAY_USAGE_STATS_ENABLED", "0")
        # As `geor` starts one: a dashboard, whose State API Ray Train's placement-group cleaner asks
        # whether a run's controller lives. Without it a run that ends ungracefully (an ASHA-stopped
        # or interrupted sweep trial) keeps its placement group, and later runs wait for its CPUs.
        context = start_local_ray(
            num_cpus=2,
            log_to_driver=os.environ.get("GEOR_TEST_RAY_LOGS") == "1",
            runtime_env={"env_vars": dict(s3_server.env)},
            _node_ip_address=LOCALHOST,
            _temp_dir=temp_dir,
        )
        STARTUP_SECONDS["session_ray"] = time.monotonic() - started
        try:
            yield context
        finally:
            ray.shutdown()
            shutil.rmtree(temp_dir, ignore_errors=True)


PLACEMENT_GROUP_GRACE_S = 30.0  # Ray Train's cleaner checks every second; Tune force-kills after 10 s


@pytest.fixture(autouse=True)
def _no_leaked_placement_groups(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test on the session cluster, every placement group is gone within a grace period:
    a leaked one holds CPUs that every later test would wait for (a hang, not a failure)."""
    yield
    if "ray_cluster" not in request.fixturenames:
        return
    from tasks.placement_groups import live_placement_groups, remove_placement_groups

    deadline = time.monotonic() + PLACEMENT_GROUP_GRACE_S
    while (live := live_placement_groups()) and time.monotonic() < deadline:
        time.sleep(0.5)
    if live:
        remove_placement_groups(list(live))  # free the cluster for the next tests, then report
        pytest.fail(f"placement groups still held {PLACEMENT_GROUP_GRACE_S:.0f} s after the test: {live}")


TRACKING_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "GEOR_PARENT_RUN_ID")
_ENV_AT_START = {name: os.environ.get(name) for name in TRACKING_ENV}


@pytest.fixture(autouse=True)
def _tracking_env_restored() -> Iterator[None]:
    """``mlflow.set_tracking_uri`` exports MLFLOW_TRACKING_URI to the process environment; put the
    tracking variables back after every test so one test's server never leaks into the next."""
    yield
    for name, value in _ENV_AT_START.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Report how long each session server took to start."""
    if STARTUP_SECONDS:
        timings = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in STARTUP_SECONDS.items())
        terminalreporter.write_line(f"session servers started: {timings}")
