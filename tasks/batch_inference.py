"""Batch inference on Ray Data, written shard by shard so that a killed run resumes.

The rows to geolocate (an ``id`` and an ``image`` URI each, plus whatever the caller's table
builder needs) are cut into shards of ``eval.rows_per_shard`` rows in input order
(geor_core.data.shards). Shards already finished by a run with the same fingerprint are skipped; the
rest go through one Ray Data pipeline:

    from_arrow(blocks of a few batches: row number + image URI)
      -> map_batches(Geolocator, actor pool of eval.num_actors, batch_size=eval.batch_size,
                     num_cpus=eval.cpus_per_actor, num_gpus=eval.gpus_per_actor)
      -> iter_batches on the driver (a console progress bar over the rows, with its ETA)

Each ``Geolocator`` actor loads the model once and limits torch to its share of cores (fractional
CPUs on a small machine: whole-CPU actors starve Ray Data's own tasks on 2 cores and the job
hangs). Photos are decoded one at a time, straight down to ``model.max_pixels`` (geor_core.data.images),
so an actor's memory does not grow with the photos' size. A photo that cannot be loaded (missing,
undecodable, over ``model.max_image_pixels``) gets an empty completion and the reason, never a crash.
The driver collects completions by shard; as soon as a shard has all its rows it builds the
shard's predictions table (the caller's ``build``, Ray-free) and writes it, then the marker.
Rows in = rows written: a lost or doubled row is an error, not a silent gap.
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

from geor_core.config import EvalConfig, GeorConfig, ModelConfig  # noqa: E402
from geor_core.console import progress_bar  # noqa: E402
from geor_core.data import shards  # noqa: E402
from geor_core.errors import UserFacingError  # noqa: E402
from geor_core.geo.prompts import INSTRUCTION  # noqa: E402
from geor_core.registry.tracking import tracking_env  # noqa: E402
from tasks.ray_session import connect_ray  # noqa: E402

MAX_BATCHES_PER_BLOCK = 8
BLOCKS_PER_ACTOR = 4  # at least this many input blocks per actor, so no actor idles while others work

# (rows of the shard, completions, inference errors) -> the shard's predictions table
TableBuilder = Callable[[pa.Table, list[str], list[str]], pa.Table]


@dataclass
class InferenceRun:
    """What one sharded inference did: shards skipped (finished before) and computed now."""

    shards: int
    shards_skipped: int
    shards_computed: list[int] = field(default_factory=list)
    rows: int = 0
    rows_computed: int = 0
    seconds: float = 0.0  # the Ray Data pipeline, actor start-up included
    first_result_seconds: float = 0.0  # until the first batch came back: start-up + one batch
    first_result_rows: int = 0

    @property
    def rows_per_second(self) -> float | None:
        return self.rows_computed / self.seconds if self.rows_computed and self.seconds else None

    @property
    def steady_rows_per_second(self) -> float | None:
        """Rows per second once the actors are up (after the first batch came back)."""
        rows, seconds = self.rows_computed - self.first_result_rows, self.seconds - self.first_result_seconds
        return rows / seconds if rows > 0 and seconds > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "rows_per_second": self.rows_per_second,
            "steady_rows_per_second": self.steady_rows_per_second,
        }


class Geolocator:
    """Ray Data actor: loads the model once, then writes one completion per photo of each batch."""

    def __init__(self, model: ModelConfig, settings: EvalConfig) -> None:
        import torch

        from geor_core.training.model_loading import load_model, load_processor

        torch.set_num_threads(max(1, int(settings.cpus_per_actor)))
        device = "cpu" if settings.gpus_per_actor == 0 and model.device == "auto" else None
        self.model = load_model(model, device=device)
        self.processor = load_processor(model)
        self.model_config = model  # the pixel bounds each photo is decoded down to
        self.settings = settings

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from geor_core.data.images import load_image
        from geor_core.training.generation import generate

        images, errors = [], []
        for uri in batch["image"]:  # one photo decoded at a time, straight down to model.max_pixels
            try:
                images.append(load_image(str(uri), self.model_config))
                errors.append("")
            except Exception as exc:  # a bad photo is reported in its row, never a failed job
                images.append(None)
                errors.append(f"{type(exc).__name__}: {exc}"[:500])
        loaded = [i for i, image in enumerate(images) if image is not None]
        completions = [""] * len(images)
        if loaded:
            texts = generate(
                self.model,
                self.processor,
                [images[i] for i in loaded],
                max_new_tokens=self.settings.max_new_tokens,
                do_sample=self.settings.do_sample,
                temperature=self.settings.temperature,
                top_p=self.settings.top_p,
                seed=int(batch["row"][0]),  # sampling depends on the rows, not on scheduling
            )
            for i, text in zip(loaded, texts, strict=True):
                completions[i] = text
        return {
            "row": batch["row"],
            "completion": np.array(completions, dtype=object),
            "inference_error": np.array(errors, dtype=object),
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


def check_resources(settings: EvalConfig) -> None:
    """The cluster can host the actor pool (otherwise Ray Data would wait for it forever)."""
    import ray

    total = ray.cluster_resources()
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

    Connects to Ray only when some shard is left to do; call it inside ``ray_scope()``."""
    plan = shards.plan_shards(rows.column("id").to_pylist(), cfg.eval.rows_per_shard)
    shards.remove_beyond(directory, len(plan))
    pending = [shard for shard in plan if not shards.is_done(directory, shard, fingerprint)]
    run = InferenceRun(shards=len(plan), shards_skipped=len(plan) - len(pending), rows=rows.num_rows)
    if not pending:
        return run
    for shard in pending:
        shards.invalidate(directory, shard)
    connect_ray()  # the caller's ray_scope shuts down a session started here
    check_resources(cfg.eval)
    started = time.monotonic()
    model = replace(cfg.model, name_or_path=model_source)
    _infer(cfg, model, rows, directory, fingerprint, pending, build, run, started)
    run.seconds = round(time.monotonic() - started, 3)
    return run


