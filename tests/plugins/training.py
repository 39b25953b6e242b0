"""Session fixtures for training: the synthetic world prepared once, and ONE small SFT checkpoint
that the GRPO, evaluate, sweep and pipeline tests all start from.

Both come from the pipeline's first two stages (``geor pipeline --only prepare,sft``) under one
session root, so the pipeline tests continue that same root: their prepare and SFT stages are
skipped as complete instead of being paid for twice.

They are built in the background. At the session's first test, when some collected test needs
them, a `geor pipeline` process starts on the session's Ray cluster (one worker, one core);
the modules that use no Ray run first (collection order, below) while it trains, and
``ray_cluster`` waits for it: no Ray test shares the cluster with it.

- ``ray_cluster`` -> the session's cluster (tests/plugins/servers.py), once the build is done.
- ``pipeline_root`` -> the root (``storage.root``) the shared stages were written under.
- ``pipeline_config`` -> a function giving the test preset with that root, the world's manifest
  and the tiny model filled in (plus any overrides): what the shared stages were built with.
- ``prepared_world`` -> URI of the `geor prepare` output over ``world_dir`` (test preset).
- ``sft_checkpoint`` -> a :class:`tasks.training_run.TrainingResult` for fine-tuning
  ``tiny_model_dir`` on it with the test preset (1 worker, ZeRO-2), long enough that completions parse.

Every test that needs these stages (directly or through another fixture) is marked ``slow``:
building them takes minutes, so ``make test-fast`` (``pytest -m "not slow"``) leaves those tests
out, and then nothing is built.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.plugins.models import BUILD_SECONDS, TEST_PRESET
from tests.plugins.servers import TRACKING_ENV

ROOT = Path(__file__).resolve().parents[2]


SHARED = "shared_stages"
BUILD_TIMEOUT_S = 900


def _uses(item: pytest.Item, fixture: str) -> bool:
    return fixture in getattr(item, "fixturenames", ())


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks the tests that need the shared stages ``slow``, and runs the modules that use no Ray
    first (each module stays whole, so its module fixtures are built once)."""
    with_ray = set()
    for item in items:
        if _uses(item, SHARED):
            item.add_marker(pytest.mark.slow)
        if _uses(item, "ray_cluster"):
            with_ray.add(item.module)
    items.sort(key=lambda item: item.module in with_ray)  # stable: the order within each group stays


@dataclass
class SharedBuild:
    """The `geor pipeline --only prepare,sft` process building the shared stages."""

    process: subprocess.Popen
    log: Path
    started: float

    def wait(self) -> int:
        try:
            code = self.process.wait(timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        BUILD_SECONDS.setdefault("prepare+sft (pipeline, background)", time.monotonic() - self.started)
        return code


@pytest.fixture(scope="session", autouse=True)
def _shared_build(request: pytest.FixtureRequest) -> Iterator[SharedBuild | None]:
    """Starts the shared stages' build at the session's first test, if any collected test needs them."""
    if not any(_uses(item, SHARED) for item in request.session.items):
        yield None
        return
    cluster = request.getfixturevalue("session_ray")
    world, model = request.getfixturevalue("world_dir"), request.getfixturevalue("tiny_model_dir")
    root = Path(request.getfixturevalue("pipeline_root"))
    log = root.parent / "shared-build.log"
    env = {k: v for k, v in os.environ.items() if k not in TRACKING_ENV}  # built untracked
    env["RAY_ADDRESS"] = cluster.address_info["address"]
    command = [
        sys.executable, "-m", "flows", "pipeline", "--config", TEST_PRESET, "--only", "prepare,sft",
        "--manifest", str(world / "manifest.csv"), "--model", str(model), "--output", str(root),
    ]  # fmt: skip
    with log.open("wb") as sink:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    build = SharedBuild(process, log, time.monotonic())
    try:
        yield build
    finally:
        if process.poll() is None:  # the session ended first (a failure, Ctrl-C): never leave it training
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def ray_cluster(session_ray: Any, _shared_build: SharedBuild | None) -> Any:
    """The session's Ray cluster, once the shared stages' build (if any) has finished with it."""
    if _shared_build is not None:
        _shared_build.wait()
    return session_ray


@pytest.fixture(scope="session")
def pipeline_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("pipeline") / "root")


@pytest.fixture(scope="session")
def pipeline_config(pipeline_root: str, world_dir: Path, tiny_model_dir: Path) -> Callable[..., Any]:
    from geor_core.config import load_config

    def make(*overrides: str) -> Any:
        values = {
            "prepare.manifest": str(world_dir / "manifest.csv"),
            "model.name_or_path": str(tiny_model_dir),
            "storage.root": pipeline_root,
        }
        return load_config(TEST_PRESET, list(overrides), values)

    return make


@pytest.fixture(scope="session")
def shared_stages(
    ray_cluster: Any, _shared_build: SharedBuild, pipeline_config: Callable[..., Any], pipeline_root: str
) -> Any:
    """The build's outcome, read back by running the same two stages here: both must be skipped as
    complete (same settings, same key), or the build did not make what the tests are given."""
    from flows.pipeline_run import run_pipeline

    code = _shared_build.wait()
    tail = _shared_build.log.read_text(errors="replace")[-4000:]
    assert code == 0, f"building the shared stages failed (exit {code}):\n{tail}"
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        result = run_pipeline(pipeline_config(), pipeline_root, only=["prepare", "sft"])
    statuses = {name: outcome.status for name, outcome in result.stages.items()}
    assert statuses == {"prepare": "skipped", "sft": "skipped"}, (statuses, tail)
    return result


@pytest.fixture(scope="session")
def prepared_world(shared_stages: Any) -> str:
    return shared_stages.stages["prepare"].outputs["output"]


@pytest.fixture(scope="session")
def sft_checkpoint(shared_stages: Any) -> Any:
    from tasks.training_run import TrainingResult

    sft = shared_stages.stages["sft"]
    return TrainingResult(sft.outputs["output"], False, sft.outputs["global_step"], 0, sft.outputs["metrics"])
