"""Session fixtures for training: the synthetic world prepared once, and ONE small SFT checkpoint
that the GRPO, evaluate, sweep and pipeline tests all start from.

- ``prepared_world`` -> URI of a `geor prepare` output over ``world_dir`` (test preset).
- ``sft_checkpoint`` -> the :class:`tasks.sft.SftResult` of fine-tuning ``tiny_model_dir`` on it
  with the test preset (1 worker, ZeRO-2), long enough that completions parse.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.plugins.models import BUILD_SECONDS, TEST_PRESET


@pytest.fixture(scope="session")
def prepared_world(ray_cluster: Any, world_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    from geor_core.config import load_config
    from tasks.prepare import run_prepare

    output = str(tmp_path_factory.mktemp("prepared") / "world")
    cfg = load_config(
        TEST_PRESET, values={"prepare.manifest": str(world_dir / "manifest.csv"), "prepare.output": output}
    )
    started = time.monotonic()
    run_prepare(cfg)
    BUILD_SECONDS["prepared_world"] = time.monotonic() - started
    return output


@pytest.fixture(scope="session")
def sft_checkpoint(
    prepared_world: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Any:
    from geor_core.config import load_config
    from tasks.sft import run_sft

    output = str(tmp_path_factory.mktemp("sft") / "shared")
    started = time.monotonic()
    result = run_sft(load_config(TEST_PRESET), prepared_world, str(tiny_model_dir), output)
    BUILD_SECONDS["sft_checkpoint"] = time.monotonic() - started
    return result
