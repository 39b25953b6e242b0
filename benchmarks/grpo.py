"""Benchmark `geor grpo` on Ray Train against bare TRL GRPOTrainer + DeepSpeed in one process, same work.

    python benchmarks/grpo.py [--steps 30] [--warmup 5] [--repeats 3] [--threads 1]

Builds the tiny model, a prepared synthetic world and a short SFT checkpoint to start from (cached
under ``--workdir``), then runs, each in its own process and interleaved ``--repeats`` times:

- ``bare``: ``geor_core.training.grpo_setup.build_grpo_trainer`` (the construction the Ray workers use) +
  DeepSpeed in one process, no Ray (RANK/WORLD_SIZE/MASTER_* set as a launcher would), rewards
  scored in-process by geor_core.scoring.rewards; the HF export at the end, like the stage;
- ``ray_1_worker``: ``tasks.grpo.run_grpo`` unchanged on a fresh local cluster (2 CPUs): one
  worker, rewards from its Ray reward-actor pool;
- ``ray_2_workers``: the same with 2 workers, the per-device batch halved (same global batch).

Same model, data, DeepSpeed config (ZeRO-2), global batch (prompts x G), steps and torch threads
per training process (``OMP_NUM_THREADS``) everywhere; no MLflow; validation and checkpoint
intervals beyond ``--steps``. Ray's workers run at nice 0 like the baseline.

Per-step time is the Trainer's own: ``step_time`` in ``log_history`` (``logging_steps=1``), mean
over the steps after ``--warmup``. The fixed cost is the rest of the process's wall clock
(``end_to_end - steps x per-step``: imports, ``ray.init``, worker group, model/data load,
DeepSpeed init, export, teardown). The reward share is ``timing/reward_s / step_time`` over the
same steps (the board's timer around each scorer call: in-process numpy for ``bare``, a Ray
actor round trip for the Ray runs). The 1-minute load average before and after each run is
reported: on a shared machine it explains outliers. Each figure is reported as the median of the
repeats with [min, max]; the ratios are of the medians. Every configuration must learn the same:
its median mean train reward (TRL's ``reward`` over all steps, same seed and data) within
``REWARD_TOLERANCE`` of bare's, else the script exits 1. Prints one JSON object; stop it with
Ctrl-C (SIGINT), which lets a Ray driver shut its cluster down.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.repeats import median_and_spread  # noqa: E402

PRESET = "test"
RAY_CPUS = 2
CONFIGS = {"bare": 1, "ray_1_worker": 1, "ray_2_workers": 2}  # name -> workers
REWARD_ACTOR_CPUS = 0.25
# absolute, on the mean combined train reward (0..1). One Ray worker matches bare exactly (0.5941 both,
# 12 steps, 2026-12-02); two workers shard the prompts differently, so they sample other completions.
REWARD_TOLERANCE = 0.05


def grpo_overrides(steps: int, workers: int, global_batch: int, generations: int) -> list[str]:
    """The benchmark's settings on top of the ``test`` preset (the same work for every configuration).
    Workers and reward actors together ask for exactly the cluster's 2 CPUs."""
    return [
        f"grpo.max_steps={steps}",
        f"grpo.eval_steps={steps * 10}",  # no validation and no checkpoint inside the timed steps
        f"grpo.save_steps={steps * 10}",
        "grpo.logging_steps=1",
        f"grpo.per_device_batch_size={global_batch // workers}",
        f"grpo.num_generations={generations}",
        f"grpo.num_workers={workers}",
        f"grpo.cpus_per_worker={(RAY_CPUS - workers * REWARD_ACTOR_CPUS) / workers}",
        f"grpo.reward_actor_cpus={REWARD_ACTOR_CPUS}",
        "grpo.learning_rate=2e-4",
        "grpo.max_failures=0",
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_bare(args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    """One process: TRL's GRPOTrainer + DeepSpeed as the stage builds it, then the HF export."""
    os.environ.update(
        RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
    )  # fmt: skip
    from geor_core.config import load_config
    from geor_core.data.dataset import read_prepared
    from geor_core.scoring.rewards import score_completions
    from geor_core.training.grpo_setup import GRPO_COLUMNS, build_grpo_trainer
    from geor_core.training.model_loading import load_model, load_processor

    cfg = load_config(PRESET, overrides)
    processor, model = load_processor(args.model), load_model(args.model)
    train = read_prepared(args.data, "train", GRPO_COLUMNS)
    val = read_prepared(args.data, "val", GRPO_COLUMNS).slice(0, cfg.grpo.val_rows)

    def scorer(completions: list, truth: Any) -> dict:
        return score_completions(completions, truth, cfg.reward)

    output = Path(args.output)
    trainer, _ = build_grpo_trainer(cfg, model, processor, train, val, str(output / "trainer"), scorer)
    trainer.train()
    trainer.save_model(str(output / "export"))
    processor.save_pretrained(str(output / "export"))
    return {"log_history": trainer.state.log_history, "global_step": trainer.state.global_step}


def run_ray(args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    """``tasks.grpo.run_grpo`` unchanged on a fresh local 2-CPU cluster."""
    import ray

    from geor_core import uris
    from geor_core.config import load_config
    from tasks.grpo import run_grpo

    cfg = load_config(PRESET, overrides)
    from tasks.ray_session import start_local_ray

    start_local_ray(num_cpus=RAY_CPUS, _node_ip_address="127.0.0.1")  # as `geor` starts one
    try:
        result = run_grpo(cfg, args.data, args.model, str(Path(args.output) / "run"), overwrite=True)
    finally:
        ray.shutdown()
    marker = uris.read_marker(result.export_uri) or {}
    return {"log_history": marker.get("log_history", []), "global_step": result.global_step}


def child_main(args: argparse.Namespace) -> None:
    overrides = grpo_overrides(args.steps, args.workers, args.global_batch, args.generations)
    record = run_bare(args, overrides) if args.child == "bare" else run_ray(args, overrides)
    Path(args.result).write_text(json.dumps(record, default=float))


# ---------------------------------------------------------------- the parent: build, run, report


def build_inputs(work: Path, env: dict[str, str]) -> tuple[str, str]:
    """The tiny model, a prepared world (test preset sizes) and an SFT export to start GRPO from."""
    model, world, prepared, sft = work / "model", work / "world", work / "prepared", work / "sft"
    steps = [
        (model / "config.json", ["make-tiny-model", "--output", str(model)]),
        (world / "manifest.csv", ["make-world", "--output", str(world)]),
        (prepared / "_SUCCESS.json", ["prepare", "--manifest", str(world / "manifest.csv"), "--output", str(prepared)]),
        (sft / "model" / "config.json", ["sft", "--data", str(prepared), "--model", str(model), "--output", str(sft)]),
    ]  # fmt: skip
    for done, command in steps:
        if not done.exists():
            subprocess.run([sys.executable, "-m", "flows", *command, "--config", PRESET], check=True,
                           env=env, cwd=ROOT, stdout=subprocess.DEVNULL)  # fmt: skip
    return str(sft / "model"), str(prepared)


def run_child(command: list[str], env: dict[str, str], log: Path) -> float:
    """Run one configuration in its own process group; its wall seconds. Ctrl-C reaches the child."""
    started = time.time()
    with log.open("w") as output:
        proc = subprocess.Popen(
            command, stdout=output, stderr=output, env=env, cwd=ROOT, start_new_session=True
        )
    try:
        proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        raise
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit code {proc.returncode}; see {log}")
    return time.time() - started


def summarise(record: dict[str, Any], seconds: float, steps: int, warmup: int) -> dict[str, Any]:
    """Per-step time, reward share and fixed cost of one run, from the Trainer's own step logs."""
    logged = [e for e in record["log_history"] if "step_time" in e]
    if record["global_step"] != steps or len(logged) != steps:
        raise SystemExit(
            f"expected {steps} logged steps, got {len(logged)} (global step {record['global_step']})"
        )
    steady = logged[warmup:]
    step_times = np.array([e["step_time"] for e in steady])
    reward_s = np.array([e.get("timing/reward_s", 0.0) for e in steady])
    generation_s = np.array([e.get("timing/generation_s", 0.0) for e in steady])
    per_step = float(step_times.mean())
    return {
        "steady_s_per_step": round(per_step, 4),
        "median_s_per_step": round(float(np.median(step_times)), 4),
        "first_steps_s": round(sum(e["step_time"] for e in logged[:warmup]), 2),
        "reward_share_of_step": round(float(reward_s.sum() / step_times.sum()), 5),
        "reward_ms_per_step": round(float(reward_s.mean()) * 1000, 2),
        "generation_share_of_step": round(float(generation_s.sum() / step_times.sum()), 3),
        "end_to_end_s": round(seconds, 2),
        "fixed_s": round(seconds - per_step * steps, 2),
        "train_reward": round(float(np.mean([e["reward"] for e in logged])), 5),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the steady state")
    parser.add_argument("--global-batch", type=int, default=16, help="completions per step (prompts x G)")
    parser.add_argument("--generations", type=int, default=4, help="G, completions per prompt")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per training process")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"subset of {','.join(CONFIGS)}")
    parser.add_argument("--workdir", default="/tmp/geor-grpo-bench")
    for hidden in ("--child", "--model", "--data", "--output", "--result", "--workers"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.workers = int(args.workers)
        child_main(args)
        return
    if not 0 < args.warmup < args.steps:
        raise SystemExit(f"--warmup {args.warmup} must be between 1 and --steps - 1 ({args.steps - 1})")
    if args.global_batch % (2 * args.generations):
        raise SystemExit(f"--global-batch {args.global_batch} must be a multiple of 2 x --generations")
    names = args.configs.split(",")
    if unknown := set(names) - set(CONFIGS):
        raise SystemExit(f"--configs: unknown {sorted(unknown)}; allowed: {', '.join(CONFIGS)}")

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0", RAY_worker_niceness="0",
               PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads))  # fmt: skip
    model, data = build_inputs(work, env)

    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        for name in names:  # interleaved, so drifting load hits every configuration alike
            result_file = work / f"{name}-{repeat}.json"
            command = [sys.executable, __file__, "--child", "bare" if name == "bare" else "ray",
                       "--workers", str(CONFIGS[name]), "--model", model, "--data", data,
                       "--output", str(work / f"{name}-{repeat}"), "--result", str(result_file),
                       "--steps", str(args.steps), "--global-batch", str(args.global_batch),
                       "--generations", str(args.generations)]  # fmt: skip
            load_before = os.getloadavg()[0]
            seconds = run_child(command, env, work / f"{name}-{repeat}.log")
            summary = summarise(json.loads(result_file.read_text()), seconds, args.steps, args.warmup)
            summary["loadavg_1min_before_after"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
            runs[name].append(summary)
            print(
                f"{name} #{repeat}: {summary['steady_s_per_step']} s/step, {seconds:.1f} s", file=sys.stderr
            )

    keys = ("steady_s_per_step", "median_s_per_step", "end_to_end_s", "fixed_s", "reward_share_of_step",
            "train_reward")  # fmt: skip
    median, spread = median_and_spread(runs, keys)
    result: dict[str, Any] = {
        "preset": PRESET,
        "overrides": {
            name: grpo_overrides(args.steps, CONFIGS[name], args.global_batch, args.generations)
            for name in names
        },
        "steps": args.steps,
        "warmup_steps_excluded": args.warmup,
        "torch_threads_per_process": args.threads,
        "cpus": os.cpu_count(),
        "repeats": args.repeats,
        "median": median,
        "spread": spread,
        "targets": {"ray_1_worker/bare per step": "<= 1.15", "reward share of a step": "< 0.02"},
    }
    if "bare" in median:
        base = median["bare"]
        for name in (n for n in names if n != "bare"):
            result[f"{name}/bare"] = {
                "per_step": round(median[name]["steady_s_per_step"] / base["steady_s_per_step"], 3),
                "per_step_median": round(median[name]["median_s_per_step"] / base["median_s_per_step"], 3),
                "end_to_end": round(median[name]["end_to_end_s"] / base["end_to_end_s"], 3),
            }
        rewards = {name: median[name]["train_reward"] for name in names}
        off = [
            name for name, reward in rewards.items() if abs(reward - base["train_reward"]) > REWARD_TOLERANCE
        ]
        result["same_learning"] = {"train_reward": rewards, "tolerance": REWARD_TOLERANCE, "ok": not off}
    result["runs"] = runs
    print(json.dumps(result, indent=1))
    if not result.get("same_learning", {}).get("ok", True):
        raise SystemExit(f"the configurations did not learn the same: {result['same_learning']}")


if __name__ == "__main__":
    main()
