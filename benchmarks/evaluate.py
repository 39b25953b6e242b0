"""Benchmark `geor evaluate`'s Ray Data batch inference against a plain single-process loop.

    python benchmarks/evaluate.py [--rows 600] [--actors 1,2] [--cpus-per-actor 0.5] [--threads 1]
                                  [--repeats 3] [--max-new-tokens 96] [--batch-size 16] [--workdir DIR]

Builds (once, in ``--workdir``) the tiny untrained model and a synthetic world of ``--rows``
photos, prepared with `geor prepare`. The untrained model writes ``--max-new-tokens`` tokens for
every photo, so every row costs the same. Then, over the same rows and model:

- ``single_process``: a fresh process imports torch, loads the model and loops over batches
  (load the images, ``geor_core.training.generation.generate``, parse), with torch at ``--threads``
  threads (default 1: on this tiny model more threads are slower, under load much slower);
  seconds are wall time from process start to exit;
- ``ray_data``: tasks.batch_inference.run_sharded_inference (the path `geor evaluate` takes:
  from_arrow -> map_batches over an actor pool -> shards written with markers), for each actor
  count, each actor with ``--cpus-per-actor`` CPUs and one torch thread; seconds include starting
  the actors and loading the model in each (Ray, and Ray Data's one-off set-up, are started
  before the clock: ``ray_start_seconds``).

Rounds alternate the two sides (``--repeats``), so load from other jobs on a shared machine
hits both. Prints one JSON object: every run, the median rows/s of each configuration, and
``ratio`` = best median Ray Data rows/s / best median single-process rows/s (end to end, model
loading included on both sides), and ``steady_ratio``, the same once the models are loaded
(Ray: after the first batch came back; single process: after loading).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _progress(measured: dict) -> dict:
    """Show each measurement on stderr as soon as it is made (a long run can be read as it goes)."""
    print(json.dumps(measured), file=sys.stderr, flush=True)
    return measured


def _median(runs: list[dict], key: str = "rows_per_s") -> float:
    return round(float(statistics.median(run[key] for run in runs)), 2)


def build_inputs(workdir: Path, rows: int) -> tuple[str, str]:
    """(tiny model dir, prepared world URI), built once per workdir."""
    from flows.cli import main

    model, world, prepared = workdir / "tiny-model", workdir / "world", workdir / "prepared"
    if not (model / "config.json").exists():
        assert main(["make-tiny-model", "--output", str(model), "--config", "test"]) == 0
    if not (prepared / "_SUCCESS.json").exists():
        assert (
            main(["make-world", "--output", str(world), "--config", "test", f"data.world_rows={rows}"]) == 0
        )
        assert (
            main(
                [
                    "prepare",
                    "--manifest",
                    str(world / "manifest.csv"),
                    "--output",
                    str(prepared),
                    "--config",
                    "test",
                ]
            )
            == 0
        )
    return str(model), str(prepared)


def single_process_child(
    model_dir: str, prepared: str, threads: int, batch_size: int, max_new_tokens: int
) -> None:
    """The plain loop, in its own fresh process: import, load the model, then batches of images ->
    completions -> parsed. Prints its own timings as JSON."""
    started = time.monotonic()
    import torch

    from geor_core.config import ModelConfig
    from geor_core.data.dataset import read_prepared
    from geor_core.data.images import load_image
    from geor_core.geo.parse import parse_many
    from geor_core.training.generation import generate
    from geor_core.training.model_loading import load_model, load_processor

    torch.set_num_threads(threads)
    rows = read_prepared(prepared, columns=["image"]).column("image").to_pylist()
    model_config = ModelConfig(name_or_path=model_dir)
    model, processor = load_model(model_config, device="cpu"), load_processor(model_config)
    loaded = time.monotonic()
    parsed = 0
    for start in range(0, len(rows), batch_size):
        images = [load_image(uri, model_config) for uri in rows[start : start + batch_size]]
        texts = generate(model, processor, images, max_new_tokens=max_new_tokens)
        parsed += len(parse_many(texts).error)
    assert parsed == len(rows)
    print(
        json.dumps(
            {
                "rows": len(rows),
                "load_seconds": loaded - started,
                "generate_seconds": time.monotonic() - loaded,
            }
        )
    )


def single_process(model_dir: str, prepared: str, threads: int, batch_size: int, max_new_tokens: int) -> dict:
    """Run the plain loop in a fresh process; seconds are wall time from process start to exit."""
    command = [sys.executable, __file__, "--baseline-child", model_dir, prepared, str(threads)]
    command += [str(batch_size), str(max_new_tokens)]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    seconds = time.monotonic() - started
    child = json.loads(done.stdout.strip().splitlines()[-1])
    return _progress(
        {
            "threads": threads,
            "seconds": round(seconds, 2),
            "load_seconds": round(child["load_seconds"], 2),
            "rows_per_s": round(child["rows"] / seconds, 2),
            "generate_rows_per_s": round(child["rows"] / child["generate_seconds"], 2),
        }
    )


def ray_data(model_dir: str, prepared: str, actors: int, cpus: float, overrides: list[str]) -> dict:
    """The `geor evaluate` inference path over the same rows, into a fresh directory."""
    from geor_core.config import load_config
    from geor_core.scoring.predictions import evaluation_predictions
    from tasks.batch_inference import run_sharded_inference
    from tasks.evaluate import evaluation_rows

    cfg = load_config("test", [*overrides, f"eval.num_actors={actors}", f"eval.cpus_per_actor={cpus}"])
    rows = evaluation_rows(prepared, ["train", "val", "test"], 0)
    directory = tempfile.mkdtemp(prefix="geor-bench-eval-")
    try:
        run = run_sharded_inference(
            cfg,
            model_dir,
            rows,
            directory,
            "bench",
            lambda shard, texts, errors: evaluation_predictions(shard, texts, errors, cfg.reward),
        )
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    assert run.rows_computed == rows.num_rows
    return _progress(
        {
            "actors": actors,
            "cpus_per_actor": cpus,
            "seconds": run.seconds,
            "rows_per_s": round(run.rows_per_second, 2),
            "first_result_seconds": run.first_result_seconds,
            "steady_rows_per_s": round(run.steady_rows_per_second or 0.0, 2),
            "shards": run.shards,
        }
    )


def main() -> None:
    if sys.argv[1:2] == ["--baseline-child"]:
        model_dir, prepared, threads, batch_size, max_new_tokens = sys.argv[2:7]
        single_process_child(model_dir, prepared, int(threads), int(batch_size), int(max_new_tokens))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--actors", default="1,2", help="comma-separated actor counts to measure")
    parser.add_argument("--cpus-per-actor", type=float, default=0.5)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", default="1", help="torch threads of the baselines, e.g. 1,2")
    parser.add_argument("--repeats", type=int, default=3, help="rounds, alternating baseline and Ray runs")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "geor-bench-evaluate"))
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir, prepared = build_inputs(workdir, args.rows)

    from geor_core.data.dataset import read_prepared

    rows = read_prepared(prepared, columns=["image"]).num_rows
    import ray

    started = time.monotonic()
    # A private cluster: a bare ray.init() would join any cluster already running on the machine.
    ray_dir = tempfile.mkdtemp(prefix="geor-bench-ray-", dir="/tmp")
    ray.init(address="local", include_dashboard=False, log_to_driver=False, _temp_dir=ray_dir)
    ray.data.range(1).materialize()  # Ray Data's one-off set-up (its stats actor) counts as start-up
    ray_start = time.monotonic() - started
    overrides = [
        f"eval.max_new_tokens={args.max_new_tokens}",
        f"eval.batch_size={args.batch_size}",
        "eval.rows_per_shard=128",
    ]
    baseline: dict[int, list[dict]] = {int(t): [] for t in args.threads.split(",")}
    pooled: dict[int, list[dict]] = {int(n): [] for n in args.actors.split(",")}
    try:  # rounds alternate the two sides, so a busy moment on a shared machine hits both
        for _ in range(args.repeats):
            for threads, runs in baseline.items():
                runs.append(
                    single_process(model_dir, prepared, threads, args.batch_size, args.max_new_tokens)
                )
            for actors, runs in pooled.items():
                runs.append(ray_data(model_dir, prepared, actors, args.cpus_per_actor, overrides))
    finally:
        ray.shutdown()
        shutil.rmtree(ray_dir, ignore_errors=True)
    baseline_best = {t: _median(runs) for t, runs in baseline.items()}
    pooled_best = {n: _median(runs) for n, runs in pooled.items()}
    best_single = max(baseline_best.values())
    best_ray = max(pooled_best.values())
    steady_single = max(_median(runs, "generate_rows_per_s") for runs in baseline.values())
    steady_ray = max(_median(runs, "steady_rows_per_s") for runs in pooled.values())
    print(
        json.dumps(
            {
                "rows": rows,
                "model": "tiny untrained (1.24M parameters), every row generates max_new_tokens",
                "max_new_tokens": args.max_new_tokens,
                "batch_size": args.batch_size,
                "cpus": os.cpu_count(),
                "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                "repeats": args.repeats,
                "single_process_rows_per_s_median": {f"threads_{t}": v for t, v in baseline_best.items()},
                "ray_data_rows_per_s_median": {f"actors_{n}": v for n, v in pooled_best.items()},
                "ray_start_seconds": round(ray_start, 2),
                "single_process_runs": [run for runs in baseline.values() for run in runs],
                "ray_data_runs": [run for runs in pooled.values() for run in runs],
                "ratio": round(best_ray / best_single, 3),
                "steady_ratio": round(steady_ray / steady_single, 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
