"""Session fixtures for models and data: the tiny model and a small synthetic world, built once.

Both are built through their commands' ``run`` (the same code as ``geor make-tiny-model`` and
``geor make-world``) with the ``test`` preset, so they carry completion markers like real
outputs. Importing this plugin sets ``HF_HUB_OFFLINE=1``: no test may reach the Hugging Face hub.

- ``tiny_model_dir`` -> Path of the tiny Qwen2.5-VL model + processor (safetensors).
- ``world_dir`` -> Path of a world with the test preset's ``data.world_rows`` rows and
  ``data.world_countries`` countries (``manifest.csv`` + ``images/``).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from types import ModuleType

import pytest

# Set before anything imports huggingface_hub, which reads these once.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

TEST_PRESET = "test"
BUILD_SECONDS: dict[str, float] = {}


def run_command(module: ModuleType, argv: list[str]) -> int:
    """Run a `geor` command module in-process with ``argv`` (its own arguments only)."""
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args(argv))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model built once per session with the test preset."""
    from flows.commands import make_tiny_model_command as make_tiny_model

    output = tmp_path_factory.mktemp("models") / "tiny-model"
    started = time.monotonic()
    assert run_command(make_tiny_model, ["--output", str(output), "--config", TEST_PRESET]) == 0
    BUILD_SECONDS["tiny_model_dir"] = time.monotonic() - started
    return output


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic world (the test preset's size) built once per session."""
    from flows.commands import make_world_command as make_world

    output = tmp_path_factory.mktemp("worlds") / "world"
    started = time.monotonic()
    assert run_command(make_world, ["--output", str(output), "--config", TEST_PRESET]) == 0
    BUILD_SECONDS["world_dir"] = time.monotonic() - started
    return output


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if BUILD_SECONDS:
        built = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in BUILD_SECONDS.items())
        terminalreporter.write_line(f"session builds: {built}")
