"""Batch inference on Ray Data: ONE actor pool serves every model of a run, written shard by shard
so that a killed run resumes.

A run is a list of jobs (:class:`InferenceJob`): a model, its rows (an ``id`` and an ``image`` URI
each, plus whatever the caller's table builder needs) and how to decode (greedy, or
``samples`` sampled draws per row). A sharded job cuts its rows into shards of
``eval.rows_per_shard`` rows in input order (geor_core.data.shards); shards finished by a run with
the same fingerprint are skipped. A job without a directory (the sampled reward) keeps its
completions in memory. Every job's rows go through one Ray Data pipeline, job after job:

    from_arrow(blocks of a few batches, never two jobs in one block: job, row, draw, image URI)
      -> map_batches(Geolocator, actor pool of eval.num_actors, batch_size=eval.batch_size,
                     num_cpus=eval.cpus_per_actor, num_gpus=eval.gpus_per_actor,
                     resources=cluster.worker_resources)
      -> iter_batches on the driver (a console progress bar over the rows, with its ETA)

So an evaluate run over three models pays one pool start (Ray Data, the actors' imports) instead
of six (a pool per model plus a task per sampled reward). Each ``Geolocator`` actor holds one
model at a time, loading the next when the stream reaches its rows, and limits torch to its share
of cores (fractional CPUs on a small machine: whole-CPU actors starve Ray Data's own tasks on 2
cores and the job hangs). Photos are decoded one at a time, straight down to ``model.max_pixels``
(geor_core.data.images), so an actor's memory does not grow with the photos' size. A photo that
cannot be loaded (missing, undecodable, over ``model.max_image_pixels``) gets an empty completion
and the reason, never a crash. The driver collects completions by shard; as soon as a shard has all
its rows it builds the shard's predictions table (the caller's ``build``, Ray-free) and writes it,
then the marker. Rows in = rows written: a lost or doubled row is an error, not a silent gap.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only; read at Ray import

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from geor_core.config import EvalConfig, GeorConfig  # noqa: E402
from geor_core.console import progress_bar  # noqa: E402
from geor_core.data import shards  # noqa: E402
from geor_core.errors import UserFacingError  # noqa: E402
from geor_core.geo.prompts import INSTRUCTION  # noqa: E402
from geor_core.registry.tracking import tracking_env  # noqa: E402
from tasks.inference_actor import Decoding, Geolocator  # noqa: E402
from tasks.ray_session import check_custom_resources, connect_ray  # noqa: E402

MAX_BATCHES_PER_BLOCK = 8
BLOCKS_PER_ACTOR = 4  # at least this many input blocks per actor, so no actor idles while others work

# (rows of the shard, completions, inference errors) -> the shard's predictions table
TableBuilder = Callable[[pa.Table, list[str], list[str]], pa.Table]


@dataclass
class InferenceJob:
    """One model's rows. With a ``directory``, completions are written as resumable shards through
    ``build``; without one (a handful of sampled rows), they come back in its InferenceRun."""

    source: str
    rows: pa.Table
    decoding: Decoding
    directory: str | None = None
    fingerprint: str = ""
    build: TableBuilder | None = None


@dataclass
class InferenceRun:
    """What one job's inference did: shards skipped (finished before) and computed now.

    Jobs share one pool and run one after another, so a job's ``seconds`` run from the end of the
    previous job's rows (the pool's start for the first) to the end of its own."""

    shards: int
    shards_skipped: int
    shards_computed: list[int] = field(default_factory=list)
    rows: int = 0
    rows_computed: int = 0
    seconds: float = 0.0  # the job's share of the pipeline; the first job's includes the start-up
    first_result_seconds: float = 0.0  # until the job's first batch came back
    first_result_rows: int = 0
    # in-memory jobs: draw-major (every row's draw 0, then draw 1, ...), one error per completion
    completions: list[str] | None = field(default=None, repr=False)
    errors: list[str] | None = field(default=None, repr=False)

    @property
    def rows_per_second(self) -> float | None:
        return self.rows_computed / self.seconds if self.rows_computed and self.seconds else None

    @property
    def steady_rows_per_second(self) -> float | None:
        """Rows per second once the job's first batch came back (the actors were up)."""
        rows, seconds = self.rows_computed - self.first_result_rows, self.seconds - self.first_result_seconds
        return rows / seconds if rows > 0 and seconds > 0 else None

    def to_dict(self) -> dict[str, Any]:
        summary = {k: v for k, v in asdict(self).items() if k not in ("completions", "errors")}
        return {
            **summary,
            "rows_per_second": self.rows_per_second,
            "steady_rows_per_second": self.steady_rows_per_second,
        }


