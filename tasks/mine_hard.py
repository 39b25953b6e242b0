"""`geor mine-hard`: run a model over the training pool and keep the rows it misses by more than
a radius (Geo-R's hard samples for GRPO), as a dataset in `geor prepare`'s format.

Only the ``train`` split is mined (its first ``eval.max_rows`` rows; 0: all): a row is kept when
its prediction lands farther than ``radius_km`` from the truth, or is missing (a missing
prediction counts as far; only the predictions' ids, errors and countries are read back, not
their completions). Every other split (val, test) is copied unchanged, so training on the
mined data still validates on the same rows. Output layout (local or s3://)::

    data/part-*.parquet    the kept rows, a file per source file, in the source's order, with
                           prepare's schema
    rejects/               absent: nothing is rejected here (dropped rows are counted in stats)
    predictions/           the mining predictions (geor_core.scoring.predictions), shards resume
    stats.json             prepare's statistics (rows_in: the source's rows, rows_out: kept,
                           rows_dropped) + a ``mining`` section (rows in, kept, dropped, missing
                           predictions, per country)
    _SUCCESS.json          written last: the stats, the radius, the model, the source data

A complete output made with the same model, data and settings is skipped; another one is an
error unless ``overwrite``. The output is claimed first (geor_core/ownership.py: refused when geor
did not write it, or when it is or holds the model), and only the entries above are replaced.
`geor sft` / `geor grpo` accept the output as ``--data``.
"""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from geor_core import uris
from geor_core.config import GeorConfig
from geor_core.data.cor_rows import OUTPUT_SCHEMA
from geor_core.data.dataset import (
    DATA_DIR,
    STATS_FILE,
    output_stats,
    parquet_files,
    require_prepared,
)
from geor_core.data.shards import MARKERS_DIR
from geor_core.errors import UserFacingError
from geor_core.ownership import claim_output
from geor_core.registry import tracking
from geor_core.registry.dataset_inputs import log_dataset
from geor_core.registry.lineage import data_fingerprint
from geor_core.scoring.predictions import evaluation_predictions
from tasks.batch_inference import InferenceRun, inference_fingerprint, ray_scope, run_sharded_inference
from tasks.evaluate import first_rows
from tasks.training_run import check_model_source

MINED_SPLIT = "train"
PREDICTIONS_DIR = "predictions"
MINING_COLUMNS = ["id", "error_km", "truth_country_code"]  # of the predictions: what mining reads back


@dataclass
class MineHardResult:
    """The mined dataset's stats, and whether a finished output was only found again."""

    output: str
    stats: dict[str, Any]
    skipped: bool
    inference: InferenceRun | None


def run_mine_hard(
    cfg: GeorConfig, data_uri: str, model: str, output_uri: str, radius_km: float, *, overwrite: bool = False
) -> MineHardResult:
    """Mine the hard training rows of ``data_uri`` for ``model``; write them to ``output_uri``."""
    started = time.monotonic()
    _check_paths(data_uri, output_uri)
    if not radius_km > 0:
        raise UserFacingError(f"--radius-km: got {radius_km!r}, must be > 0")
    require_prepared(data_uri)
    check_model_source(model)
    owned = claim_output(
        output_uri,
        "mine-hard",
        inputs={"data": data_uri, "model": model},
        legacy=(uris.MARKER_NAME, f"{PREDICTIONS_DIR}/{MARKERS_DIR}"),
    )
    source_fingerprint = data_fingerprint(data_uri)
    fingerprint = inference_fingerprint(cfg, model, data=source_fingerprint, task="mine-hard")
    settings = {"fingerprint": fingerprint, "radius_km": radius_km, "max_rows": cfg.eval.max_rows}
    done = uris.read_marker(output_uri)
    if done is not None and not overwrite:
        if done.get("settings") == settings:
            return MineHardResult(output_uri, done["stats"], True, None)
        raise UserFacingError(
            f"{output_uri} is already a complete mine-hard output made with other settings "
            f"({done.get('settings')}); pass --overwrite to replace it, or choose another --output"
        )
    owned.remove(uris.MARKER_NAME, DATA_DIR, STATS_FILE)  # the marker first: never over new files

    pool = first_rows(data_uri, MINED_SPLIT, cfg.eval.max_rows)
    if pool.num_rows == 0:
        raise UserFacingError(f"{data_uri} has no {MINED_SPLIT!r} rows to mine")
    predictions_uri = uris.join(output_uri, PREDICTIONS_DIR)

    def build(rows: pa.Table, completions: list[str], errors: list[str]) -> pa.Table:
        return evaluation_predictions(rows, completions, errors, cfg.reward)

    tags = {
        "geor.data_fingerprint": source_fingerprint,
        "geor.upstream.data": data_uri,
        "geor.upstream.model": model,
        "geor.predictions_uri": predictions_uri,
    }
    inputs = {"model": model, "data": data_uri}
    with (
        ray_scope(),
        tracking.stage_run(cfg, "mine-hard", tags=tags, inputs=inputs, output=output_uri) as run,
    ):
        inference = run_sharded_inference(cfg, model, pool, predictions_uri, fingerprint, build)
        predictions = read_mining_predictions(predictions_uri)
        hard_ids = hard_row_ids(predictions, radius_km)
        kept = _write_kept_rows(data_uri, output_uri, hard_ids)
        stats = output_stats(output_uri, kept["rows_in"], time.monotonic() - started)
        stats["rows_dropped"] = (
            stats["rows_in"] - stats["rows_out"]
        )  # easy train rows (+ any beyond max_rows)
        stats["mining"] = _mining_stats(predictions, hard_ids, radius_km, pool.num_rows, kept)
        if stats["splits"].get(MINED_SPLIT, 0) != len(hard_ids):
            raise RuntimeError(
                f"{len(hard_ids)} hard rows found but {stats['splits'].get(MINED_SPLIT, 0)} written"
            )
        uris.write_text(uris.join(output_uri, STATS_FILE), json.dumps(stats, indent=2) + "\n")
        uris.write_marker(
            output_uri,
            {
                "stage": "mine-hard",
                "stats": stats,
                "settings": settings,
                "model": model,
                "source": data_uri,
                "manifest": require_prepared(data_uri).get("manifest"),
                **({uris.MARKER_RUN_ID: run.info.run_id} if run is not None else {}),
            },
        )
        if run is not None:
            _log_run(stats, output_uri)  # after the marker: the dataset's digest is final
    return MineHardResult(output_uri, stats, False, inference)


