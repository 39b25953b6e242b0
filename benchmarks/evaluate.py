"""Benchmark `geor evaluate`'s Ray Data batch inference against a plain single-process loop.

    python benchmarks/evaluate.py [--rows 600] [--actors 1,2] [--cpus-per-actor 0.5]
                                  [--max-new-tokens 96] [--batch-size 16] [--workdir DIR]

Builds (once, in ``--workdir``) the tiny untrained model and a synthetic world of ``--rows``
photos, prepared with `geor prepare`. The untrained model writes ``--max-new-tokens`` tokens for
every photo, so every row costs the same. Then, over the same rows and model:

- ``single_process``: one process loads the model and loops over batches (load the images,
  ``geor_core.generation.generate``, parse), with torch at 1 thread and at the machine's default;
- ``ray_data``: tasks.batch_inference.run_sharded_inference (the path `geor evaluate` takes:
  from_arrow -> map_batches over an actor pool -> shards written with markers), for each actor
  count, each actor with ``--cpus-per-actor`` CPUs and one torch thread; seconds include starting
  the actors and loading the model in each (Ray itself is started before the clock).

Prints one JSON object: rows/s of each, and ``ratio`` = best Ray Data rows/s / best
single-process rows/s (end to end, model loading included on both sides).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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


def single_process(
    model_dir: str, rows: list[dict], threads: int, batch_size: int, max_new_tokens: int
) -> dict:
    """The plain loop: load the model, then batches of images -> completions -> parsed."""
    import torch

    from geor_core.generation import generate
    from geor_core.images import load_image
    from geor_core.models import load_model, load_processor
    from geor_core.parse import parse_many

    torch.set_num_threads(threads)
    started = time.monotonic()
    model, processor = load_model(model_dir, device="cpu"), load_processor(model_dir)
    loaded = time.monotonic()
    parsed = 0
    for start in range(0, len(rows), batch_size):
        images = [load_image(r["image"]) for r in rows[start : start + batch_size]]
        texts = generate(model, processor, images, max_new_tokens=max_new_tokens)
        parsed += len(parse_many(texts).error)
    done = time.monotonic()
    assert parsed == len(rows)
    return _progress(
        {
            "threads": threads,
            "seconds": round(done - started, 2),
            "load_seconds": round(loaded - started, 2),
            "rows_per_s": round(len(rows) / (done - started), 2),
            "generate_rows_per_s": round(len(rows) / (done - loaded), 2),
        }
    )


def ray_data(model_dir: str, prepared: str, actors: int, cpus: float, overrides: list[str]) -> dict:
    """The `geor evaluate` inference path over the same rows, into a fresh directory."""
    from geor_core.config import load_config
    from geor_core.predictions import evaluation_predictions
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
            "shards": run.shards,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--actors", default="1,2", help="comma-separated actor counts to measure")
    parser.add_argument("--cpus-per-actor", type=float, default=0.5)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--threads", default=f"1,{os.cpu_count() or 1}", help="torch threads of the baselines"
    )
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "geor-bench-evaluate"))
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir, prepared = build_inputs(workdir, args.rows)

    from geor_core.dataset import read_prepared

    rows = read_prepared(prepared, columns=["image"]).to_pylist()
    baseline = [
        single_process(model_dir, rows, threads, args.batch_size, args.max_new_tokens)
        for threads in sorted({int(t) for t in args.threads.split(",")})
    ]
    import ray

    started = time.monotonic()
    ray.init(include_dashboard=False, log_to_driver=False)
    ray_start = time.monotonic() - started
    overrides = [
        f"eval.max_new_tokens={args.max_new_tokens}",
        f"eval.batch_size={args.batch_size}",
        "eval.rows_per_shard=128",
    ]
    try:
        pooled = [
            ray_data(model_dir, prepared, int(n), args.cpus_per_actor, overrides)
            for n in args.actors.split(",")
        ]
    finally:
        ray.shutdown()
    best_single = max(b["rows_per_s"] for b in baseline)
    best_ray = max(p["rows_per_s"] for p in pooled)
    print(
        json.dumps(
            {
                "rows": len(rows),
                "model": "tiny untrained (1.24M parameters), every row generates max_new_tokens",
                "max_new_tokens": args.max_new_tokens,
                "batch_size": args.batch_size,
                "cpus": os.cpu_count(),
                "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                "single_process": baseline,
                "ray_start_seconds": round(ray_start, 2),
                "ray_data": pooled,
                "ratio": round(best_ray / best_single, 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