def inference_fingerprint(cfg: GeorConfig, model_source: str, **inputs: Any) -> str:
    """A hash of everything that changes a prediction: the model, how it is loaded, the prompt,
    the generation settings and the caller's ``inputs`` (data fingerprint, reward settings...)."""
    material = {
        "model": model_source,
        "loading": {
            k: getattr(cfg.model, k)
            for k in ("dtype", "min_pixels", "max_pixels", "max_image_pixels", "attn_implementation")
        },
        "prompt": INSTRUCTION,
        "generation": {
            k: getattr(cfg.eval, k) for k in ("do_sample", "temperature", "top_p", "max_new_tokens")
        },
        **inputs,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:16]


@contextmanager
def ray_scope() -> Iterator[None]:
    """On exit, shut down a Ray session that the code inside started; a joined one stays up."""
    import ray

    joined = ray.is_initialized()
    try:
        yield
    finally:
        if not joined and ray.is_initialized():
            ray.shutdown()


def check_resources(settings: EvalConfig, resources: dict[str, float] | None = None) -> None:
    """The cluster can host the actor pool, custom ``resources`` per actor included (otherwise Ray
    Data would wait for it forever)."""
    import ray

    total = ray.cluster_resources()
    check_custom_resources(
        total, resources, settings.num_actors, f"per actor for eval.num_actors = {settings.num_actors}"
    )
    need_cpu = settings.num_actors * settings.cpus_per_actor
    if need_cpu > total.get("CPU", 0):
        raise UserFacingError(
            f"eval.num_actors x eval.cpus_per_actor = {settings.num_actors} x {settings.cpus_per_actor} = "
            f"{need_cpu} CPUs, but the cluster has {total.get('CPU', 0)}; lower one of them"
        )
    need_gpu = settings.num_actors * settings.gpus_per_actor
    if need_gpu > total.get("GPU", 0):
        raise UserFacingError(
            f"eval.num_actors x eval.gpus_per_actor = {need_gpu} GPUs, but the cluster has "
            f"{total.get('GPU', 0)}; set eval.gpus_per_actor=0 to run on CPUs"
        )


def run_sharded_inference(
    cfg: GeorConfig,
    model_source: str,
    rows: pa.Table,
    directory: str,
    fingerprint: str,
    build: TableBuilder,
) -> InferenceRun:
    """Geolocate every row of ``rows`` (columns ``id``, ``image``, ...) with ``model_source``;
    write ``<directory>/part-*.parquet`` (one table row per input row) with per-shard markers.
    One job of :func:`run_inference`."""
    job = InferenceJob(model_source, rows, Decoding.of_eval(cfg.eval), directory, fingerprint, build)
    return run_inference(cfg, [job])[0]


def run_inference(cfg: GeorConfig, jobs: list[InferenceJob], label: str = "") -> list[InferenceRun]:
    """Run every job through one actor pool (in order); one InferenceRun per job.

    Connects to Ray only when something is left to do; call it inside ``ray_scope()``."""
    plans = [_Plan.of(job, cfg.eval.rows_per_shard) for job in jobs]
    if any(plan.inputs for plan in plans):
        connect_ray()  # the caller's ray_scope shuts down a session started here
        check_resources(cfg.eval, cfg.cluster.worker_resources)
        _infer(cfg, plans, label or _label(jobs))
    return [plan.run for plan in plans]


