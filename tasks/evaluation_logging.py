"""`geor evaluate`'s MLflow records: the ``evaluate`` run (comparison table, CDF plot, each
model's headline metrics and sampled reward as ``<label>/<metric>``) and one child run per model
(metrics, ``sampled_reward`` and ``sampled/<component>``, per-split metrics, tables through
``mlflow.log_table``, plots, the predictions URI as the tag ``geor.predictions_uri``)."""

from __future__ import annotations

import io
import re
from typing import TYPE_CHECKING, Any

import pandas as pd

from geor_core import uris
from geor_core.config import GeorConfig
from geor_core.config.logged_params import config_yaml
from geor_core.registry import tracking
from geor_core.scoring.evaluation_report import METRIC_KEYS, comparison_columns

if TYPE_CHECKING:
    from tasks.evaluate import ModelEvaluation


def _numeric(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    return {
        f"{prefix}{key}": float(value)
        for key, value in metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def log_png(png: bytes, artifact_file: str) -> None:
    """Log PNG bytes to the active MLflow run as an image (shown in the run's UI)."""
    import mlflow
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        mlflow.log_image(image.convert("RGB"), artifact_file=artifact_file)


def log_model_run(cfg: GeorConfig, evaluation: ModelEvaluation, directory: str) -> None:
    """A child run of the active evaluate run for one model; its plots are read from ``directory``."""
    import mlflow

    report = evaluation.report
    tags = tracking.lineage_tags(
        cfg,
        "evaluate",
        {
            "geor.model": evaluation.source,
            "geor.model_label": evaluation.label,
            "geor.predictions_uri": evaluation.predictions_uri,
        },
    )
    experiment = mlflow.active_run().info.experiment_id  # else the child lands in the default experiment
    with mlflow.start_run(
        run_name=f"evaluate:{evaluation.label}", experiment_id=experiment, nested=True, tags=tags
    ):
        headline = {key: report.metrics.get(key) for key in METRIC_KEYS}
        metrics = (
            _numeric(headline) | _numeric(report.levels, "levels/") | _numeric(report.consistency, "cor/")
        )
        for split, result in report.splits.items():
            metrics |= _numeric({key: result.get(key) for key in METRIC_KEYS}, f"{split}/")
        for group, result in report.groups.items():
            name = re.sub(r"[^\w.\-]+", "_", group)  # what MLflow accepts in a metric name
            metrics |= _numeric({key: result.get(key) for key in (*METRIC_KEYS, "reward")}, f"group/{name}/")
        if evaluation.sampled:
            metrics["sampled_reward"] = evaluation.sampled["combined"]
            metrics |= _numeric(evaluation.sampled, "sampled/")
        if evaluation.inference.rows_per_second:
            metrics["rows_per_second"] = evaluation.inference.rows_per_second
        mlflow.log_metrics(metrics)
        mlflow.log_text(config_yaml(cfg), tracking.CONFIG_ARTIFACT)
        mlflow.log_dict(report.summary(), "metrics.json")
        mlflow.log_table(report.per_country, "per_country.json")
        mlflow.log_table(report.worst, "worst.json")
        for name in ("error_cdf.png", "world_map.png", "per_country.png"):
            log_png(uris.read_bytes(uris.join(directory, "plots", name)), f"plots/{name}")


def log_comparison(
    evaluations: list[ModelEvaluation],
    comparison: list[dict[str, Any]],
    output_uri: str,
    benchmark: str | None,
) -> None:
    """The evaluate run itself: each model's headline metrics as ``<label>/<metric>``, the comparison
    table and CDF plot (read from ``output_uri``), the benchmark and predictions URIs as tags."""
    import mlflow

    metrics: dict[str, float] = {}
    for evaluation in evaluations:
        headline = {key: evaluation.comparison_metrics().get(key) for key in (*METRIC_KEYS, "sampled_reward")}
        metrics |= _numeric(headline, f"{evaluation.label}/")
    mlflow.log_metrics(metrics)
    mlflow.log_table(pd.DataFrame(comparison, columns=comparison_columns(comparison)), "comparison.json")
    mlflow.log_text(uris.read_text(uris.join(output_uri, "comparison.md")), "comparison.md")
    log_png(uris.read_bytes(uris.join(output_uri, "error_cdf.png")), "error_cdf.png")
    mlflow.set_tags(
        {
            "geor.benchmark": benchmark or "",
            **{f"geor.predictions_uri.{e.label}": e.predictions_uri for e in evaluations},
        }
    )