def _check_paths(data_uri: str, output_uri: str) -> None:
    def folder(uri: str) -> str:
        return (uri if uris.is_s3(uri) else uris.filesystem(uri)[1]).rstrip("/") + "/"

    if folder(output_uri).startswith(folder(data_uri)) or folder(data_uri).startswith(folder(output_uri)):
        raise UserFacingError(
            f"--output {output_uri} must not be --data {data_uri} or inside it (or contain it)"
        )


def read_mining_predictions(predictions_uri: str) -> pa.Table:
    """The predictions' columns mining needs (``MINING_COLUMNS``): not their completions."""
    fs, files = parquet_files(predictions_uri)
    return pads.dataset(files, filesystem=fs, format="parquet").to_table(columns=MINING_COLUMNS)


def hard_row_ids(predictions: pa.Table, radius_km: float) -> set[str]:
    """Ids whose prediction is farther than ``radius_km`` from the truth, or missing."""
    error = predictions.column("error_km").to_numpy(zero_copy_only=False)
    far = np.isnan(error) | (error > radius_km)
    return set(predictions.column("id").filter(pa.array(far)).to_pylist())


def _write_kept_rows(data_uri: str, output_uri: str, hard_ids: set[str]) -> dict[str, Any]:
    """Copy every non-train row and the hard train rows to ``data/``, file by file in the
    source's order (memory stays at one source file)."""
    hard = pa.array(sorted(hard_ids), pa.string())
    fs, files = parquet_files(uris.join(data_uri, DATA_DIR))
    rows_in, train_rows, unmined = 0, 0, Counter()
    for number, path in enumerate(files):
        source = pq.read_table(path, filesystem=fs, schema=OUTPUT_SCHEMA)
        is_train = pc.equal(source.column("split"), MINED_SPLIT)
        keep = pc.or_(pc.invert(is_train), pc.is_in(source.column("id"), value_set=hard))
        buffer = io.BytesIO()
        pq.write_table(source.filter(keep), buffer)
        uris.write_atomic(uris.join(output_uri, DATA_DIR, f"part-{number:05d}.parquet"), buffer.getvalue())
        rows_in += source.num_rows
        train_rows += int(pc.sum(is_train).as_py() or 0)
        unmined.update(s for s in source.column("split").to_pylist() if s != MINED_SPLIT)
    return {"rows_in": rows_in, "train_rows": train_rows, "unmined_splits": dict(sorted(unmined.items()))}


def _mining_stats(
    predictions: pa.Table, hard_ids: set[str], radius_km: float, mined: int, kept: dict[str, Any]
) -> dict[str, Any]:
    error = predictions.column("error_km").to_numpy(zero_copy_only=False)
    is_hard = pc.is_in(predictions.column("id"), value_set=pa.array(sorted(hard_ids), pa.string()))
    counts = (
        pa.table({"code": predictions.column("truth_country_code"), "hard": pc.cast(is_hard, pa.int64())})
        .group_by("code")
        .aggregate([("hard", "count"), ("hard", "sum")])
        .to_pylist()
    )
    per_country = {
        row["code"]: {
            "rows_in": row["hard_count"],
            "kept": row["hard_sum"],
            "dropped": row["hard_count"] - row["hard_sum"],
        }
        for row in counts
    }
    kept_rows = int(pc.sum(is_hard).as_py() or 0)
    return {
        "split": MINED_SPLIT,
        "radius_km": radius_km,
        "rows_in": mined,
        "kept": kept_rows,
        "dropped": int(mined - kept_rows),
        "missing_predictions": int(np.isnan(error).sum()),
        "train_rows_not_mined": kept["train_rows"] - mined,  # beyond eval.max_rows: not in the output
        "unmined_splits_copied": kept["unmined_splits"],
        "per_country": dict(sorted(per_country.items(), key=lambda item: (-item[1]["rows_in"], item[0]))),
    }


def _log_run(stats: dict[str, Any], output_uri: str) -> None:
    import mlflow

    mining = stats["mining"]
    keys = ("rows_in", "kept", "dropped", "missing_predictions", "train_rows_not_mined")
    mlflow.log_metrics({f"mining_{key}": float(mining[key]) for key in keys})
    mlflow.log_dict(stats, "mine_hard/stats.json")
    log_dataset(output_uri, "hard-samples", "output", OUTPUT_SCHEMA)