@dataclass
class _Plan:
    """A job's pending work: its shards left to do (sharded) or its (row, draw) pairs (in memory)."""

    job: InferenceJob
    run: InferenceRun
    pending: list[shards.Shard]
    inputs: int  # (row, draw) pairs to send
    rows_per_shard: int

    @classmethod
    def of(cls, job: InferenceJob, rows_per_shard: int) -> _Plan:
        if job.directory is None:
            inputs = job.rows.num_rows * job.decoding.samples
            run = InferenceRun(shards=0, shards_skipped=0, rows=job.rows.num_rows)
            run.completions, run.errors = [""] * inputs, [""] * inputs
            return cls(job, run, [], inputs, rows_per_shard)
        plan = shards.plan_shards(job.rows.column("id"), rows_per_shard)
        shards.remove_beyond(job.directory, len(plan))
        done, marked = shards.scan(job.directory, plan, job.fingerprint)
        pending = [s for s in plan if s.index not in done]
        for shard in pending:
            if shard.index in marked:  # a stale marker goes before its shard is recomputed
                shards.invalidate(job.directory, shard)
        run = InferenceRun(shards=len(plan), shards_skipped=len(plan) - len(pending), rows=job.rows.num_rows)
        return cls(job, run, pending, sum(s.rows for s in pending) * job.decoding.samples, rows_per_shard)

    def input_table(self, index: int) -> pa.Table:
        """(job, row, draw, image) for every pair to send, draw-major."""
        if self.job.directory is None:
            numbers = np.arange(self.job.rows.num_rows, dtype=np.int64)
        else:
            numbers = np.concatenate([np.arange(s.start, s.stop, dtype=np.int64) for s in self.pending])
        samples = self.job.decoding.samples
        images = self.job.rows.column("image").take(pa.array(numbers))
        return pa.table(
            {
                "job": pa.array(np.full(len(numbers) * samples, index, dtype=np.int32)),
                "row": pa.array(np.tile(numbers, samples)),
                "draw": pa.array(np.repeat(np.arange(samples, dtype=np.int32), len(numbers))),
                "image": pa.concat_arrays([images.combine_chunks()] * samples),
            }
        )


def _label(jobs: list[InferenceJob]) -> str:
    directory = next((job.directory for job in jobs if job.directory), "")
    return ["", *directory.rstrip("/").split("/")][-2]  # the model's folder (evaluate) or the stage's


