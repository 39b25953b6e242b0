"""Benchmark `geor sft` on Ray Train against bare TRL + DeepSpeed in one process, same work.

    python benchmarks/sft.py [--steps 200] [--rows 600] [--repeats 3] [--zero-stage 2]

Builds the tiny model and a prepared synthetic world once (``geor make-tiny-model``, ``geor
make-world``, ``geor prepare``, cached under ``--workdir``), then runs, each in its own process
tree and interleaved ``--repeats`` times:

- ``bare``: ``build_sft_trainer`` (the same construction the Ray workers use) + DeepSpeed in one
  process, no Ray (RANK/WORLD_SIZE/MASTER_* set, as a launcher would); exports the model at the end
  like the stage does;
- ``ray_1_worker``: ``tasks.sft.run_sft`` on a fresh local cluster (2 CPUs), 1 worker holding both;
- ``ray_2_workers``: the same, 2 workers of 1 CPU each, per-device batch halved.

Same model, data, DeepSpeed config, global batch and steps everywhere (preset ``test`` plus the
overrides in ``sft_overrides``); no MLflow (``MLFLOW_TRACKING_URI`` unset); checkpoint and eval
intervals beyond ``--steps``, so the only save is the Trainer's final one. Ray's workers run at
nice 0, like the baseline (Ray's default is nice 15, which on a shared machine decides the race).

Per-step time comes from the Trainer itself: a TrainerCallback records a timestamp at every
``on_step_end``; steady state is the mean (and the median) over the steps after ``--warmup``. In
the Ray runs the callback is attached by a thin wrapper around the stage's own worker loop
(``tasks.sft.sft_worker_loop``, unchanged), which writes the timings to a file. Beside wall time
the callback records the training process's CPU seconds and the seconds its threads waited on a
run queue (Linux schedstat): CPU per step is the work itself, whatever else the machine runs; the
wait is what other load took. Each training process runs ``--threads`` torch threads (default 1:
on an oversubscribed 2-core machine two OpenMP threads spin-wait for each other, and a step took
5-10x the CPU it takes alone).

Fixed costs come from the same clock: process start, ``ray.init``, worker group start, model and
data load, DeepSpeed init, export, worker group stop, ``ray.shutdown``. The parent samples the CPU
time of every process of each run's tree (driver, Ray daemons, workers) every 0.5 s:
``cores_during_steady_steps`` shows where CPU goes during the steady-state steps, and
``tree_cpu_s_per_step`` is the whole run's CPU per step, Ray's own processes included.

Prints one JSON object: every run, the median and [min, max] of each configuration, the ratios of
the medians to ``bare``, and ``same_learning`` (every run's train loss must lie within
``sft_report.LOSS_TOLERANCE`` of bare's median: the script exits 1 when one does not). Stop it with
Ctrl-C (SIGINT), which reaches the child and lets a Ray driver shut its cluster down.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.process_tree_cpu import measure  # noqa: E402
from benchmarks.sft_report import compare, summarise  # noqa: E402

PRESET = "test"
RAY_CPUS = 2
CONFIGS = {"bare": 1, "ray_1_worker": 1, "ray_2_workers": 2}  # name -> workers


def sft_overrides(steps: int, workers: int, zero_stage: int, global_batch: int) -> list[str]:
    """The benchmark's settings on top of the ``test`` preset (the same for every configuration)."""
    return [
        f"sft.max_steps={steps}",
        f"sft.eval_steps={steps * 10}",  # no eval and no checkpoint inside the timed steps
        f"sft.save_steps={steps * 10}",
        "sft.logging_steps=25",
        f"sft.global_batch_size={global_batch}",
        f"sft.num_workers={workers}",
        f"sft.cpus_per_worker={RAY_CPUS / workers}",
        f"sft.zero_stage={zero_stage}",
        "sft.max_failures=0",
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_bare(args: argparse.Namespace) -> dict[str, Any]:
    """One process: TRL's SFTTrainer + DeepSpeed as the stage builds it, then the HF export."""
    os.environ.update(
        RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
    )  # fmt: skip
    from benchmarks.step_timer import StepTimer
    from geor_core.config import load_config
    from geor_core.data.dataset import read_prepared
    from geor_core.training.model_loading import apply_lora, load_model, load_processor
    from geor_core.training.sft_setup import SFT_COLUMNS, build_sft_trainer

    timer = StepTimer()
    timer.marks["loop_entry"] = time.time()
    cfg = load_config(PRESET, sft_overrides(args.steps, 1, args.zero_stage, args.global_batch))
    cfg.model.name_or_path = args.model
    processor = load_processor(cfg.model)
    model = apply_lora(load_model(cfg.model), cfg.model.lora)
    train = read_prepared(args.data, "train", SFT_COLUMNS)
    val = read_prepared(args.data, "val", SFT_COLUMNS).slice(0, cfg.sft.val_rows)
    timer.marks["build_start"] = time.time()
    output = Path(args.output)
    trainer = build_sft_trainer(cfg, model, processor, train, val, str(output / "trainer"), [timer])
    metrics = trainer.train().metrics
    trainer.save_model(str(output / "export"))
    processor.save_pretrained(str(output / "export"))
    timer.marks["loop_exit"] = time.time()
    return {"worker": timer.as_dict(), "train_metrics": metrics}


def timed_worker_loop(timings_dir: str) -> Any:
    """The stage's own Ray Train worker loop, with a StepTimer added to the trainer's callbacks and
    the worker's marks written to ``timings_dir/rank<N>.json``."""

    def loop(config: dict[str, Any]) -> None:
        import ray.train

        import geor_core.training.sft_setup as sft_setup
        from benchmarks.step_timer import StepTimer
        from tasks import sft as sft_task

        entered = time.time()
        timer = StepTimer()
        build = sft_setup.build_sft_trainer

        def build_with_timer(*a: Any, **kw: Any) -> Any:
            timer.marks["build_start"] = time.time()
            bound = inspect.signature(build).bind(*a, **kw)
            bound.arguments["callbacks"] = [*(bound.arguments.get("callbacks") or []), timer]
            return build(*bound.args, **bound.kwargs)

        sft_setup.build_sft_trainer = build_with_timer
        sft_task.sft_worker_loop(config)
        record = timer.as_dict()
        record["marks"].update(loop_entry=entered, loop_exit=time.time())
        rank = ray.train.get_context().get_world_rank()
        Path(timings_dir, f"rank{rank}.json").write_text(json.dumps(record))

    return loop


def run_ray(args: argparse.Namespace, marks: dict[str, float]) -> dict[str, Any]:
    """``tasks.sft.run_sft`` unchanged on a fresh local cluster, its worker loop timed."""
    from unittest import mock

    import ray

    from geor_core import uris
    from geor_core.config import load_config
    from tasks import sft as sft_task

    cfg = load_config(PRESET, sft_overrides(args.steps, args.workers, args.zero_stage, args.global_batch))
    timings = Path(args.output) / "timings"
    timings.mkdir(parents=True, exist_ok=True)
    marks["driver_ready"] = time.time()
    from tasks.ray_session import start_local_ray

    start_local_ray(num_cpus=RAY_CPUS, _node_ip_address="127.0.0.1")  # as `geor` starts one
    try:
        marks["ray_ready"] = time.time()
        with mock.patch.object(sft_task, "sft_worker_loop", timed_worker_loop(str(timings))):
            result = sft_task.run_sft(
                cfg, args.data, args.model, str(Path(args.output) / "run"), overwrite=True
            )
        marks["run_returned"] = time.time()
    finally:
        ray.shutdown()
    marks["ray_shutdown"] = time.time()
    marker = uris.read_marker(result.export_uri) or {}
    workers = [json.loads(p.read_text()) for p in sorted(timings.glob("rank*.json"))]
    return {"worker": workers[0], "other_workers": workers[1:], "train_metrics": marker.get("metrics", {}),
            "global_step": result.global_step}  # fmt: skip


def child_main(args: argparse.Namespace) -> None:
    marks = {"launched": args.launched_at}
    record = run_bare(args) if args.child == "bare" else run_ray(args, marks)
    record["marks"] = marks
    Path(args.result).write_text(json.dumps(record))


# ---------------------------------------------------------------- the parent: build, run, report


def build_inputs(work: Path, rows: int, countries: int, env: dict[str, str]) -> tuple[str, str]:
    """The tiny model and a prepared world under ``work`` (built once, reused)."""
    model, world, prepared = (
        work / "model",
        work / f"world-{rows}-{countries}",
        work / f"prepared-{rows}-{countries}",
    )
    steps = [
        (model / "config.json", ["make-tiny-model", "--output", str(model)]),
        (
            world / "manifest.csv",
            ["make-world", "--output", str(world), "--rows", str(rows), "--countries", str(countries)],
        ),
        (
            prepared / "_SUCCESS.json",
            ["prepare", "--manifest", str(world / "manifest.csv"), "--output", str(prepared)],
        ),
    ]
    work.mkdir(parents=True, exist_ok=True)
    log = work / "build.log"
    for done, command in steps:
        if done.exists():
            continue
        with log.open("a") as output:
            built = subprocess.run([sys.executable, "-m", "flows", *command, "--config", PRESET], env=env,
                                   cwd=ROOT, stdout=output, stderr=output)  # fmt: skip
        if built.returncode != 0:
            raise SystemExit(f"geor {command[0]} failed with exit code {built.returncode}; see {log}")
    return str(model), str(prepared)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20, help="steps left out of the steady state")
    parser.add_argument("--rows", type=int, default=600, help="rows of the synthetic world")
    parser.add_argument("--countries", type=int, default=4)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--zero-stage", type=int, choices=(0, 2, 3), default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per training process (OMP_NUM_THREADS); 0: the libraries' defaults "
        "(the bare process takes every core, a Ray worker its cpus_per_worker)",
    )
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"subset of {','.join(CONFIGS)}")
    parser.add_argument("--workdir", default="/tmp/geor-sft-bench")
    parser.add_argument("--child", choices=("bare", "ray"), help=argparse.SUPPRESS)  # one run
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--launched-at", type=float, help=argparse.SUPPRESS)
    for internal in ("--model", "--data", "--output", "--result"):
        parser.add_argument(internal, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return
    if not 0 < args.warmup < args.steps:
        raise SystemExit(f"--warmup {args.warmup} must be between 1 and --steps - 1 ({args.steps - 1})")
    if args.global_batch % 2:
        raise SystemExit(f"--global-batch {args.global_batch} must be even (2 workers share it)")
    names = args.configs.split(",")
    if unknown := set(names) - set(CONFIGS):
        raise SystemExit(f"--configs: unknown {sorted(unknown)}; allowed: {', '.join(CONFIGS)}")

    work = Path(args.workdir)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0", RAY_worker_niceness="0",
               PYTHONPATH=str(ROOT))  # fmt: skip
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    model, data = build_inputs(work, args.rows, args.countries, env)

    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        for name in names:  # interleaved, so drifting load hits every configuration alike
            out = work / f"{name}-{repeat}"
            command = [sys.executable, __file__, "--child", "bare" if name == "bare" else "ray",
                       "--workers", str(CONFIGS[name]), "--model", model, "--data", data, "--output", str(out),
                       "--result", str(work / f"{name}-{repeat}.json"), "--steps", str(args.steps),
                       "--global-batch", str(args.global_batch), "--zero-stage", str(args.zero_stage)]  # fmt: skip
            load_before = os.getloadavg()[0]
            seconds, samples = measure(command, env, work / f"{name}-{repeat}.log")
            record = json.loads((work / f"{name}-{repeat}.json").read_text())
            summary = summarise(record, seconds, samples, args.steps, args.warmup)
            summary["loadavg_1min_before_after"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
            runs[name].append(summary)
            print(
                f"{name} #{repeat}: {summary['steady_s_per_step']} s/step, {seconds:.1f} s", file=sys.stderr
            )

    result: dict[str, Any] = {
        "preset": PRESET,
        "overrides": {
            name: sft_overrides(args.steps, CONFIGS[name], args.zero_stage, args.global_batch)
            for name in names
        },
        "steps": args.steps,
        "warmup_steps_excluded": args.warmup,
        "world_rows": args.rows,
        "torch_threads_per_process": args.threads or "default",
        "cpus": os.cpu_count(),
        "repeats": args.repeats,
        **compare(runs),
        "runs": runs,
    }
    print(json.dumps(result, indent=1))
    if not result.get("same_learning", {}).get("ok", True):
        raise SystemExit(f"the configurations did not learn the same: {result['same_learning']}")


if __name__ == "__main__":
    main()
