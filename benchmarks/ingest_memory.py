"""Benchmark a Ray Train SFT worker's peak memory and step time against the size of the train split.

    python benchmarks/ingest_memory.py [--steps 25] [--repeats 3] [--small 10000] [--large 100000]

Builds once, under ``--workdir``: the tiny model and a prepared synthetic world (``geor
make-tiny-model``, ``make-world``, ``prepare``, preset ``test``), and from the world's rows two
prepared outputs of ``--small`` and ``--large`` rows: its rows repeated (image URIs repeat) with
ids made unique (``<id>~<copy>``), each row keeping its split, in Parquet files of
``FILE_ROWS`` rows, with the completion marker ``require_prepared`` wants (statistics counted from
the files). Then runs, each in a fresh process with a fresh 2-CPU local Ray, interleaved
``--repeats`` times so load from other jobs hits all of them:

- ``stream_small``, ``stream_large``: ``tasks.sft.run_sft`` with ``sft.stream_rows_above=0`` (1
  worker): the worker streams its shard of the split through Ray Data;
- ``table_large``: the same stage with ``sft.stream_rows_above`` above the split, on the large
  output: each worker reads the whole train split as an Arrow table and decodes images through a
  dataset transform (what every split did before streaming; what a split of at most 100k rows
  still does by default): the "before" of the step time and of the memory.

Every run trains ``--steps`` steps (no eval, no checkpoint inside them). Each worker reports its
own peak RSS from inside (``VmHWM`` of /proc/self/status after training; Linux) and the rows it
streamed; s/step is steady state, from a TrainerCallback's step-end timestamps after ``--warmup``
steps (benchmarks/step_timer.py's StepTimer).

Prints one JSON object: every run, each configuration's median and [min, max], the large/small
ratios and the targets (peak RSS of ``stream_large`` within 10% of ``stream_small``; its s/step
not above ``table_large``'s), and the load average at the start and the end. Exits 1 when the two
streaming sides' outputs differ: a run that did not train every step, or a different number of
rows streamed by the worker (it must not depend on the split's size).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.repeats import median_and_spread  # noqa: E402

PRESET = "test"
RAY_CPUS = 2
FILE_ROWS = 10_000
CONFIGS = {
    "stream_small": ("stream", "small"),
    "stream_large": ("stream", "large"),
    "table_large": ("table", "large"),
}
KEYS = ("peak_rss_mb", "steady_s_per_step", "rows_streamed")
RSS_TOLERANCE = 0.10


STREAM_ABOVE = {"stream": 0, "table": 10**9}  # sft.stream_rows_above: always stream / never


def overrides(steps: int, kind: str) -> list[str]:
    return [
        f"sft.stream_rows_above={STREAM_ABOVE[kind]}",
        f"sft.max_steps={steps}",
        f"sft.eval_steps={steps * 10}",
        f"sft.save_steps={steps * 10}",
        "sft.logging_steps=5",
        "sft.num_workers=1",
        f"sft.cpus_per_worker={RAY_CPUS / 2}",
        "sft.max_failures=0",
    ]


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as status:
        return int(status.read().split("VmHWM:")[1].split()[0]) / 1024


def timed(out: str) -> Any:
    """The stage's worker loop with benchmarks/step_timer.py's StepTimer in the trainer's callbacks;
    writes the timer's marks, the worker's peak RSS and its marker fields to ``out``."""

    def loop(config: dict[str, Any]) -> None:
        from benchmarks.step_timer import StepTimer
        from geor_core import uris
        from geor_core.training import sft_setup
        from tasks import sft as sft_task

        timer = StepTimer()
        build = sft_setup.build_sft_trainer

        def build_with_timer(*args: Any, **kwargs: Any) -> Any:
            trainer = build(*args, **kwargs)
            trainer.add_callback(timer)
            return trainer

        sft_setup.build_sft_trainer = build_with_timer
        sft_task.sft_worker_loop(config)
        marker = uris.read_marker(config["export_uri"]) or {}
        record = {
            **timer.as_dict(),
            "peak_rss_mb": round(_peak_rss_mb(), 1),
            "global_step": marker.get("global_step"),
        }
        record |= {k: marker.get(k) for k in ("train_streamed", "train_split_rows", "train_rows_held")}
        Path(out).write_text(json.dumps(record))

    return loop


def child(kind: str, model: str, data: str, output: str, result: str, steps: int) -> None:
    """One run on a fresh local Ray: the stage as it runs, streaming or reading whole (``kind``)."""
    from unittest import mock

    import ray

    from geor_core.config import load_config
    from tasks import sft as sft_task
    from tasks.ray_session import start_local_ray

    cfg = load_config(PRESET, overrides(steps, kind))
    start_local_ray(num_cpus=RAY_CPUS, _node_ip_address="127.0.0.1")
    try:
        with mock.patch.object(sft_task, "sft_worker_loop", timed(result)):
            sft_task.run_sft(cfg, data, model, output, overwrite=True)
    finally:
        ray.shutdown()


def copy_prepared(source: str, target: Path, rows: int) -> str:
    """A prepared output of ``rows`` rows: ``source``'s rows repeated, ids made unique."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from geor_core import uris
    from geor_core.data.dataset import DATA_DIR, output_stats, read_prepared

    if uris.read_marker(str(target)) is not None:
        return str(target)
    base = read_prepared(source)
    data = target / DATA_DIR
    data.mkdir(parents=True, exist_ok=True)
    for start in range(0, rows, FILE_ROWS):
        count = min(FILE_ROWS, rows - start)
        index = pa.array([(start + i) % base.num_rows for i in range(count)])
        copies = pa.array([f"~{(start + i) // base.num_rows}" for i in range(count)])
        part = base.take(index)
        part = part.set_column(
            part.schema.get_field_index("id"), "id", pc.binary_join_element_wise(part["id"], copies, "")
        )
        pq.write_table(part, data / f"part-{start // FILE_ROWS:05d}.parquet")
    uris.write_marker(str(target), {"stats": output_stats(str(target), rows, 0.0), "copied_from": source})
    return str(target)


