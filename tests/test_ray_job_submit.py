"""`ray job submit` to a real two-node `ray start` cluster with token authentication.

The head and a second node each run `ray start --block` as children of this test, on free
loopback ports with their own temp dirs, each in a process group of its own, so they never meet
the session's in-process cluster and stopping them (SIGTERM, then SIGKILL, to each group) takes
down exactly their processes (``ray stop`` would kill every Ray on the machine). The head has one
CPU (the job's drivers take none; Ray Data's preparation tasks may run there); the second node has
two and carries the custom resource ``trainer``, which the submitted job requires of every Train
worker and inference actor (``cluster.worker_resources``), so they can run nowhere else.

One job runs ``geor pipeline --only prepare,sft`` then ``geor evaluate`` of the SFT model (the
pipeline's own evaluate stage needs GRPO's model too) with every output on the session's moto S3;
the AWS variables reach the drivers and the workers through the job's runtime_env alone. The test
finds every output on S3, the workers and actors on the second node in Ray's State API, and none
of the outputs in the head's temp dir, which holds the drivers' working directory and temp files.
The client side is the real CLI: ``ray job submit --working-dir .``, ``ray job status``, ``ray
job logs`` (the job is awaited and the State API read over the dashboard's REST API: a CLI call
costs a second of CPU). Unit tests, no Ray started: ``cluster.worker_resources`` is validated and
reaches the ScalingConfig and every actor's options.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
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
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from geor_core.config import ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
START_TIMEOUT_S = 90
JOB_TIMEOUT_S = 420
ANSI_CODES = re.compile(r"\x1b\[[0-9;]*m")
# a finished job's state -> what `ray job status` says of it
FINAL_WORDS = {"SUCCEEDED": "succeeded", "FAILED": "failed", "STOPPED": "was stopped"}
# `ray` itself for the second node, on loopback: Ray 2.60's `ray start --address` refuses to join
# while RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, and with 1 it turns 127.0.0.1 (the head's address,
# --node-ip-address) into the machine's outward address, where the loopback-only head is not found
RAY_ON_LOOPBACK = (
    "import ray._private.services as services; services.resolve_ip_for_localhost = lambda host: host; "
    "from ray.scripts.scripts import main; main()"
)
RESOURCE = "trainer"  # the second node's custom resource: the job's workers and actors need one each
WORKER_RESOURCES = f"cluster.worker_resources={{{RESOURCE}: 1}}"
# what a stage writes; none of it may land on the head (the drivers' working directory and temp dir)
OUTPUT_FILE = re.compile(
    r"_SUCCESS\.json|.*\.(parquet|safetensors|png)|trainer_state\.json|comparison\.(md|json)|(prepare|sft)\.json"
    r"|geor-[a-z-]+-\d{8}-\d{6}\.log"  # the full log of a local root (geor_core/console.py)
)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Cluster:
    """A running two-node cluster: the dashboard address, the client environment (with the
    token), the second node's id and the head's temp dir."""

    def __init__(self, address: str, env: dict[str, str], head_temp_dir: str) -> None:
        self.address, self.env, self.head_temp_dir = address, env, head_temp_dir
        self.worker_node_id = ""

    def ray(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "ray"), *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def api(self, path: str) -> Any:
        """The JSON of a GET on the dashboard's REST API (jobs, State API), with the token."""
        token = {"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"}
        request = urllib.request.Request(self.address + path, headers=token)
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.load(answer)

    def listed(self, kind: str) -> list[dict[str, Any]]:
        """What Ray's State API lists of ``kind`` ("nodes", "actors": dead ones included)."""
        return self.api(f"/api/v0/{kind}?limit=10000&detail=true")["data"]["result"]["result"]

    def wait_for(self, job_id: str) -> str:
        """The job's final state, once `ray job status` says it too (polled over REST: a CLI call
        every two seconds would cost the job a good part of a core)."""
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while (state := self.api(f"/api/jobs/{job_id}")["status"]) not in FINAL_WORDS:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"job {job_id} did not finish in {JOB_TIMEOUT_S} s:\n{self.logs(job_id)[-4000:]}"
                )
            time.sleep(1)
        answer = self.ray("job", "status", "--address", self.address, job_id)
        status = ANSI_CODES.sub("", answer.stdout + answer.stderr)  # Ray's cli_logger writes to stderr
        assert f"Job '{job_id}' {FINAL_WORDS[state]}" in status, status
        return state

    def logs(self, job_id: str) -> str:
        return self.ray("job", "logs", "--address", self.address, job_id).stdout


