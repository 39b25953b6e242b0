"""GRPO learning, measured honestly: from the session's shared SFT checkpoint on the synthetic world,
the SAMPLED policy's mean combined reward must rise, over training (TRL's own train log) and on
held-out rows (measured here, independently of TRL). Greedy metrics are printed beside it as JSON,
never asserted: docs/design.md records that GRPO on this world raises the sampled reward while greedy
accuracy may drift (the policy hedges toward a country's centre).

The held-out measure: geor_core.training.sampled_reward (the same code as `geor evaluate`'s
``sampled_reward`` column), ``SAMPLES_PER_ROW`` completions per val and test row (fixed seeds,
temperature ``grpo.temperature``) from the SFT export and from the GRPO export, scored with the
run's reward config; the means are compared with a margin (``MIN_HELD_OUT_GAIN``), not a bare
``>``. The settings and the margin come from repeated measurement (docs/benchmarks.md, "Does GRPO
learn?"; benchmarks/grpo_vs_sft.py has the cross-seed runs).
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from geor_core import uris
from geor_core.config import GeorConfig, load_config
from geor_core.data.dataset import read_prepared
from geor_core.training.grpo_setup import GRPO_COLUMNS
from geor_core.training.sampled_reward import greedy_metrics, load_policy, sampled_reward, single_torch_thread
from tasks.grpo import run_grpo

# The learning run: 4 prompts x G = 4 per step, a learning rate the tiny model moves at in 60
# steps (10% warm-up), the paper's beta and temperature; one validation and one checkpoint, at the end.
# TRL logs the train reward every LOG_EVERY steps: four windows.
STEPS = 60
LOG_EVERY = 15
LEARNING = [
    f"grpo.max_steps={STEPS}",
    "grpo.per_device_batch_size=16",
    "grpo.num_generations=4",
    "grpo.learning_rate=3e-4",
    "grpo.warmup_ratio=0.1",
    "grpo.beta=0.04",
    f"grpo.logging_steps={LOG_EVERY}",
    f"grpo.eval_steps={STEPS}",
    f"grpo.save_steps={STEPS}",
    "grpo.seed=0",
]
SAMPLES_PER_ROW = 8
MIN_HELD_OUT_GAIN = 0.03  # mean combined reward (0..1) of sampled completions on val + test
MIN_TRAIN_LOG_GAIN = 0.02  # TRL's train reward: last logging window minus the first full one


def held_out_rows(data_uri: str) -> pa.Table:
    """The val and test rows: settlements the training split never shows."""
    return pa.concat_tables([read_prepared(data_uri, split, GRPO_COLUMNS) for split in ("val", "test")])


def policy_scores(model_uri: str, rows: pa.Table, cfg: GeorConfig) -> dict[str, Any]:
    """Sampled mean combined reward (and its parts) and greedy metrics of the model at ``model_uri``."""
    model, processor = load_policy(model_uri, cfg)
    with single_torch_thread():
        sampled = sampled_reward(model, processor, rows, cfg, SAMPLES_PER_ROW)
        greedy = greedy_metrics(model, processor, rows, cfg)
    return {"sampled": sampled.summary(), "greedy": greedy}


def train_reward_windows(log_history: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """(step, mean train reward over the logging window ending there), first-step entry excluded."""
    return [
        (entry["step"], entry["reward"]) for entry in log_history if "reward" in entry and entry["step"] > 1
    ]


def test_grpo_raises_the_sampled_policys_reward_over_training_and_on_held_out_rows(
    sft_checkpoint, prepared_world, tmp_path
):
    cfg = load_config("test", LEARNING)
    rows = held_out_rows(prepared_world)
    before = policy_scores(sft_checkpoint.export_uri, rows, cfg)

    result = run_grpo(cfg, prepared_world, sft_checkpoint.export_uri, str(tmp_path))
    assert result.global_step == STEPS
    after = policy_scores(result.export_uri, rows, cfg)

    windows = train_reward_windows(uris.read_marker(result.export_uri)["log_history"])
    report = {
        "held_out_rows": rows.num_rows,
        "samples_per_row": SAMPLES_PER_ROW,
        "settings": LEARNING,
        "sft": before,
        "grpo": after,
        "sampled_gain": after["sampled"]["combined"] - before["sampled"]["combined"],
        "train_reward_by_window": windows,
    }
    print(json.dumps(report, indent=1, default=float))  # greedy metrics reported, not asserted

    assert report["sampled_gain"] >= MIN_HELD_OUT_GAIN, report
    assert len(windows) == STEPS // LOG_EVERY, windows
    assert windows[-1][1] - windows[0][1] >= MIN_TRAIN_LOG_GAIN, windows