def _input_blocks(rows: pa.Table, pending: list[shards.Shard], settings: EvalConfig) -> list[pa.Table]:
    numbers = np.concatenate([np.arange(s.start, s.stop, dtype=np.int64) for s in pending])
    table = pa.table({"row": numbers, "image": rows.column("image").take(pa.array(numbers))})
    batches = math.ceil(len(numbers) / settings.batch_size)
    per_block = min(MAX_BATCHES_PER_BLOCK, max(1, batches // (settings.num_actors * BLOCKS_PER_ACTOR)))
    block_rows = per_block * settings.batch_size
    return [table.slice(start, block_rows) for start in range(0, len(numbers), block_rows)]


def _infer(
    cfg: GeorConfig,
    model: ModelConfig,
    rows: pa.Table,
    directory: str,
    fingerprint: str,
    pending: list[shards.Shard],
    build: TableBuilder,
    run: InferenceRun,
    started: float,
) -> None:
    import ray

    settings = cfg.eval
    dataset = ray.data.from_arrow(_input_blocks(rows, pending, settings))
    remote_args: dict[str, Any] = {"num_gpus": settings.gpus_per_actor} if settings.gpus_per_actor else {}
    if model.name_or_path.startswith("models:/"):  # the actors download it: they need the registry
        remote_args["runtime_env"] = {"env_vars": tracking_env(cfg)}
    dataset = dataset.map_batches(
        Geolocator,
        fn_constructor_kwargs={"model": model, "settings": settings},
        batch_size=settings.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=settings.num_actors),
        num_cpus=settings.cpus_per_actor,
        **remote_args,
    )
    by_index = {shard.index: shard for shard in pending}
    completions = {i: np.full(s.rows, None, dtype=object) for i, s in by_index.items()}
    errors = {i: np.full(s.rows, "", dtype=object) for i, s in by_index.items()}
    remaining = {i: s.rows for i, s in by_index.items()}
    per_shard = settings.rows_per_shard
    label = ["", *directory.rstrip("/").split("/")][-2]  # the model's folder (evaluate) or the stage's
    bar = progress_bar(sum(s.rows for s in pending), f"{label} inference".strip(), "row")
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        bar.update(len(batch["row"]))
        if not run.first_result_rows:
            run.first_result_seconds = round(time.monotonic() - started, 3)
            run.first_result_rows = len(batch["row"])
        finished = set()
        for row, text, error in zip(batch["row"], batch["completion"], batch["inference_error"], strict=True):
            index = int(row) // per_shard
            shard = by_index.get(index)
            position = int(row) - shard.start if shard is not None else -1
            if shard is None or completions[index][position] is not None:
                raise RuntimeError(f"row {int(row)} came back from inference twice or was never sent")
            completions[index][position] = str(text)
            errors[index][position] = str(error)
            remaining[index] -= 1
            if remaining[index] == 0:
                finished.add(index)
        for index in sorted(finished):
            _write(
                directory,
                by_index[index],
                rows,
                completions.pop(index),
                errors.pop(index),
                fingerprint,
                build,
            )
            run.shards_computed.append(index)
            run.rows_computed += by_index[index].rows
    bar.close()
    unfinished = sorted(i for i, left in remaining.items() if left)
    if unfinished:
        raise RuntimeError(f"inference returned no completion for some rows of shards {unfinished}")


def _write(
    directory: str,
    shard: shards.Shard,
    rows: pa.Table,
    completions: np.ndarray,
    errors: np.ndarray,
    fingerprint: str,
    build: TableBuilder,
) -> None:
    table = build(rows.slice(shard.start, shard.rows), completions.tolist(), errors.tolist())
    shards.write_shard(directory, shard, table, fingerprint)
