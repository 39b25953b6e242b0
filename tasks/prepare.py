"""`geor prepare` on Ray Data: a photo manifest in, Chain-of-Region training rows out.

1. Pass 1 (tasks/prepare_scan.py) counts every file's rows and settles duplicate ids over the
   whole manifest (the first row in manifest order keeps its id).
2. Ray Data reads each manifest file as raw blocks (one read task per file, streamed in
   ``prepare.batch_size`` rows), transforms every block (validate -> one batched gazetteer query
   -> CoR text -> split; rejects written on the way, geor_core/data/prepare_blocks.py) and writes
   Parquet shards to ``<output>/data``. With ``prepare.compute=tasks`` (the default, and the
   faster here) and at least as many files as CPUs, read, transform and write fuse into one task
   per file; with fewer files (one big CSV) the read streams blocks to parallel transform tasks.
   Each worker process loads the gazetteer once. ``actors`` runs the transform in an actor pool
   with fractional CPUs (slower here: blocks cross the object store).
3. The driver counts what is on disk; rows_in = rows_out + rows_rejected must hold, then
   ``stats.json`` and, last, the completion marker are written.

Skipping a finished output, clearing a crashed one and the marker: geor_core/data/prepare_output.py.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only; read at Ray import

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import ray  # noqa: E402
from ray.data import ActorPoolStrategy, DataContext, Datasource, ReadTask  # noqa: E402
from ray.data.block import BlockMetadata  # noqa: E402

from geor_core import uris  # noqa: E402
from geor_core.config import GeorConfig, PrepareConfig  # noqa: E402
from geor_core.data.cor_rows import OUTPUT_SCHEMA, RowRules  # noqa: E402
from geor_core.data.dataset import DATA_DIR, REJECTS_DIR, output_stats, read_rejects  # noqa: E402
from geor_core.data.image_refs import ReferenceRule, reference_rule  # noqa: E402
from geor_core.data.manifest import ManifestFile, list_manifest_files, manifest_folder  # noqa: E402
from geor_core.data.manifest import manifest_fingerprint as manifest_fingerprint_of  # noqa: E402
from geor_core.data.prepare_blocks import FileContext, PrepareJob, read_raw_blocks, transform_block  # noqa: E402
from geor_core.data.prepare_output import check_settings, clear_output, finish_output, finished_stats  # noqa: E402
from geor_core.registry import tracking  # noqa: E402
from geor_core.registry.dataset_inputs import log_dataset  # noqa: E402
from tasks.prepare_scan import ManifestScan, scan_manifest  # noqa: E402
from tasks.ray_session import connect_ray

ACTOR_CPUS = 0.5  # whole-CPU actors starve the read/write tasks on 2 cores (docs/design.md)
STREAMING_READ_CPUS = 0.25  # a read task that only parses, feeding transform tasks
STREAMED_BLOCK_BYTES = 16 << 20
REJECTS_SAMPLE_ROWS = 200


@dataclass
class PrepareOutcome:
    """What a `geor prepare` call did: its stats, and whether it only found a finished output."""

    stats: dict[str, Any]
    skipped: bool


class ManifestDatasource(Datasource):
    """Ray Data source of raw blocks: one read task per manifest file, streamed in batches."""

    def __init__(self, scan: ManifestScan, batch_rows: int) -> None:
        super().__init__()
        self._files = scan.files
        self._duplicates = scan.duplicate_rows
        self._batch_rows = batch_rows

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ReadTask]:
        return [self._read_task(file) for file in self._files]

    def _read_task(self, file: ManifestFile) -> ReadTask:
        duplicates = self._duplicates.get(file.index, np.zeros(0, np.int64))
        read = functools.partial(read_raw_blocks, file, self._batch_rows, duplicates)
        metadata = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=(file.uri,))
        return ReadTask(read, metadata)


class BlockTransformer:
    """``transform_block`` as an actor-pool UDF (``prepare.compute=actors``)."""

    def __init__(self, job: PrepareJob) -> None:
        self.job = job

    def __call__(self, block: pa.Table) -> pa.Table:
        return transform_block(block, self.job)


def run_prepare(cfg: GeorConfig) -> PrepareOutcome:
    """Run `geor prepare` with ``cfg.prepare``; connects to (or starts) Ray when needed."""
    prepare = cfg.prepare
    check_settings(prepare)
    started = time.monotonic()
    files = list_manifest_files(prepare.manifest)
    images = _reference_rules(prepare, files)  # a bad prepare.allowed_schemes fails here, before Ray
    manifest_fingerprint = manifest_fingerprint_of(files)
    finished = finished_stats(prepare, manifest_fingerprint)
    if finished is not None:
        return PrepareOutcome(finished, skipped=True)
    clear_output(prepare)
    lineage = {"geor.data_fingerprint": manifest_fingerprint, "geor.upstream.manifest": prepare.manifest}
    inputs = {"manifest": prepare.manifest}
    with tracking.stage_run(cfg, "prepare", tags=lineage, inputs=inputs, output=prepare.output) as run:
        clock = {"start": started}
        started_ray = connect_ray()
        clock["ray_ready"] = time.monotonic()
        try:
            scan = scan_manifest(files, prepare)
            clock["scanned"] = time.monotonic()
            _run_pipeline(scan, prepare, _rules(prepare, manifest_fingerprint), images)
            clock["written"] = time.monotonic()
        finally:
            if started_ray:
                ray.shutdown()
        clock["ray_stopped"] = time.monotonic()
        stats = output_stats(prepare.output, scan.rows_in, time.monotonic() - started)
        stats["phase_seconds"] = _phases(clock, time.monotonic())
        finish_output(prepare, stats, manifest_fingerprint)
        if run is not None:
            _log_run(prepare, stats)
    return PrepareOutcome(stats, skipped=False)


def _phases(clock: dict[str, float], now: float) -> dict[str, float]:
    """Seconds spent starting (or joining) Ray, in pass 1, in the Ray Data pipeline, stopping the
    Ray instance this run started (0 when it joined one) and counting the output."""
    marks = [
        clock["start"],
        clock["ray_ready"],
        clock["scanned"],
        clock["written"],
        clock["ray_stopped"],
        now,
    ]
    names = ("ray_start", "scan", "pipeline", "ray_stop", "count")
    return {name: round(b - a, 3) for name, a, b in zip(names, marks[:-1], marks[1:], strict=True)}


def _rules(prepare: PrepareConfig, manifest_fingerprint: str) -> RowRules:
    return RowRules(
        seed=prepare.seed,
        splits=tuple((str(name), float(share)) for name, share in prepare.splits.items()),
        holdout_countries=frozenset(prepare.holdout_countries),
        check_images=prepare.check_images,
        source_fingerprint=manifest_fingerprint,
    )


def _reference_rules(prepare: PrepareConfig, files: list[ManifestFile]) -> list[ReferenceRule]:
    """Each file's reference rule: relative references joined to ``prepare.images_root``, else the
    file's folder; local ones kept inside the manifest's folder or ``prepare.images_root``."""
    roots = (manifest_folder(prepare.manifest), prepare.images_root)
    return [
        reference_rule(prepare.allowed_schemes, prepare.images_root or file.folder, roots) for file in files
    ]


def _run_pipeline(
    scan: ManifestScan, prepare: PrepareConfig, rules: RowRules, images: list[ReferenceRule]
) -> None:
    job = PrepareJob(
        files=tuple(
            FileContext(uri=file.uri, roles=roles, images=file_images)
            for file, roles, file_images in zip(scan.files, scan.roles, images, strict=True)
        ),
        rules=rules,
        rejects_uri=uris.join(prepare.output, REJECTS_DIR),
        manifest_columns=scan.columns,
    )
    cpus = prepare.cpus_per_task
    cluster_cpus = ray.cluster_resources().get("CPU", 1.0)
    # As many files as CPUs: read, transform and write fuse into one task per file (the fastest
    # layout, and no block crosses the object store). Fewer files (one big CSV): a light read
    # task streams blocks to parallel transform-and-write tasks.
    fused = prepare.compute == "tasks" and len(scan.files) >= cluster_cpus
    context = DataContext.get_current()
    saved_block_size = context.target_max_block_size
    if not fused:
        # Ray Data merges streamed blocks up to 128 MiB, and a write holds its task's whole
        # output: for a one-file manifest of 4.7M rows that was 3 tasks of 1.6M rows and 2.8 GB
        # more memory (measured). Blocks near one raw block keep every task small.
        context.target_max_block_size = STREAMED_BLOCK_BYTES
    try:
        dataset = ray.data.read_datasource(
            ManifestDatasource(scan, prepare.batch_size),
            num_cpus=cpus if fused else min(cpus, STREAMING_READ_CPUS),
            override_num_blocks=len(scan.files),  # one read task per file, never split further
        )
        common = {"batch_format": "pyarrow", "batch_size": prepare.batch_size, "zero_copy_batch": True}
        if prepare.compute == "actors":
            dataset = dataset.map_batches(
                BlockTransformer,
                fn_constructor_kwargs={"job": job},
                compute=ActorPoolStrategy(min_size=1, max_size=max(1, int(cluster_cpus))),
                num_cpus=min(cpus, ACTOR_CPUS),
                **common,
            )
        else:
            transform = functools.partial(transform_block, job=job)
            dataset = dataset.map_batches(transform, num_cpus=cpus, **common)
        fs, path = uris.pyarrow_filesystem(uris.join(prepare.output, DATA_DIR))
        dataset.write_parquet(path, filesystem=fs, ray_remote_args={"num_cpus": cpus})
    finally:
        context.target_max_block_size = saved_block_size


def _log_run(prepare: PrepareConfig, stats: dict[str, Any]) -> None:
    import mlflow

    metrics = {key: stats[key] for key in ("rows_in", "rows_out", "rows_rejected", "seconds")}
    metrics |= {f"rejected_{reason}": count for reason, count in stats["rejects_by_reason"].items()}
    metrics |= {f"split_{name}": count for name, count in stats["splits"].items()}
    mlflow.log_metrics({key: float(value) for key, value in metrics.items()})
    mlflow.log_dict(stats, "prepare/stats.json")
    mlflow.log_text(_rejects_sample_csv(prepare.output), "prepare/rejects_sample.csv")
    log_dataset(prepare.output, "prepared", "output", OUTPUT_SCHEMA)


def _rejects_sample_csv(output: str) -> str:
    sample = read_rejects(output).slice(0, REJECTS_SAMPLE_ROWS).to_pandas()
    return sample.to_csv(index=False)
