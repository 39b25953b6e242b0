"""Benchmark `geor prepare` at MP-16 scale against a single-process baseline doing the same work.

    python benchmarks/prepare.py --rows 1000000 [--compute tasks|actors] [--format csv|parquet]

Builds N manifest rows from data/mp16_coords_100k.csv (repeated, coordinates jittered by about
1 km, unique ids; 0.1% rows without a latitude and 0.01% repeated ids, as real manifests have),
written as files of ``--rows-per-file`` rows. Then runs, each in its own process tree and
alternating, ``--repeats`` times (default 3):

- ``ray``: ``python -m flows prepare`` (starts a local Ray cluster on all cores);
- ``single_process``: the same reader, dedupe and per-block transform (geor_core) in one
  process, no Ray.

Prints one JSON object: for each configuration the median and the [min, max] over the repeats of
seconds (wall, process start to exit), job_seconds (the job's own clock; for Ray also per phase,
in each run), rows_per_s, cpu_seconds, peak_rss_mb and peak_pss_mb (CPU time and memory summed
over the process and all its descendants: driver, raylet, GCS and workers; see ``measure``),
every run, the load average at the start and the end, and ``ray_speedup`` (median seconds). Ray
runs its workers at nice 0 here, like the baseline. After each repeat both outputs are checked
to hold the same rows; the script exits 1 when they do not. Stop it with Ctrl-C (SIGINT), which
reaches the Ray driver and lets it shut its cluster down.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.repeats import median_and_spread  # noqa: E402

SOURCE = ROOT / "data" / "mp16_coords_100k.csv"
JITTER_DEG = 0.01
MISSING_LAT_SHARE = 0.001
REPEATED_ID_SHARE = 0.0001
OUTPUTS = {"ray": "out-ray", "single_process": "out-single"}
SUMMARISED = ("seconds", "job_seconds", "rows_per_s", "cpu_seconds", "peak_rss_mb", "peak_pss_mb")


def build_manifest(rows: int, rows_per_file: int, file_format: str, folder: Path, seed: int = 0) -> None:
    """Write ``rows`` manifest rows (id, image, lat, lon) as files of ``rows_per_file`` rows."""
    folder.mkdir(parents=True, exist_ok=True)
    source = pacsv.read_csv(SOURCE)
    base_lat = source["LAT"].to_numpy()
    base_lon = source["LON"].to_numpy()
    rng = np.random.default_rng(seed)
    for file_index, start in enumerate(range(0, rows, rows_per_file)):
        n = min(rows_per_file, rows - start)
        pick = (np.arange(start, start + n)) % base_lat.size
        lat = np.clip(base_lat[pick] + rng.normal(0, JITTER_DEG, n), -90, 90)
        lon = (base_lon[pick] + rng.normal(0, JITTER_DEG, n) + 180.0) % 360.0 - 180.0
        number = np.arange(start, start + n)
        repeated = rng.random(n) < REPEATED_ID_SHARE
        number[repeated] = rng.integers(0, max(start, 1), repeated.sum())  # an id seen earlier
        ids = pa.array([f"mp16/{i:09d}.jpg" for i in number])
        lat_text = pa.array(np.round(lat, 6)).cast(pa.string())
        missing = pa.array(rng.random(n) < MISSING_LAT_SHARE)
        table = pa.table(
            {
                "id": ids,
                "image": ids,
                "lat": pa.compute.if_else(missing, pa.scalar("", pa.string()), lat_text),
                "lon": pa.array(np.round(lon, 6)).cast(pa.string()),
            }
        )
        name = folder / f"part-{file_index:05d}.{file_format}"
        if file_format == "csv":
            pacsv.write_csv(table, name)
        else:
            pq.write_table(table, name)


def measure(command: list[str], env: dict[str, str], log: Path) -> dict:
    """Wall seconds, CPU seconds, peak memory and stdout of one command and all its descendants,
    sampled every 0.2 s; stderr goes to ``log``. Memory is summed twice: as RSS, which counts a
    page shared through Ray's object store once per process that maps it, and as PSS, which
    splits shared pages among them (the honest total). CPU seconds do not depend on other load."""
    import psutil

    started = time.monotonic()
    with log.open("w") as stderr:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, env=env, cwd=ROOT, text=True)
    peak_rss = peak_pss = peak_processes = 0
    cpu_by_pid: dict[int, float] = {}
    parent = psutil.Process(proc.pid)
    try:
        while proc.poll() is None:
            rss = pss = 0
            try:
                family = [parent, *parent.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for member in family:
                try:
                    memory = member.memory_full_info()
                    times = member.cpu_times()
                except psutil.NoSuchProcess:
                    continue
                rss, pss = rss + memory.rss, pss + memory.pss
                cpu_by_pid[member.pid] = times.user + times.system
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            peak_processes = max(peak_processes, len(family))
            time.sleep(0.2)
        stdout, _ = proc.communicate()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        raise
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit code {proc.returncode}; see {log}")
    return {
        "seconds": seconds,
        "cpu_seconds": sum(cpu_by_pid.values()),
        "peak_rss_mb": peak_rss / 2**20,
        "peak_pss_mb": peak_pss / 2**20,
        "peak_processes": peak_processes,
        "stdout": stdout,
    }


def single_process(manifest: str, output: str) -> dict:
    """The baseline: pass 1, dedupe, transform and write, sequentially in this process."""
    from geor_core import uris
    from geor_core.config import load_config
    from geor_core.data.cor_rows import RowRules, row_ids
    from geor_core.data.dataset import DATA_DIR, REJECTS_DIR, output_stats
    from geor_core.data.dedupe import candidate_rows, duplicate_rows, hash_ids
    from geor_core.data.image_refs import reference_rule
    from geor_core.data.manifest import (
        iter_batches,
        list_manifest_files,
        manifest_fingerprint,
        manifest_folder,
        resolve_columns,
    )
    from geor_core.data.prepare_blocks import FileContext, PrepareJob, read_raw_blocks, transform_block

    started = time.monotonic()
    prepare = load_config(None, [f"prepare.manifest={manifest}", f"prepare.output={output}"]).prepare
    files = list_manifest_files(manifest)
    roles, rows_in, hashes, present = [], 0, [], []
    for file in files:
        file_roles, file_hashes, file_present = None, [], []
        for batch in iter_batches(file, prepare.batch_size):
            rows_in += batch.table.num_rows + len(batch.malformed)
            if file_roles is None:
                file_roles = resolve_columns(batch.table.column_names, "id", "image", "lat", "lon", file.uri)
            h, p = hash_ids(row_ids(batch.table, file_roles))
            file_hashes.append(h)
            file_present.append(p)
        roles.append(file_roles)
        hashes.append(np.concatenate(file_hashes))
        present.append(np.concatenate(file_present))
    candidates = candidate_rows(hashes, present)
    ids = {}
    for index, rows in candidates.items():
        found: list[str] = []
        for batch in iter_batches(files[index], prepare.batch_size):
            local = rows[(rows >= batch.first_row) & (rows < batch.first_row + batch.table.num_rows)]
            found += row_ids(batch.table, roles[index]).take(local - batch.first_row).to_pylist()
        ids[index] = (rows, found)
    duplicates = duplicate_rows(ids)
    rules = RowRules(
        prepare.seed, tuple(prepare.splits.items()), frozenset(), False, manifest_fingerprint(files)
    )
    job = PrepareJob(
        files=tuple(
            FileContext(
                f.uri,
                roles[f.index],
                reference_rule(prepare.allowed_schemes, f.folder, [manifest_folder(manifest)]),
            )
            for f in files
        ),
        rules=rules,
        rejects_uri=uris.join(output, REJECTS_DIR),
        manifest_columns=("id", "image", "lat", "lon"),
    )
    data_dir = Path(output) / DATA_DIR
    data_dir.mkdir(parents=True, exist_ok=True)
    for file in files:
        dup = duplicates.get(file.index, np.zeros(0, np.int64))
        for block_index, block in enumerate(read_raw_blocks(file, prepare.batch_size, dup)):
            pq.write_table(
                transform_block(block, job), data_dir / f"{file.index:05d}-{block_index:05d}.parquet"
            )
    return output_stats(output, rows_in, time.monotonic() - started)


def rows_digest(output: str) -> str:
    """A content hash of an output's rows, independent of shards and row order (a sum of row hashes)."""
    import pandas as pd

    from geor_core.data.cor_rows import OUTPUT_SCHEMA
    from geor_core.data.dataset import DATA_DIR, parquet_files

    fs, files = parquet_files(f"{output}/{DATA_DIR}")
    total, rows = 0, 0
    for path in files:
        frame = pq.read_table(path, filesystem=fs, schema=OUTPUT_SCHEMA).to_pandas()
        hashes = pd.util.hash_pandas_object(frame, index=False).to_numpy()
        total = (total + int(hashes.sum(dtype=np.uint64))) % 2**64  # uint64 sums wrap: the same here
        rows += len(frame)
    return f"{rows}:{total:016x}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rows-per-file", type=int, default=100_000)
    parser.add_argument("--format", choices=("csv", "parquet"), default="csv")
    parser.add_argument("--compute", choices=("tasks", "actors"), default="tasks")
    parser.add_argument("--workdir", default="/tmp/geor-prepare-bench")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each configuration, alternating")
    parser.add_argument(
        "--single-process-run", nargs=2, metavar=("MANIFEST", "OUTPUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.single_process_run:
        print(json.dumps(single_process(*args.single_process_run)))
        return
    work = Path(args.workdir)
    manifest = work / f"manifest-{args.rows}-{args.rows_per_file}-{args.format}"
    if not (manifest / "_built").exists():
        build_manifest(args.rows, args.rows_per_file, args.format, manifest)
        (manifest / "_built").touch()
    # Ray starts workers at nice 15; the baseline runs at nice 0. On a machine shared with other
    # work that alone decides the race, so the benchmark runs Ray's workers at nice 0 too.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_worker_niceness": "0", "PYTHONPATH": str(ROOT)}
    result: dict = {"rows": args.rows, "files": -(-args.rows // args.rows_per_file), "format": args.format,
                    "cpus": os.cpu_count(), "compute": args.compute}  # fmt: skip
    commands = {"ray": [sys.executable, "-m", "flows", "prepare", "--manifest", str(manifest), "--output",
                        str(work / OUTPUTS["ray"]), "--overwrite", f"prepare.compute={args.compute}"]}  # fmt: skip
    if not args.skip_baseline:
        commands["single_process"] = [sys.executable, __file__, "--single-process-run", str(manifest),
                                      str(work / OUTPUTS["single_process"])]  # fmt: skip
    load_start = os.getloadavg()[0]
    runs_of: dict[str, list[dict]] = {name: [] for name in commands}
    digests: list[dict[str, str]] = []
    for repeat in range(args.repeats):  # the configurations alternate, so a load change hits both
        for name, command in commands.items():
            if name == "single_process":
                shutil.rmtree(work / OUTPUTS[name], ignore_errors=True)  # the baseline has no overwrite logic
            runs_of[name].append(one_run(command, env, work / f"{name}-{repeat}.log", args.rows))
        if "single_process" in commands:
            digests.append({name: rows_digest(str(work / out)) for name, out in OUTPUTS.items()})
    median, spread = median_and_spread(runs_of, SUMMARISED)
    for name, runs in runs_of.items():
        rounded = {key: round(value, 2) for key, value in median[name].items()}
        result[name] = {"median": rounded, "spread": spread[name], "runs": runs}
    result["repeats"] = args.repeats
    result["loadavg_start_end"] = [round(load_start, 2), round(os.getloadavg()[0], 2)]
    if "single_process" in commands:
        seconds = {name: result[name]["median"]["seconds"] for name in commands}
        result["ray_speedup"] = round(seconds["single_process"] / seconds["ray"], 2)
        result["same_rows"] = all(d["ray"] == d["single_process"] for d in digests)
    print(json.dumps(result))
    if not result.get("same_rows", True):
        raise SystemExit("Ray and the single-process baseline wrote different rows")


def one_run(command: list[str], env: dict[str, str], log: Path, rows: int) -> dict:
    """Run one configuration once and read its stats line."""
    measured = measure(command, env, log)
    stats = json.loads(measured["stdout"].strip().splitlines()[-1])
    run = {
        "seconds": round(measured["seconds"], 2),
        "job_seconds": stats["seconds"],
        "rows_per_s": round(rows / measured["seconds"]),
        "cpu_seconds": round(measured["cpu_seconds"], 1),
        "peak_rss_mb": round(measured["peak_rss_mb"]),
        "peak_pss_mb": round(measured["peak_pss_mb"]),
        "peak_processes": measured["peak_processes"],
        "rows_out": stats["rows_out"],
        "rows_rejected": stats["rows_rejected"],
    }
    if "phase_seconds" in stats:
        run["phase_seconds"] = stats["phase_seconds"]
    return run


if __name__ == "__main__":
    main()
