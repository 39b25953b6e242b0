"""Benchmark the driver's memory and time for `geor evaluate`'s report: Ray Data tallies against
the whole predictions table in the driver (what the report did before).

    python benchmarks/evaluation_report.py [--small 20000] [--large 200000] [--repeats 3]

Builds once, under ``--workdir``: ``BASE_ROWS`` scored predictions around the world (a third
near misses, a third far misses, a sixth without coordinates; two splits, three groups; the
predictions table of geor_core.scoring.predictions, so every column is the real one), then two
prediction folders of ``--small`` and ``--large`` rows: the base rows repeated with unique ids
(``<id>~<copy>``), in shards of ``SHARD_ROWS`` rows (`eval.rows_per_shard`'s default). Then runs,
each in a fresh process, interleaved ``--repeats`` times so load from other jobs hits all:

- ``driver_small``, ``driver_large``: read the whole table into pandas and build the report in
  the process (geor_core.scoring.report_tally.report_of_table: the same code in one pass);
- ``ray_small``, ``ray_large``: tasks.evaluation_tally.tally_report on a fresh 2-CPU local Ray
  (the path `geor evaluate` takes above ``eval.report_in_driver_rows``); seconds exclude
  ``ray.init`` (``ray_start_s`` beside them).

Each process reports its own peak RSS (``VmHWM`` of /proc/self/status; Linux) and the report's
metrics. Prints one JSON object: every run, each configuration's median and [min, max], the
large/small peak-RSS ratio of each side (target for Ray: within 10%), and the load average at the
start and the end. Exits 1 when the two sides' reports differ at equal size (every count, rate
and median exactly; mean_km, geoscore and group rewards to 1e-9 relative).
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

BASE_ROWS = 4_000
SHARD_ROWS = 2_048
RAY_CPUS = 2
KEYS = ("peak_rss_mb", "seconds")
RSS_TOLERANCE = 0.10
SPLITS = ["val", "test"]


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as status:
        return int(status.read().split("VmHWM:")[1].split()[0]) / 1024


def base_predictions(rows: int) -> Any:
    """``rows`` scored predictions around the world (the module docstring's mix)."""
    import numpy as np
    import pyarrow as pa

    from geor_core.geo import gazetteer
    from geor_core.scoring.predictions import evaluation_predictions

    rng = np.random.default_rng(0)
    places = gazetteer.settlements()
    pick = rng.integers(0, len(places["lat"]), rows)
    lat, lon = np.asarray(places["lat"])[pick], np.asarray(places["lon"])[pick]
    place = gazetteer.lookup(lat, lon)
    truth = pa.table(
        {
            "id": [f"r{i}" for i in range(rows)],
            "split": rng.choice(SPLITS, rows).tolist(),
            "group": rng.choice(["clean", "ambiguous", "blurred"], rows).tolist(),
            "image": [f"/photos/{i}.jpg" for i in range(rows)],
            "lat": lat,
            "lon": lon,
            "country_code": place["country_code"].tolist(),
            "country": place["country_name"].tolist(),
            "state": place["admin1"].tolist(),
            "city": place["city"].tolist(),
        }
    )
    completions = []
    for i in range(rows):
        kind = rng.integers(0, 6)
        if kind == 0:
            completions.append("<think>no idea</think><answer>somewhere</answer>")
            continue
        spread = 0.05 if kind < 3 else 8.0
        guess_lat = float(np.clip(lat[i] + rng.normal(0, spread), -89.9, 89.9))
        guess_lon = float((lon[i] + rng.normal(0, spread) + 180) % 360 - 180)
        completions.append(
            f"<think>...</think><answer>Country: {truth['country'][i]}; State: {truth['state'][i]}; "
            f"City: {truth['city'][i]}; Coordinates: ({guess_lat:.4f}, {guess_lon:.4f})</answer>"
        )
    return evaluation_predictions(truth, completions, [""] * rows)


def build(work: Path, sizes: dict[str, int]) -> dict[str, str]:
    """The prediction folders, built once (a folder with a _BUILT marker is reused)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    folders = {name: work / f"predictions-{rows}" for name, rows in sizes.items()}
    if all((folder / "_BUILT").exists() for folder in folders.values()):
        return {name: str(folder) for name, folder in folders.items()}
    base = base_predictions(BASE_ROWS)
    for name, rows in sizes.items():
        folder = folders[name]
        folder.mkdir(parents=True, exist_ok=True)
        copies = [
            base.set_column(0, "id", pc.binary_join_element_wise(base["id"], pa.scalar(f"~{c}"), ""))
            for c in range(-(-rows // BASE_ROWS))
        ]
        table = pa.concat_tables(copies).slice(0, rows)
        for index, start in enumerate(range(0, rows, SHARD_ROWS)):
            pq.write_table(table.slice(start, SHARD_ROWS), folder / f"part-{index:05d}.parquet")
        (folder / "_BUILT").write_text(json.dumps({"rows": rows}))
    return {name: str(folder) for name, folder in folders.items()}


def child(kind: str, folder: str) -> dict[str, Any]:
    """One run in this (fresh) process: the report, its seconds and this process's peak RSS."""
    from geor_core.scoring.report_tally import report_of_table

    record: dict[str, Any] = {}
    if kind == "ray":
        import ray

        from tasks.evaluation_tally import tally_report

        started = time.perf_counter()
        ray.init(num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False)
        record["ray_start_s"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        rows = json.loads((Path(folder) / "_BUILT").read_text())["rows"]
        report = tally_report(folder, rows, splits=SPLITS, worst_n=20, top_countries=15, in_driver_rows=0)
    else:
        from geor_core.scoring.scoring import read_table

        started = time.perf_counter()
        report = report_of_table(read_table(folder), splits=SPLITS, worst_n=20, top_countries=15)
    record["seconds"] = round(time.perf_counter() - started, 2)
    record["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    record["report"] = {"metrics": report.metrics, "splits": report.splits, "groups": report.groups}
    return record


def differences(ours: Any, theirs: Any, path: str = "") -> list[str]:
    """Where two reports differ: exactly, except sums (mean_km, geoscore, a group reward: 1e-9 relative)."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        if ours.keys() != theirs.keys():
            return [f"{path}: keys {sorted(ours)} != {sorted(theirs)}"]
        return [d for key in ours for d in differences(ours[key], theirs[key], f"{path}/{key}")]
    if (
        path.rsplit("/", 1)[-1] in ("mean_km", "geoscore", "reward")
        and ours is not None
        and theirs is not None
    ):
        return (
            [] if abs(ours - theirs) <= 1e-9 * max(abs(theirs), 1e-300) else [f"{path}: {ours} != {theirs}"]
        )
    return [] if ours == theirs else [f"{path}: {ours!r} != {theirs!r}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=20_000)
    parser.add_argument("--large", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default="/tmp/geor-bench-report")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    load_start = os.getloadavg()
    folders = build(Path(args.workdir), {"small": args.small, "large": args.large})
    configs = {
        f"{kind}_{size}": (kind, folders[size]) for kind in ("driver", "ray") for size in ("small", "large")
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
    reports: dict[str, Any] = {}
    for repeat in range(args.repeats):
        for name, (kind, folder) in configs.items():
            done = subprocess.run(
                [sys.executable, __file__, "--child", kind, folder], capture_output=True, text=True, cwd=ROOT
            )
            if done.returncode:
                print(done.stderr[-3000:], file=sys.stderr)
                return 1
            record = json.loads(done.stdout.strip().splitlines()[-1])
            reports[name] = record.pop("report")
            runs[name].append(record)
            print(json.dumps({"repeat": repeat, "config": name, **record}), file=sys.stderr, flush=True)
    median, spread = median_and_spread(runs, KEYS)
    problems = [
        f"{size}: {d}"
        for size in ("small", "large")
        for d in differences(reports[f"ray_{size}"], reports[f"driver_{size}"])
    ]
    growth = {
        kind: median[f"{kind}_large"]["peak_rss_mb"] / median[f"{kind}_small"]["peak_rss_mb"]
        for kind in ("driver", "ray")
    }
    result = {
        "rows": {"small": args.small, "large": args.large, "shard_rows": SHARD_ROWS},
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "runs": runs,
        "median": median,
        "spread": spread,
        "peak_rss_large_over_small": {kind: round(value, 3) for kind, value in growth.items()},
        "target_met": growth["ray"] <= 1 + RSS_TOLERANCE,
        "reports_equal": not problems,
        "differences": problems[:20],
    }
    print(json.dumps(result, indent=2))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