def start_node(command: list[str], env: dict[str, str], temp_dir: str) -> subprocess.Popen:
    """``ray start ... --block`` in a process group of its own, its output in ``temp_dir``."""
    with open(Path(temp_dir) / "ray-start.out", "wb") as out:
        return subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_nodes(*processes: subprocess.Popen) -> None:
    """Each node and everything it started share its process group: stop exactly those, all at once
    (SIGTERM, then SIGKILL after 5 s)."""
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def wait_for_nodes(cluster: Cluster, nodes: dict[str, tuple[subprocess.Popen, str]]) -> str | None:
    """Wait until every node in ``nodes`` is alive; returns the id of the one that carries
    ``RESOURCE`` (None when none does)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    alive: list[dict[str, Any]] = []
    while True:
        with contextlib.suppress(OSError):  # the dashboard is not up yet
            alive = [node for node in cluster.listed("nodes") if node["state"] == "ALIVE"]
        workers = [node["node_id"] for node in alive if RESOURCE in node["resources_total"]]
        if len(alive) == len(nodes) and (workers or len(nodes) == 1):
            return workers[0] if workers else None
        exited = [name for name, (process, _) in nodes.items() if process.poll() is not None]
        if exited or time.monotonic() > deadline:
            outputs = "".join(
                f"\n--- the {name}'s output:\n{(Path(temp_dir) / 'ray-start.out').read_text(errors='replace')[-2000:]}"
                for name, (_, temp_dir) in nodes.items()
            )
            raise AssertionError(
                f"no cluster after {START_TIMEOUT_S} s (exited: {exited}; alive: {alive}){outputs}"
            )
        time.sleep(0.5)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    gcs, dashboard, *ports = free_ports(15)
    head_dir = tempfile.mkdtemp(prefix="geor-head-", dir="/tmp")
    worker_dir = tempfile.mkdtemp(prefix="geor-node-", dir="/tmp")
    # no AWS_*: the job's runtime_env alone must bring S3 to its driver and workers
    prefixes = ("RAY_ADDRESS", "MLFLOW_", "GEOR_", "AWS_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env |= {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",  # the job's `python` is the project's
        "HF_HUB_OFFLINE": "1",
    }
    common = ["start", "--block", "--disable-usage-stats", "--node-ip-address", "127.0.0.1", "--num-gpus", "0"]  # fmt: skip

    def own_ports(first: int) -> list[str]:
        return [
            "--node-manager-port", str(ports[first]), "--object-manager-port", str(ports[first + 1]),
            "--dashboard-agent-listen-port", str(ports[first + 2]),
            "--dashboard-agent-grpc-port", str(ports[first + 3]),
            "--runtime-env-agent-port", str(ports[first + 4]), "--metrics-export-port", str(ports[first + 5]),
        ]  # fmt: skip

    head = start_node(
        [str(BIN / "ray"), *common, "--head", "--port", str(gcs), "--num-cpus", "1", "--temp-dir", head_dir,
         "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
         "--ray-client-server-port", str(ports[12]), *own_ports(0)],
        env, head_dir,
    )  # fmt: skip
    started = Cluster(f"http://127.0.0.1:{dashboard}", env, head_dir)
    worker = None
    try:
        # the second node once the head is up: a node that finds no head in the GCS soon enough
        # exits (seen on a loaded machine)
        wait_for_nodes(started, {"head": (head, head_dir)})
        worker = start_node(
            [sys.executable, "-c", RAY_ON_LOOPBACK, *common, "--address", f"127.0.0.1:{gcs}", "--num-cpus", "2",
             "--temp-dir", worker_dir, "--resources", json.dumps({RESOURCE: 4}), *own_ports(6)],
            env | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}, worker_dir,
        )  # fmt: skip
        started.worker_node_id = wait_for_nodes(
            started, {"head": (head, head_dir), "second node": (worker, worker_dir)}
        )
        yield started
    finally:
        stop_nodes(*[process for process in (worker, head) if process is not None])
        shutil.rmtree(worker_dir, ignore_errors=True)
        shutil.rmtree(head_dir, ignore_errors=True)


def geor(*args: str) -> list[str]:
    return ["python", "-m", "flows", *args]


def submit(cluster: Cluster, *commands: list[str], env_vars: dict[str, str]) -> str:
    """Submit ``commands`` as one job, run one after the other while each succeeds."""
    job_id = f"geor-test-{uuid.uuid4().hex[:8]}"
    entrypoint = commands[0] if len(commands) == 1 else ["bash", "-c", " && ".join(map(shlex.join, commands))]
    result = cluster.ray(
        "job", "submit", "--address", cluster.address, "--no-wait", "--submission-id", job_id,
        "--working-dir", ".", "--runtime-env-json", json.dumps({"env_vars": env_vars}), "--", *entrypoint,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return job_id


@pytest.mark.slow  # trains and evaluates: about a minute
def test_a_submitted_pipeline_runs_on_the_second_node_and_writes_only_to_s3(
    cluster, world_dir, tiny_model_dir, s3_server, s3_prefix, mlflow_server, tmp_path
):
    from mlflow import MlflowClient

    from geor_core import uris

    code_version = f"submitted-{uuid.uuid4().hex[:8]}"
    experiment = f"job-{uuid.uuid4().hex[:8]}"
    root, evaluation = f"{s3_prefix}/root", f"{s3_prefix}/eval"
    settings = [  # last: a command's key=value overrides come after its options
        f"tracking.experiment={experiment}", WORKER_RESOURCES,
        f"model.cache_dir={tmp_path / 'model-cache'}",  # where the actors copy the S3 model (not ~)
    ]  # fmt: skip
    pipeline = geor(
        "pipeline", "--config", "test", "--only", "prepare,sft", "--manifest", str(world_dir / "manifest.csv"),
        "--model", str(tiny_model_dir), "--output", root, *settings,
        "sft.max_steps=2", "sft.eval_steps=2", "sft.save_steps=2", "sft.logging_steps=1", "sft.val_rows=8",
    )  # fmt: skip
    evaluate = geor(
        "evaluate", "--config", "test", "--data", f"{root}/prepared", "--model", f"sft={root}/sft/model",
        "--output", evaluation, *settings, "eval.max_rows=8", "eval.sampled_rows=0", "eval.max_new_tokens=16",
    )  # fmt: skip
    env_vars = {**s3_server.env, "MLFLOW_TRACKING_URI": mlflow_server, "GEOR_CODE_VERSION": code_version}
    # the drivers' temp files go into the head's temp dir too (the workers' are the nodes' own)
    driver_tmp = Path(cluster.head_temp_dir) / "driver-tmp"
    driver_tmp.mkdir(exist_ok=True)
    driver = ["env", f"TMPDIR={driver_tmp}"]
    job_id = submit(cluster, [*driver, *pipeline], [*driver, *evaluate], env_vars=env_vars)
    state = cluster.wait_for(job_id)
    logs = cluster.logs(job_id)
    assert state == "SUCCEEDED", logs[-3000:]
    assert "stage 1/6 prepare: running" in logs and '"prepare": "ran", "sft": "ran"' in logs

    # (a) every output is on S3: the stages' data, checkpoints, export, report and records
    written = {uri.removeprefix(f"{s3_prefix}/") for uri in uris.glob(f"{s3_prefix}/**")}
    for expected in (
        "root/prepared/_SUCCESS.json",
        "root/pipeline/prepare.json",
        "root/pipeline/sft.json",
        "root/sft/model/_SUCCESS.json",
        "root/sft/model/model.safetensors",
        "eval/_SUCCESS.json",
        "eval/comparison.md",
        "eval/error_cdf.png",
        "eval/models/sft/metrics.json",
        "eval/models/sft/plots/world_map.png",
    ):
        assert expected in written, sorted(written)
    assert any(re.match(r"root/sft/ray/sft/checkpoint_[^/]+/", path) for path in written), sorted(written)
    # (b) the Train worker and the inference actor ran on the second node: they need its resource
    actors = cluster.listed("actors")
    for kind in ("RayTrainWorker", "MapWorker(MapBatches(Geolocator))"):  # Ray Train's, Ray Data's
        nodes = {actor["node_id"] for actor in actors if actor["class_name"] == kind}
        assert nodes == {cluster.worker_node_id}, (kind, nodes, cluster.worker_node_id)
    # (c) nothing of it on the head, where the drivers ran (their working directory and temp dir)
    on_head = [str(p) for p in Path(cluster.head_temp_dir).rglob("*") if OUTPUT_FILE.fullmatch(p.name)]
    assert not on_head, on_head

    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    pipeline_run = next(run for run in runs if run.data.tags["geor.stage"] == "pipeline")
    children = {
        run.data.tags["geor.stage"]
        for run in runs
        if run.data.tags.get("mlflow.parentRunId") == pipeline_run.info.run_id
    }
    assert children == {"prepare", "sft"}
    assert {run.data.tags["geor.stage"] for run in runs} == {"pipeline", "prepare", "sft", "evaluate"}
    assert {run.data.tags["geor.code_version"] for run in runs} == {code_version}


def test_a_bad_config_fails_the_job_fast_with_the_message_in_its_logs(cluster):
    started = time.monotonic()
    job_id = submit(cluster, geor("pipeline", "--config", "test", "grpo.beta=-1"), env_vars={})
    assert cluster.wait_for(job_id) == "FAILED"
    assert "grpo.beta" in cluster.logs(job_id)
    assert time.monotonic() - started < 60


def test_the_cluster_refuses_a_client_with_a_wrong_token(cluster):
    env = cluster.env | {"RAY_AUTH_TOKEN": secrets.token_hex(32)}
    result = subprocess.run(
        [str(BIN / "ray"), "job", "list", "--address", cluster.address],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0


def test_worker_resources_reach_the_train_workers_and_every_actor(monkeypatch):
    from tasks.batch_inference import actor_resources
    from tasks.reward_actors import RewardActor, RewardActorPool
    from tasks.training_run import scaling_config

    cfg = load_config("test", [WORKER_RESOURCES, "eval.gpus_per_actor=0.5"])
    assert scaling_config(cfg.sft, cfg.cluster.worker_resources).resources_per_worker == {
        "CPU": cfg.sft.cpus_per_worker,
        RESOURCE: 1,
    }
    assert actor_resources(cfg) == {"num_gpus": 0.5, "resources": {RESOURCE: 1}}
    options = []
    monkeypatch.setattr(
        RewardActor, "options", lambda **o: options.append(o) or SimpleNamespace(remote=lambda *a: "actor")
    )
    RewardActorPool(cfg.reward, 1, 0.25, resources=cfg.cluster.worker_resources)._new_actor()
    assert options[0]["resources"] == {RESOURCE: 1}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("{trainer: -1}", ".trainer: got -1, expected a positive number, whole above 1"),
        ("{trainer: 1.5}", ".trainer: got 1.5, expected a positive number, whole above 1"),
        ("{CPU: 1}", ".CPU: not a custom resource"),
        ("trainer", ": got 'trainer', expected a mapping"),
    ],
)
def test_worker_resources_are_validated(value, message):
    with pytest.raises(ConfigError, match=re.escape(f"cluster.worker_resources{message}")):
        load_config("test", [f"cluster.worker_resources={value}"])


def test_a_cluster_without_enough_of_a_worker_resource_is_refused_naming_it():
    from geor_core.errors import UserFacingError
    from tasks.ray_session import check_custom_resources

    total = {"CPU": 3.0, RESOURCE: 4.0}
    check_custom_resources(total, {RESOURCE: 2}, 2, "per worker for 2 workers")  # exactly enough
    check_custom_resources(total, None, 8, "per worker for 8 workers")  # nothing asked
    with pytest.raises(
        UserFacingError, match=r"asks 2 'trainer' per worker for 3 workers, but the cluster has 4\.0"
    ):
        check_custom_resources(total, {RESOURCE: 2}, 3, "per worker for 3 workers")
    with pytest.raises(UserFacingError, match=r"asks 1 'gpu_node' per actor .* the cluster has 0;"):
        check_custom_resources(total, {"gpu_node": 1}, 1, "per actor for eval.num_actors = 1")
