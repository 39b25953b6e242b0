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
  count, each actor with ``--cpus-per-actor`` CPUs and one torch thread, on a private Ray
  instance started and stopped inside the clock (``ray.init`` to ``ray.shutdown``), as a
  one-model `geor evaluate` pays it.

Rounds alternate the two sides (``--repeats``), so load from other jobs on a shared machine
hits both. Prints one JSON object: the load average at the start and the end, every run, the
median and spread (min, max) of rows/s of each configuration, and ``ratio`` = best median Ray
Data rows/s / best median single-process rows/s (end to end: process or Ray start, model loading
and writing included), and ``steady_ratio``, the same once the models are loaded (Ray: after the
first batch came back; single process: after loading). Exits 1 when the two sides' outputs
differ: each run's rows must be every input row, and greedy decoding must give the same
completion for a row on both sides (``identical_completions`` is the share that did).
The world is built once per ``--rows`` under ``--workdir`` (``rows-<N>/``); a folder built with
other settings (another version of the test preset) is refused, not reused.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.repeats import median_and_spread  # noqa: E402


def _progress(measured: dict) -> dict:
    """Show each measurement on stderr as soon as it is made (a long run can be read as it goes)."""
    print(json.dumps(measured), file=sys.stderr, flush=True)
    return measured


COMPLETIONS: dict[str, list[str]] = {}  # the latest run's completions of each side, in row order


def build_inputs(workdir: Path, rows: int) -> tuple[str, str]:
    """(tiny model dir, prepared world URI) under ``workdir``. Each `geor` step keeps a complete
    output made with the same settings (so a rerun costs seconds) and refuses one made with other
    settings, so a stale world is never used silently. What they print goes to stderr."""
    from flows.cli import main

    model, world, prepared = workdir / "tiny-model", workdir / "world", workdir / "prepared"
    for step in (
        ["make-tiny-model", "--config", "test", "--output", str(model)],
        ["make-world", "--config", "test", "--output", str(world), f"data.world_rows={rows}"],
        ["prepare", "--config", "test", "--manifest", str(world / "manifest.csv"), "--output", str(prepared)],
    ):
        with contextlib.redirect_stdout(sys.stderr):  # stdout is for the result's JSON only
            code = main(step)
        if code != 0:
            raise SystemExit(f"geor {step[0]} failed (see above); or delete {workdir} to rebuild it")
    return str(model), str(prepared)