def build_inputs(work: Path, small: int, large: int, env: dict[str, str]) -> tuple[str, dict[str, str]]:
    model, world, prepared = work / "model", work / "world", work / "prepared"
    steps = [
        (model / "config.json", ["make-tiny-model", "--output", str(model)]),
        (world / "manifest.csv", ["make-world", "--output", str(world)]),
        (
            prepared / "_SUCCESS.json",
            ["prepare", "--manifest", str(world / "manifest.csv"), "--output", str(prepared)],
        ),
    ]
    work.mkdir(parents=True, exist_ok=True)
    for done, command in steps:
        if not done.exists():
            with (work / "build.log").open("a") as log:
                built = subprocess.run([sys.executable, "-m", "flows", *command, "--config", PRESET], env=env,
                                       cwd=ROOT, stdout=log, stderr=log)  # fmt: skip
            if built.returncode:
                raise SystemExit(f"geor {command[0]} failed; see {work / 'build.log'}")
    sizes = {"small": small, "large": large}
    return str(model), {
        name: copy_prepared(str(prepared), work / f"prepared-{rows}", rows) for name, rows in sizes.items()
    }


def summarise(record: dict[str, Any], seconds: float, steps: int, warmup: int) -> dict[str, Any]:
    ends = record["step_ends"]
    if len(ends) != steps or record.get("global_step") != steps:
        raise SystemExit(
            f"expected {steps} steps, got {len(ends)} step ends (global_step {record.get('global_step')})"
        )
    return {
        "peak_rss_mb": record["peak_rss_mb"],
        "steady_s_per_step": round((ends[-1] - ends[warmup - 1]) / (steps - warmup), 4),
        "rows_streamed": record.get("train_rows_held") if record.get("train_streamed") else 0,
        "train_rows_held": record.get("train_rows_held"),
        "train_split_rows": record.get("train_split_rows"),
        "end_to_end_s": round(seconds, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default="/tmp/geor-ingest-bench")
    parser.add_argument(
        "--child", nargs=5, metavar=("KIND", "MODEL", "DATA", "OUTPUT", "RESULT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.steps)
        return 0
    work = Path(args.workdir)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0", RAY_worker_niceness="0",
               PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # fmt: skip
    model, data = build_inputs(work, args.small, args.large, env)
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CONFIGS}
    for repeat in range(args.repeats):
        for name, (kind, size) in CONFIGS.items():
            result, log = work / f"{name}-{repeat}.json", work / f"{name}-{repeat}.log"
            command = [sys.executable, __file__, "--steps", str(args.steps), "--child", kind, model, data[size],
                       str(work / f"{name}-{repeat}"), str(result)]  # fmt: skip
            started = time.monotonic()
            with log.open("w") as output:
                done = subprocess.run(command, env=env, cwd=ROOT, stdout=output, stderr=output)
            if done.returncode:
                raise SystemExit(f"{name} #{repeat} failed with exit code {done.returncode}; see {log}")
            summary = summarise(
                json.loads(result.read_text()), time.monotonic() - started, args.steps, args.warmup
            )
            runs[name].append(summary)
            print(f"{name} #{repeat}: {json.dumps(summary)}", file=sys.stderr, flush=True)
    median, spread = median_and_spread(runs, KEYS)
    small, large, table = median["stream_small"], median["stream_large"], median["table_large"]
    failures = [
        f"{name}: the worker streamed {sorted({r['rows_streamed'] for r in runs[name]})} rows, "
        f"stream_small {sorted({r['rows_streamed'] for r in runs['stream_small']})}"
        for name in ("stream_small", "stream_large")
        if {r["rows_streamed"] for r in runs[name]} != {runs["stream_small"][0]["rows_streamed"]}
    ]
    print(
        json.dumps(
            {
                "preset": PRESET,
                "overrides": {kind: overrides(args.steps, kind) for kind in STREAM_ABOVE},
                "rows": {"small": args.small, "large": args.large},
                "steps": args.steps,
                "warmup_steps_excluded": args.warmup,
                "repeats": args.repeats,
                "cpus": os.cpu_count(),
                "load_average_at_start": load_at_start,
                "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                "median": median,
                "spread": spread,
                "stream_large/stream_small": {k: round(large[k] / small[k], 3) for k in KEYS[:2]},
                "stream_large/table_large": {k: round(large[k] / table[k], 3) for k in KEYS[:2]},
                "targets": {
                    "peak_rss_within_10pct": abs(large["peak_rss_mb"] / small["peak_rss_mb"] - 1)
                    <= RSS_TOLERANCE,
                    "s_per_step_not_above_table": large["steady_s_per_step"] <= table["steady_s_per_step"],
                },
                "runs": runs,
                "failures": failures,
            },
            indent=1,
        )
    )
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