def _input_blocks(plans: list[_Plan], settings: EvalConfig) -> list[pa.Table]:
    """Every job's pairs in blocks of a few batches, never two jobs in one block."""
    total_batches = sum(math.ceil(plan.inputs / settings.batch_size) for plan in plans)
    per_block = min(MAX_BATCHES_PER_BLOCK, max(1, total_batches // (settings.num_actors * BLOCKS_PER_ACTOR)))
    block_rows = per_block * settings.batch_size
    blocks = []
    for index, plan in enumerate(plans):
        if plan.inputs:
            table = plan.input_table(index)
            blocks += [table.slice(start, block_rows) for start in range(0, table.num_rows, block_rows)]
    return blocks


def actor_resources(cfg: GeorConfig) -> dict[str, Any]:
    """What each actor of the pool reserves besides ``eval.cpus_per_actor`` (Ray remote args): its
    GPUs (``eval.gpus_per_actor``) and the custom resources of ``cluster.worker_resources``."""
    remote_args: dict[str, Any] = {"num_gpus": cfg.eval.gpus_per_actor} if cfg.eval.gpus_per_actor else {}
    if cfg.cluster.worker_resources:
        remote_args["resources"] = dict(cfg.cluster.worker_resources)
    return remote_args


def _infer(cfg: GeorConfig, plans: list[_Plan], label: str) -> None:
    import ray

    settings = cfg.eval
    started = time.monotonic()
    dataset = ray.data.from_arrow(_input_blocks(plans, settings))
    remote_args = actor_resources(cfg)
    if any(plan.job.source.startswith("models:/") for plan in plans):  # actors download: need the registry
        remote_args["runtime_env"] = {"env_vars": tracking_env(cfg)}
    models = [replace(cfg.model, name_or_path=plan.job.source) for plan in plans]
    dataset = dataset.map_batches(
        Geolocator,
        fn_constructor_kwargs={
            "models": models,
            "decodings": [p.job.decoding for p in plans],
            "settings": settings,
        },
        batch_size=settings.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=settings.num_actors),
        num_cpus=settings.cpus_per_actor,
        **remote_args,
    )
    collectors = [_Collector(plan) for plan in plans]
    bar = progress_bar(sum(plan.inputs for plan in plans), f"{label} inference".strip(), "row")
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        bar.update(len(batch["row"]))
        for job in np.unique(batch["job"]):
            members = batch["job"] == job
            collectors[int(job)].add(
                batch["row"][members], batch["draw"][members], batch["completion"][members],
                batch["inference_error"][members], time.monotonic() - started,
            )  # fmt: skip
    bar.close()
    previous_end = 0.0
    for collector in collectors:
        previous_end = collector.finish(previous_end)


class _Collector:
    """The driver's side of one job: completions gathered by shard (each written as soon as it is
    whole) or by (row, draw) for an in-memory job."""

    def __init__(self, plan: _Plan) -> None:
        self.plan, self.job, self.run = plan, plan.job, plan.run
        self.by_index = {shard.index: shard for shard in plan.pending}
        self.completions = {i: np.full(s.rows, None, dtype=object) for i, s in self.by_index.items()}
        self.errors = {i: np.full(s.rows, "", dtype=object) for i, s in self.by_index.items()}
        self.remaining = {i: s.rows for i, s in self.by_index.items()}
        self.received = 0
        self.last_seconds = 0.0

    def add(
        self, rows: np.ndarray, draws: np.ndarray, texts: np.ndarray, errors: np.ndarray, at: float
    ) -> None:
        if not self.received:
            self.run.first_result_seconds, self.run.first_result_rows = round(at, 3), len(rows)
        self.received += len(rows)
        self.last_seconds = at
        if self.job.directory is None:
            self._add_in_memory(rows, draws, texts, errors)
            return
        finished = set()
        per_shard = self.plan.rows_per_shard
        for row, text, error in zip(rows, texts, errors, strict=True):
            index = int(row) // per_shard
            shard = self.by_index.get(index)
            position = int(row) - shard.start if shard is not None else -1
            if shard is None or self.completions[index][position] is not None:
                raise RuntimeError(f"row {int(row)} came back from inference twice or was never sent")
            self.completions[index][position] = str(text)
            self.errors[index][position] = str(error)
            self.remaining[index] -= 1
            if self.remaining[index] == 0:
                finished.add(index)
        for index in sorted(finished):
            shard = self.by_index[index]
            table = self.job.build(
                self.job.rows.slice(shard.start, shard.rows),
                self.completions.pop(index).tolist(),
                self.errors.pop(index).tolist(),
            )
            shards.write_shard(self.job.directory, shard, table, self.job.fingerprint)
            self.run.shards_computed.append(index)
            self.run.rows_computed += shard.rows

    def _add_in_memory(
        self, rows: np.ndarray, draws: np.ndarray, texts: np.ndarray, errors: np.ndarray
    ) -> None:
        count = self.job.rows.num_rows
        for row, draw, text, error in zip(rows, draws, texts, errors, strict=True):
            position = int(draw) * count + int(row)
            self.run.completions[position] = str(text)
            self.run.errors[position] = str(error)
        self.run.rows_computed = self.received // self.job.decoding.samples

    def finish(self, previous_end: float) -> float:
        """Check that every pair came back; returns when the job's last batch did."""
        unfinished = sorted(i for i, left in self.remaining.items() if left)
        if unfinished or self.received != self.plan.inputs:
            raise RuntimeError(
                f"inference returned {self.received} of {self.plan.inputs} completions for "
                f"{self.job.source} (unfinished shards: {unfinished})"
            )
        if self.plan.inputs:
            self.run.seconds = round(self.last_seconds - previous_end, 3)
            self.run.first_result_seconds = round(self.run.first_result_seconds - previous_end, 3)
            return self.last_seconds
        return previous_end
