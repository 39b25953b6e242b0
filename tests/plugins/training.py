"""Session fixtures for training: the synthetic world prepared once, and ONE small SFT checkpoint
that the GRPO, evaluate, sweep and pipeline tests all start from.

Both come from the pipeline's first two stages (``run_pipeline(..., only=["prepare", "sft"])``)
under one session root, so the pipeline tests continue that same root: their prepare and SFT
stages are skipped as complete instead of being paid for twice.

- ``pipeline_root`` -> the root (``storage.root``) the shared stages were written under.
- ``pipeline_config`` -> a function giving the test preset with that root, the world's manifest
  and the tiny model filled in (plus any overrides): what the shared stages were built with.
- ``prepared_world`` -> URI of the `geor prepare` output over ``world_dir`` (test preset).
- ``sft_checkpoint`` -> a :class:`tasks.training_run.TrainingResult` for fine-tuning
  ``tiny_model_dir`` on it with the test preset (1 worker, ZeRO-2), long enough that completions parse.

Every test that needs these stages (directly or through another fixture) is marked ``slow``:
building them takes minutes, so ``make test-fast`` (``pytest -m "not slow"``) leaves those tests out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.plugins.models import BUILD_SECONDS, TEST_PRESET


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "shared_stages" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


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
def shared_stages(ray_cluster: Any, pipeline_config: Callable[..., Any], pipeline_root: str) -> Any:
    from flows.pipeline_run import run_pipeline

    started = time.monotonic()
    with pytest.MonkeyPatch.context() as patch:  # built untracked, whichever test asks first
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        result = run_pipeline(pipeline_config(), pipeline_root, only=["prepare", "sft"])
    BUILD_SECONDS["prepare+sft (pipeline)"] = time.monotonic() - started
    return result


@pytest.fixture(scope="session")
def prepared_world(shared_stages: Any) -> str:
    return shared_stages.stages["prepare"].outputs["output"]


@pytest.fixture(scope="session")
def sft_checkpoint(shared_stages: Any) -> Any:
    from tasks.training_run import TrainingResult

    sft = shared_stages.stages["sft"]
    return TrainingResult(sft.outputs["output"], False, sft.outputs["global_step"], 0, sft.outputs["metrics"])
