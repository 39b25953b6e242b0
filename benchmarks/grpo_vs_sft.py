"""GRPO against an equal-compute continued-SFT control, from the same SFT checkpoint.

    python benchmarks/grpo_vs_sft.py [--rows 1500] [--countries 4] [--ambiguous-share 0.3]
                                     [--sft-steps 300] [--grpo-steps 100] [--samples 4]

Builds (cached under ``--workdir``) the tiny model and a synthetic world with graded ambiguity
(``data.world_ambiguous_share``: a share of photos lose the position marker or get a faint state
texture, so the one exact answer is not the distance-optimal guess: docs/design.md says that is where
GRPO's distance reward has an edge), prepares it and fine-tunes the SFT start. Then, each from
that SFT export, on one local 2-CPU Ray cluster through the product's own stages:

- ``+GRPO product``: ``tasks.grpo.run_grpo``, the paper's reward (distance x format);
- ``+GRPO weighted_sum``: the same with ``reward.mode=weighted_sum`` (0.6 distance + 0.1 format
  + 0.3 region, region from the names the answer gives);
- ``+continued SFT``: ``tasks.sft.run_sft`` for as many steps as fit in the SAME WALL-CLOCK
  TRAINING TIME as the slower GRPO arm (its ``train_runtime``), at the s/step the SFT start
  measured on this machine. Equal compute = equal training seconds on the same machine: what a
  user gets for the same CPU time. (GRPO spends most of a step generating, so the control does
  several times more optimizer steps.)

Every model is evaluated on the held-out val + test rows (unseen settlements): greedy decoding,
and ``--samples`` completions per row at ``grpo.temperature`` (fixed seeds), each with the field's
metrics (acc@25/200/750 km, median km, state match) plus the sampled mean of the paper's reward
(distance x format) for every arm. Prints one JSON object (settings, load average, rows, verdict)
and the table in Markdown on stderr. The verdict answers the question: does a GRPO arm beat
the control on greedy median km? If none does, it says so.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PRESET = "learning"  # configs/learning.yaml: the GRPO learning test's settings, on the test preset
ARMS = {
    "+GRPO product": ["reward.mode=product"],
    "+GRPO weighted_sum": ["reward.mode=weighted_sum", "reward.w_region=0.3", "reward.region_source=text"],
}


def build_start(work: Path, args: argparse.Namespace, env: dict[str, str]) -> tuple[str, str, str]:
    """Tiny model, ambiguous world, prepared rows and the SFT start (each skipped when done)."""
    tag = f"{args.rows}-{args.countries}-{args.ambiguous_share}"
    model, world, prepared, sft = (
        work / "model",
        work / f"world-{tag}",
        work / f"prepared-{tag}",
        work / f"sft-{tag}",
    )
    steps = [
        (model / "config.json", ["make-tiny-model", "--output", str(model)]),
        (world / "manifest.csv", ["make-world", "--output", str(world), "--rows", str(args.rows),
                                  "--countries", str(args.countries),
                                  f"data.world_ambiguous_share={args.ambiguous_share}"]),
        (prepared / "_SUCCESS.json", ["prepare", "--manifest", str(world / "manifest.csv"), "--output", str(prepared)]),
        (sft / "model" / "config.json", ["sft", "--data", str(prepared), "--model", str(model), "--output", str(sft),
                                         f"sft.max_steps={args.sft_steps}"]),
    ]  # fmt: skip
    for done, command in steps:
        if not done.exists():
            subprocess.run([sys.executable, "-m", "flows", *command, "--config", PRESET], check=True,
                           env=env, cwd=ROOT, stdout=subprocess.DEVNULL)  # fmt: skip
    return str(model), str(prepared), str(sft / "model")


def evaluate_model(model_uri: str, rows: Any, cfg: Any, samples: int) -> dict[str, Any]:
    """Greedy and sampled metrics of one model on ``rows`` (generation on one torch thread)."""
    from geor_core.config import RewardConfig
    from geor_core.training.sampled_reward import completion_metrics, score_policy

    # the paper's reward (distance x format) for every arm, whatever the arm trained on
    greedy, sampled = score_policy(model_uri, rows, cfg, samples, reward=RewardConfig(mode="product"))
    sampled_metrics = completion_metrics(sampled.completions, rows) | {"paper_reward": sampled.combined}
    return {"greedy": greedy, "sampled": sampled_metrics}


def stage_seconds(metrics: dict[str, Any]) -> float:
    return float(metrics["train_runtime"])


def table(rows: list[dict[str, Any]]) -> str:
    """The results as a Markdown table."""
    keys = [("acc_25km", "@25"), ("acc_200km", "@200"), ("acc_750km", "@750"), ("median_km", "median km"),
            ("state_match_rate", "state %")]  # fmt: skip
    head = ["model", "train s", "steps"]
    head += [f"greedy {label}" for _, label in keys] + [f"sampled {label}" for _, label in keys]
    head += ["sampled reward"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["model"], f"{row['train_s']:.0f}", str(row["steps"])]
        for mode in ("greedy", "sampled"):
            for key, _ in keys:
                value = row[mode][key]
                cells.append("-" if value is None else f"{value:.1f}")
        cells.append(f"{row['sampled']['paper_reward']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1500)
    parser.add_argument("--countries", type=int, default=4)
    parser.add_argument("--ambiguous-share", type=float, default=0.3)
    parser.add_argument("--sft-steps", type=int, default=300)
    parser.add_argument("--grpo-steps", type=int, default=100)
    parser.add_argument("--samples", type=int, default=4, help="sampled completions per held-out row")
    parser.add_argument("--seed", type=int, default=0, help="grpo.seed and sft.seed of the arms")
    parser.add_argument("--workdir", default="/tmp/geor-grpo-vs-sft")
    args = parser.parse_args()
    started, load_start = time.time(), os.getloadavg()

    os.environ.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(ROOT)}
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    _, data, sft_start = build_start(work, args, env)

    import pyarrow as pa
    import ray

    from geor_core import uris
    from geor_core.config import load_config
    from geor_core.data.dataset import read_prepared
    from geor_core.training.grpo_setup import GRPO_COLUMNS

    tag = f"{args.rows}-{args.countries}-{args.ambiguous_share}-s{args.seed}-g{args.grpo_steps}"
    start_marker = uris.read_marker(sft_start) or {}
    sft_s_per_step = stage_seconds(start_marker["metrics"]) / start_marker["global_step"]
    results: list[dict[str, Any]] = [{"model": "SFT start", "train_s": 0.0, "steps": 0, "export": sft_start}]
    grpo_settings = [f"grpo.max_steps={args.grpo_steps}", f"grpo.eval_steps={args.grpo_steps}",
                     f"grpo.save_steps={args.grpo_steps}", f"grpo.seed={args.seed}", "grpo.logging_steps=25"]  # fmt: skip
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON
            control, arms = train_arms(work, data, sft_start, grpo_settings, tag, args.seed, sft_s_per_step)
    finally:
        ray.shutdown()
    results += [control, *arms]

    cfg = load_config(PRESET, grpo_settings)
    rows = pa.concat_tables([read_prepared(data, split, GRPO_COLUMNS) for split in ("val", "test")])
    for row in results:
        row.update(evaluate_model(row["export"], rows, cfg, args.samples))
        print(f"evaluated {row['model']}", file=sys.stderr)

    control_median = results[1]["greedy"]["median_km"]
    verdict = {
        row["model"]: bool(
            row["greedy"]["median_km"] is not None and row["greedy"]["median_km"] < control_median
        )
        for row in results[2:]
    }
    markdown = table(results)
    print(markdown, file=sys.stderr)
    print(json.dumps({
        "world": {"rows": args.rows, "countries": args.countries, "ambiguous_share": args.ambiguous_share},
        "held_out_rows": rows.num_rows,
        "samples_per_row": args.samples,
        "sft_start_steps": start_marker["global_step"],
        "sft_s_per_step": round(sft_s_per_step, 4),
        "equal_compute": "same wall-clock training seconds as the slower GRPO arm (train_runtime)",
        "grpo_settings": grpo_settings,
        "arms": ARMS,
        "grpo_beats_control_on_greedy_median_km": verdict,
        "verdict": "GRPO beats the control on greedy median km" if any(verdict.values())
        else "no GRPO arm beat the equal-compute SFT control on greedy median km",
        "loadavg_start_end": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
        "seconds": round(time.time() - started, 1),
        "rows": results,
        "table_markdown": markdown,
    }, indent=1, default=float))  # fmt: skip


def train_arms(
    work: Path,
    data: str,
    sft_start: str,
    grpo_settings: list[str],
    tag: str,
    seed: int,
    sft_s_per_step: float,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The GRPO arms, then the continued-SFT control given the slower arm's training seconds."""
    from geor_core.config import load_config
    from tasks.grpo import run_grpo
    from tasks.sft import run_sft

    arms = []
    for name, reward in ARMS.items():
        cfg = load_config(PRESET, [*grpo_settings, *reward])
        result = run_grpo(cfg, data, sft_start, str(work / f"grpo-{name.split()[-1]}-{tag}"))
        arms.append({"model": name, "train_s": stage_seconds(result.metrics), "steps": result.global_step,
                     "export": result.export_uri, "settings": cfg_keys(cfg)})  # fmt: skip
    steps = max(1, math.ceil(max(arm["train_s"] for arm in arms) / sft_s_per_step))
    settings = [
        f"sft.max_steps={steps}",
        f"sft.seed={seed}",
        "sft.eval_steps=100000",
        "sft.save_steps=100000",
    ]
    result = run_sft(load_config(PRESET, settings), data, sft_start, str(work / f"control-{tag}-{steps}"))
    control = {"model": "+continued SFT", "train_s": stage_seconds(result.metrics), "steps": result.global_step,
               "export": result.export_uri}  # fmt: skip
    return control, arms


def cfg_keys(cfg: Any) -> dict[str, Any]:
    """The GRPO and reward settings an arm ran with."""
    g, r = cfg.grpo, cfg.reward
    return {"lr": g.learning_rate, "beta": g.beta, "G": g.num_generations, "batch": g.per_device_batch_size,
            "temperature": g.temperature, "reward": r.mode, "w": [r.w_distance, r.w_format, r.w_region]}  # fmt: skip


if __name__ == "__main__":
    main()
