"""`geor predict`: geolocate photos that have no truth, with the same Ray Data batch inference as
`geor evaluate` (tasks/batch_inference.py).

Output layout (local or s3://)::

    predictions/part-*.parquet   one row per photo (geor_core.scoring.predictions.PHOTO_SCHEMA) + _markers/
    predictions.csv              the same rows as one CSV
    world_map.png                the predicted points over the gazetteer's settlements
    _SUCCESS.json                written last: counts and where things are

``eval.max_rows`` limits the photos (0: all); a re-run skips finished shards. The output is
claimed first (geor_core/ownership.py): a folder geor did not write, or one that is or holds the
photos or the model, is refused. MLflow: a
``predict`` run with the counts, the map and the predictions URI as ``geor.predictions_uri``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from geor_core import uris
from geor_core.config import GeorConfig
from geor_core.data.photo_inputs import list_photos
from geor_core.data.shards import MARKERS_DIR
from geor_core.ownership import claim_output
from geor_core.registry import tracking
from geor_core.scoring import plots
from geor_core.scoring.predictions import photo_predictions
from geor_core.scoring.scoring import read_table
from tasks.batch_inference import InferenceRun, inference_fingerprint, ray_scope, run_sharded_inference
from tasks.evaluation_logging import log_png
from tasks.training_run import check_model_source


@dataclass
class PredictResult:
    """Where the predictions went, and counts over them."""

    output: str
    predictions_uri: str
    csv_uri: str
    map_uri: str
    summary: dict[str, Any]
    inference: InferenceRun


def run_predict(
    cfg: GeorConfig, model: str, images: str, output_uri: str, *, id_col: str = "id", image_col: str = "image"
) -> PredictResult:
    """Geolocate every photo of ``images`` (a folder or a manifest) with ``model``."""
    check_model_source(model)
    photos = list_photos(
        images,
        id_col=id_col,
        image_col=image_col,
        allowed_schemes=cfg.prepare.allowed_schemes,
        images_root=cfg.prepare.images_root,
    )
    if cfg.eval.max_rows:
        photos = photos.slice(0, cfg.eval.max_rows)
    owned = claim_output(
        output_uri,
        "predict",
        inputs={"images": images, "model": model},
        legacy=(uris.MARKER_NAME, f"predictions/{MARKERS_DIR}"),
    )
    owned.remove(uris.MARKER_NAME)  # first: a crash never leaves an old marker
    predictions_uri = uris.join(output_uri, "predictions")
    fingerprint = inference_fingerprint(cfg, model, task="predict")

    def build(rows: pa.Table, completions: list[str], errors: list[str]) -> pa.Table:
        return photo_predictions(
            rows.column("id").to_pylist(), rows.column("image").to_pylist(), completions, errors
        )

    tags = {
        "geor.upstream.images": images,
        "geor.upstream.model": model,
        "geor.predictions_uri": predictions_uri,
    }
    inputs = {"model": model, "images": images}
    with ray_scope(), tracking.stage_run(cfg, "predict", tags=tags, inputs=inputs, output=output_uri) as run:
        inference = run_sharded_inference(cfg, model, photos, predictions_uri, fingerprint, build)
        table = read_table(predictions_uri)
        if len(table) != photos.num_rows:
            raise RuntimeError(
                f"{predictions_uri} holds {len(table)} rows but {photos.num_rows} photos were given"
            )
        csv_uri = uris.join(output_uri, "predictions.csv")
        map_uri = uris.join(output_uri, "world_map.png")
        uris.write_text(csv_uri, table.to_csv(index=False))
        png = plots.world_map_png(table["lat"], table["lon"], title=f"{len(table)} photos")
        uris.write_atomic(map_uri, png)
        found = ~np.isnan(table["lat"].to_numpy(float))
        summary = {
            "photos": len(table),
            "predicted": int(found.sum()),
            "missing": int((~found).sum()),
            "format_ok": int(table["format_ok"].sum()),
            "chain_ok": int(table["chain_ok"].sum()),
            "country_consistent": int(table["cor_country_consistent"].sum()),
            "images_not_loaded": int((table["inference_error"] != "").sum()),
        }
        if run is not None:
            _log_run(summary, png, inference)
    uris.write_marker(
        output_uri,
        {"stage": "predict", "model": model, "images": images, "predictions": predictions_uri, **summary},
    )
    return PredictResult(output_uri, predictions_uri, csv_uri, map_uri, summary, inference)


def _log_run(summary: dict[str, int], png: bytes, inference: InferenceRun) -> None:
    import mlflow

    metrics = {key: float(value) for key, value in summary.items()}
    if inference.rows_per_second:
        metrics["rows_per_second"] = inference.rows_per_second
    mlflow.log_metrics(metrics)
    log_png(png, "world_map.png")
