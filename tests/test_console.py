"""The console for people (geor_core/console.py, tasks/ray_session.py): compact metric lines, one
line per Trainer log, a quiet console beside the full log, and a local Ray instance that keeps to
itself while another one runs on the machine."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from geor_core import console

ROOT = Path(__file__).resolve().parents[1]
SFT_LOGS = {
    "loss": 1.2381,
    "grad_norm": 0.6799,
    "learning_rate": 0.001427,
    "entropy": 1.562,
    "mean_token_accuracy": 0.6869,
    "num_tokens": 164900.0,
    "epoch": 0.877,
}
SFT_LINE = "[geor sft] step 150/400  loss 1.238  acc 0.6869  grad 0.6799  lr 0.001427"


def test_metric_line_is_one_compact_line():
    assert console.metric_line("sft", 150, 400, SFT_LOGS) == SFT_LINE
    grpo = {"reward": -0.25, "reward_std": 0.5, "kl": 2.5e-06, "timing/generation_s": 3.1, "loss": 0.0}
    assert (
        console.metric_line("grpo", 3, 6, grpo)
        == "[geor grpo] step 3/6  loss 0  reward -0.25  reward_std 0.5  kl 2.50e-06"
    )


def test_trainer_log_prints_one_compact_line_and_the_bar_follows_the_steps(tmp_path, capsys):
    """The Trainer's own printer (a raw dict per log, printed twice under Ray Train) is gone: a log
    is one compact line; the bar made by the worker's factory counts the optimizer steps."""
    import torch
    from transformers import Trainer, TrainingArguments

    from geor_core.training.train_callbacks import ConsoleCallback, console_only

    bars = []

    class Bar:
        def __init__(self, total: int, desc: str, unit: str) -> None:
            self.total, self.desc, self.n, self.closed = total, desc, 0, False
            bars.append(self)

        def update(self, n: int) -> None:
            self.n += n

        def close(self) -> None:
            self.closed = True

    args = TrainingArguments(str(tmp_path), disable_tqdm=True, report_to="none", use_cpu=True)
    trainer = console_only(
        Trainer(model=torch.nn.Linear(2, 1), args=args, callbacks=[ConsoleCallback("sft", Bar)])
    )
    state, handler = trainer.state, trainer.callback_handler
    state.max_steps, state.global_step = 400, 0
    handler.on_train_begin(args, state, trainer.control)
    for step in (1, 2, 3):
        state.global_step = step
        handler.on_step_end(args, state, trainer.control)
    state.global_step = 150
    handler.on_log(args, state, trainer.control, dict(SFT_LOGS))
    handler.on_train_end(args, state, trainer.control)
    printed = capsys.readouterr().out  # (DeepSpeed may warn here that it found no GPU)
    assert [line for line in printed.splitlines() if "loss" in line] == [SFT_LINE]
    assert [(b.total, b.desc, b.n, b.closed) for b in bars] == [(400, "sft steps", 3, True)]


def test_full_log_keeps_the_last_state_of_a_redrawn_bar():
    screen, log = io.StringIO(), io.StringIO()
    tee = console._Tee(screen, log)
    tee.write("rows:  10%\rrows:  50%\rrows: 100%\nnext ")
    tee.write("line\n")
    assert screen.getvalue() == "rows:  10%\rrows:  50%\rrows: 100%\nnext line\n"
    assert log.getvalue() == "rows: 100%\nnext line\n"


def test_quiet_console_sends_info_to_the_full_log(monkeypatch):
    log, screens = io.StringIO(), [io.StringIO(), io.StringIO()]
    logger = logging.getLogger("geor-test-console")
    handlers = [logging.StreamHandler(screen) for screen in screens]  # the record reaches both
    for handler in handlers:
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    monkeypatch.setattr(console, "_log", log)
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    try:
        console.quiet_loggers(("geor-test-console",))
        logger.info("Started a local Ray instance.")
        logger.warning("something to look at")
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
    assert [screen.getvalue() for screen in screens] == ["something to look at\n"] * 2
    assert log.getvalue() == "INFO geor-test-console: Started a local Ray instance.\n"