def single_process_child(
    model_dir: str, prepared: str, threads: int, batch_size: int, max_new_tokens: int
) -> None:
    """The plain loop, in its own fresh process: import, load the model, then batches of images ->
    completions -> parsed. Prints its own timings as JSON."""
    started = time.monotonic()
    import torch

    from geor_core.config import ModelConfig
    from geor_core.data.images import load_image
    from geor_core.geo.parse import parse_many
    from geor_core.training.generation import generate
    from geor_core.training.model_loading import load_model, load_processor
    from tasks.evaluate import evaluation_rows

    torch.set_num_threads(threads)
    rows = evaluation_rows(prepared, ["train", "val", "test"], 0).column("image").to_pylist()  # Ray's order
    model_config = ModelConfig(name_or_path=model_dir)
    model, processor = load_model(model_config, device="cpu"), load_processor(model_config)
    loaded = time.monotonic()
    parsed, completions = 0, []
    for start in range(0, len(rows), batch_size):
        images = [load_image(uri, model_config) for uri in rows[start : start + batch_size]]
        texts = generate(model, processor, images, max_new_tokens=max_new_tokens)
        parsed += len(parse_many(texts).error)
        completions += texts
    assert parsed == len(rows)
    print(
        json.dumps(
            {
                "rows": len(rows),
                "load_seconds": loaded - started,
                "generate_seconds": time.monotonic() - loaded,
                "completions": completions,
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
    COMPLETIONS["single_process"] = child["completions"]
    return _progress(
        {
            "threads": threads,
            "rows": child["rows"],
            "seconds": round(seconds, 2),
            "load_seconds": round(child["load_seconds"], 2),
            "rows_per_s": round(child["rows"] / seconds, 2),
            "generate_rows_per_s": round(child["rows"] / child["generate_seconds"], 2),
        }
    )


def ray_data(model_dir: str, prepared: str, actors: int, cpus: float, overrides: list[str]) -> dict:
    """The `geor evaluate` inference path over the same rows, into a fresh directory, on a private
    Ray instance started and stopped inside the clock."""
    import ray

    from geor_core.config import load_config
    from geor_core.scoring.predictions import evaluation_predictions
    from geor_core.scoring.scoring import read_table
    from tasks.batch_inference import run_sharded_inference
    from tasks.evaluate import evaluation_rows

    cfg = load_config("test", [*overrides, f"eval.num_actors={actors}", f"eval.cpus_per_actor={cpus}"])
    rows = evaluation_rows(prepared, ["train", "val", "test"], 0)
    directory = tempfile.mkdtemp(prefix="geor-bench-eval-")
    ray_dir = tempfile.mkdtemp(prefix="geor-bench-ray-", dir="/tmp")
    started = time.monotonic()
    # A private cluster: a bare ray.init() would join any cluster already running on the machine.
    ray.init(address="local", include_dashboard=False, log_to_driver=False, _temp_dir=ray_dir)
    try:
        ray_start = time.monotonic() - started
        run = run_sharded_inference(
            cfg,
            model_dir,
            rows,
            directory,
            "bench",
            lambda shard, texts, errors: evaluation_predictions(shard, texts, errors, cfg.reward),
        )
        written = read_table(directory)
    finally:
        ray.shutdown()
        seconds = time.monotonic() - started
        shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(ray_dir, ignore_errors=True)
    COMPLETIONS["ray_data"] = written["completion"].tolist()
    return _progress(
        {
            "actors": actors,
            "cpus_per_actor": cpus,
            "rows": len(written),
            "seconds": round(seconds, 2),
            "ray_start_seconds": round(ray_start, 2),
            "rows_per_s": round(rows.num_rows / seconds, 2),
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
    workdir = Path(args.workdir) / f"rows-{args.rows}"
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir, prepared = build_inputs(workdir, args.rows)
    load_at_start = [round(x, 2) for x in os.getloadavg()]

    from geor_core.data.dataset import read_prepared

    rows = read_prepared(prepared, columns=["image"]).num_rows
    overrides = [
        f"eval.max_new_tokens={args.max_new_tokens}",
        f"eval.batch_size={args.batch_size}",
        "eval.rows_per_shard=128",
    ]
    baseline: dict[int, list[dict]] = {int(t): [] for t in args.threads.split(",")}
    pooled: dict[int, list[dict]] = {int(n): [] for n in args.actors.split(",")}
    identical: list[float] = []
    for _ in range(args.repeats):  # rounds alternate the two sides: a busy moment hits both
        for threads, runs in baseline.items():
            runs.append(single_process(model_dir, prepared, threads, args.batch_size, args.max_new_tokens))
        for actors, runs in pooled.items():
            runs.append(ray_data(model_dir, prepared, actors, args.cpus_per_actor, overrides))
            # not strict: a run that lost rows shows as a lower share and in the row check below
            pairs = zip(COMPLETIONS["single_process"], COMPLETIONS["ray_data"], strict=False)
            identical.append(sum(a == b for a, b in pairs) / rows)
    all_runs = [run for runs in (*baseline.values(), *pooled.values()) for run in runs]
    loop, loop_spread = median_and_spread(
        {f"threads_{t}": runs for t, runs in baseline.items()}, ("rows_per_s", "generate_rows_per_s")
    )
    pool, pool_spread = median_and_spread(
        {f"actors_{n}": runs for n, runs in pooled.items()},
        ("rows_per_s", "steady_rows_per_s", "ray_start_seconds"),
    )

    def best(summary: dict[str, dict], key: str) -> float:
        return max(figures[key] for figures in summary.values())

    result = {
        "rows": rows,
        "model": "tiny untrained (1.24M parameters), every row generates max_new_tokens",
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "cpus": os.cpu_count(),
        "load_average_at_start": load_at_start,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "repeats": args.repeats,
        "single_process_rows_per_s_median": {k: round(v["rows_per_s"], 2) for k, v in loop.items()},
        "single_process_rows_per_s_spread": {k: v["rows_per_s"] for k, v in loop_spread.items()},
        "ray_data_rows_per_s_median": {k: round(v["rows_per_s"], 2) for k, v in pool.items()},
        "ray_data_rows_per_s_spread": {k: v["rows_per_s"] for k, v in pool_spread.items()},
        "ray_start_seconds_median": {k: round(v["ray_start_seconds"], 2) for k, v in pool.items()},
        "single_process_runs": [run for runs in baseline.values() for run in runs],
        "ray_data_runs": [run for runs in pooled.values() for run in runs],
        "ratio": round(best(pool, "rows_per_s") / best(loop, "rows_per_s"), 3),
        "steady_ratio": round(best(pool, "steady_rows_per_s") / best(loop, "generate_rows_per_s"), 3),
        "identical_completions": round(min(identical), 4),
    }
    print(json.dumps(result, indent=2))
    lost = [run for run in all_runs if run["rows"] != rows]
    if lost or min(identical) < 1.0:
        print(
            f"the sides differ: runs with other row counts {lost}; identical share {min(identical)}",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
