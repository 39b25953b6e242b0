"""GRPO learning, measured honestly: from the session's shared SFT checkpoint on the synthetic world,
the SAMPLED policy's mean combined reward must rise, over training (TRL's own train log) and on
held-out rows (measured here, independently of TRL). Greedy metrics are printed beside it as JSON,
never asserted: docs/design.md records that GRPO on this world raises the sampled reward while greedy
accuracy may drift (the policy hedges toward a country's centre).

The held-out measure: geor_core.training.sampled_reward (the same code as `geor evaluate`'s
``sampled_reward`` column), ``SAMPLES_PER_ROW`` completions per val and test row (fixed seeds,
temperature ``grpo.temperature``) from the SFT export and from the GRPO export, scored with the
run's reward config; the means are compared with a margin (``MIN_HELD_OUT_GAIN``), not a bare
``>``. The SFT start is scored on this process's thread pool while GRPO trains on its Ray Train
worker: generation takes one torch thread, the worker another core. The settings and the margin
come from repeated measurement (docs/benchmarks.md, "Does GRPO learn?").
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa

from geor_core import uris
from geor_core.config import GeorConfig, load_config
from geor_core.data.dataset import read_prepared
from geor_core.training.grpo_setup import GRPO_COLUMNS
from geor_core.training.sampled_reward import score_policy
from tasks.grpo import run_grpo

PRESET = "learning"  # configs/learning.yaml: the settings, which configs/looks.yaml builds on
SAMPLES_PER_ROW = 8
MIN_HELD_OUT_GAIN = 0.03  # mean combined reward (0..1) of sampled completions on val + test
MIN_TRAIN_LOG_GAIN = 0.02  # TRL's train reward: last logging window minus the first full one


def held_out_rows(data_uri: str) -> pa.Table:
    """The val and test rows: settlements the training split never shows."""
    return pa.concat_tables([read_prepared(data_uri, split, GRPO_COLUMNS) for split in ("val", "test")])


def policy_scores(model_uri: str, rows: pa.Table, cfg: GeorConfig) -> dict[str, Any]:
    """Sampled mean combined reward (and its parts) and greedy metrics of the model at ``model_uri``."""
    greedy, sampled = score_policy(model_uri, rows, cfg, SAMPLES_PER_ROW)
    return {"sampled": sampled.summary(), "greedy": greedy}


def train_reward_windows(log_history: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """(step, mean train reward over the logging window ending there), first-step entry excluded."""
    return [
        (entry["step"], entry["reward"]) for entry in log_history if "reward" in entry and entry["step"] > 1
    ]


def test_grpo_raises_the_sampled_policys_reward_over_training_and_on_held_out_rows(
    sft_checkpoint, prepared_world, tmp_path
):
    cfg = load_config(PRESET)
    rows = held_out_rows(prepared_world)
    with ThreadPoolExecutor(max_workers=1) as pool:
        scoring_the_start = pool.submit(policy_scores, sft_checkpoint.export_uri, rows, cfg)
        result = run_grpo(cfg, prepared_world, sft_checkpoint.export_uri, str(tmp_path))
        before = scoring_the_start.result()
    assert result.global_step == cfg.grpo.max_steps
    after = policy_scores(result.export_uri, rows, cfg)

    windows = train_reward_windows(uris.read_marker(result.export_uri)["log_history"])
    report = {
        "held_out_rows": rows.num_rows,
        "samples_per_row": SAMPLES_PER_ROW,
        "preset": PRESET,
        "sft": before,
        "grpo": after,
        "sampled_gain": after["sampled"]["combined"] - before["sampled"]["combined"],
        "train_reward_by_window": windows,
    }
    print(json.dumps(report, indent=1, default=float))  # greedy metrics reported, not asserted

    assert report["sampled_gain"] >= MIN_HELD_OUT_GAIN, report
    assert len(windows) == cfg.grpo.max_steps // cfg.grpo.logging_steps, windows
    assert windows[-1][1] - windows[0][1] >= MIN_TRAIN_LOG_GAIN, windows