def test_console_log_keeps_everything_and_puts_everything_back(tmp_path, monkeypatch):
    for name in (*console.QUIET_ENV, console.VERBOSE_ENV):
        monkeypatch.delenv(name, raising=False)
    stdout, root_handlers = sys.stdout, list(logging.getLogger().handlers)
    with pytest.raises(RuntimeError), console.console_log(tmp_path, "demo") as path:
        assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"  # quiet: no save/load bars
        print("a line")
        with console.console_log(tmp_path, "pipeline") as nested:  # the demo runs the pipeline
            assert nested is None
        raise RuntimeError("the reason")
    assert sys.stdout is stdout and console.log_file() is None
    assert list(logging.getLogger().handlers) == root_handlers
    assert not any(isinstance(f, console._InfoToLogFile) for h in root_handlers for f in h.filters)
    assert "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ
    text = path.read_text()
    assert "a line\n" in text and "RuntimeError: the reason" in text


def _run(command: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.mark.usefixtures("ray_cluster")  # another Ray instance runs on this machine meanwhile
def test_pipeline_console_is_short_and_the_full_log_has_the_rest(world_dir, tmp_path):
    root = tmp_path / "root"
    command = [sys.executable, "-m", "flows", "pipeline", "--config", "test", "--only", "prepare"]
    done = _run([*command, "--manifest", str(world_dir / "manifest.csv"), "--output", str(root)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    shown = (done.stdout + done.stderr).splitlines()
    assert len(shown) <= 10, "\n".join(shown)
    text = "\n".join(shown)
    assert "stage 1/6 prepare: running" in text and "stage 1/6 prepare: done" in text
    for noise in ("INFO", "Execution plan", "autoscaler", "Found multiple active Ray instances"):
        assert noise not in text
    (log,) = (root / "logs").glob("geor-pipeline-*.log")
    full = log.read_text()
    assert "Execution plan of Dataset" in full  # Ray Data's INFO lines are kept there
    assert all(line in full for line in done.stdout.splitlines())


STATE_FROM_A_WORKER = """
import ray
from tasks.ray_session import connect_ray, start_train_coordinator

connect_ray()

@ray.remote
def actors_seen_by_a_worker():
    from ray.util.state import list_actors  # how Ray Train's placement-group cleaner asks
    return len(list_actors())

print("actors:", ray.get(actors_seen_by_a_worker.remote()))

from ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client import (
    TrainAutoscalingCoordinatorClient,
)

def coordinator():
    return ray.get_actor("AutoscalingCoordinator", namespace="AutoscalingCoordinator")

try:
    coordinator()
    print("coordinator before: yes")
except ValueError:
    print("coordinator before: no")
start_train_coordinator()
made = coordinator()  # ValueError (exit 1) unless it was made
asked = TrainAutoscalingCoordinatorClient("probe")._autoscaling_coordinator  # the one a controller asks
print("coordinator after: same" if made._actor_id == asked._actor_id else "coordinator after: other")
ray.shutdown()
"""


@pytest.mark.usefixtures("ray_cluster")  # another Ray instance runs on this machine meanwhile
def test_a_local_instance_answers_its_workers_state_queries_and_has_train_coordinator_early(tmp_path):
    """Before: a worker's State API query scanned the machine for Ray instances and failed with
    "Found multiple active Ray instances" (or, alone, warned every second that it had no API).
    And Ray Train's autoscaling coordinator, which a fresh instance lacks, is made before a
    ``fit()`` asks for it (tasks/ray_session.py: the first fit's 5 s wait)."""
    done = _run([sys.executable, "-c", STATE_FROM_A_WORKER], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "actors: " in done.stdout
    assert "Found multiple active Ray instances" not in done.stderr
    assert "coordinator before: no" in done.stdout and "coordinator after: same" in done.stdout
