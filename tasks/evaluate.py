"""`geor evaluate`: batch inference on Ray Data for one or more models, then the field's standard
report for each, a comparison table and plots.

Output layout (local or s3://)::

    models/<label>/predictions/part-*.parquet   one row per evaluated photo (+ _markers/: resume)
    models/<label>/metrics.json                 metrics overall and per split, levels, consistency
    models/<label>/sampled_reward.json          the sampled reward (eval.sampled_rows > 0)
    models/<label>/per_country.{csv,md}         the most frequent true countries
    models/<label>/worst.{csv,md}               the worst rows with their reasoning
    models/<label>/plots/{error_cdf,world_map,per_country}.png
    comparison.{md,json}                        a row per model (+ published rows on IM2GPS3K/YFCC4K)
    error_cdf.png                               one curve per model
    _SUCCESS.json                               written last: the comparison and where things are

The output is claimed first (geor_core/ownership.py): a folder geor did not write, or one that
is or holds the data or a model, is refused; only the entries above are ever deleted there.

Metrics are computed by `geor score`'s code (geor_core.scoring.evaluation_report). Rows come from the
prepared data's ``eval.splits`` in that order, the first ``eval.max_rows`` of each (0: all).
A re-run skips every finished prediction shard and rebuilds the report.

Sampled reward (``eval.sampled_rows`` > 0): beside the greedy metrics, each model's mean combined
reward over ``eval.sampled_per_row`` completions sampled with GRPO's settings on the first
``eval.sampled_rows`` evaluated rows (geor_core.training.sampled_reward: the objective GRPO optimises,
which greedy metrics do not show). It runs after batch inference as ONE Ray task with one
inference actor's resources (a few dozen rows do not pay for a Ray Data pipeline), is the
comparison's ``sampled_reward`` column, and is kept with a fingerprint so a re-run reuses it.
MLflow: an ``evaluate`` run with one child run per model (tasks/evaluation_logging.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from geor_core import uris
from geor_core.config import GeorConfig, ModelConfig
from geor_core.data.cor_rows import OUTPUT_SCHEMA
from geor_core.data.dataset import read_prepared, require_prepared
from geor_core.data.shards import MARKERS_DIR
from geor_core.errors import UserFacingError
from geor_core.ownership import claim_output
from geor_core.registry import tracking
from geor_core.registry.dataset_inputs import log_dataset
from geor_core.registry.lineage import data_fingerprint
from geor_core.scoring import plots
from geor_core.scoring.evaluation_report import (
    COMPARISON_COLUMNS,
    ModelReport,
    comparison_rows,
    markdown_table,
    model_report,
)
from geor_core.scoring.predictions import PREPARED_TRUTH, evaluation_predictions
from geor_core.scoring.published import BENCHMARKS, detect_benchmark
from geor_core.scoring.scoring import read_table
from geor_core.training.sampled_reward import SAMPLING_SEED
from tasks.batch_inference import (
    Geolocator,
    InferenceRun,
    inference_fingerprint,
    ray_scope,
    run_sharded_inference,
)
from tasks.evaluation_logging import log_comparison, log_model_run
from tasks.ray_session import connect_ray
from tasks.training_run import check_model_source

INPUT_COLUMNS = ["id", "split", "image", *dict.fromkeys(PREPARED_TRUTH.values())]
_LABEL_RE = re.compile(r"^([A-Za-z0-9][\w.\-]{0,63})=(.+)$")
MODELS_DIR = "models"
REPORT_ENTRIES = (MODELS_DIR, "comparison.md", "comparison.json", "error_cdf.png")  # + the marker


@dataclass
class ModelEvaluation:
    """One model's evaluation: where its predictions are, its report, what inference did."""

    label: str
    source: str
    predictions_uri: str
    report: ModelReport
    inference: InferenceRun
    error_km: np.ndarray  # per evaluated row, NaN where the prediction is missing
    sampled: (
        dict[str, Any] | None
    )  # geor_core.training.sampled_reward's summary; None when eval.sampled_rows is 0

    def comparison_metrics(self) -> dict[str, Any]:
        """The greedy score result plus ``sampled_reward`` (the mean combined sampled reward)."""
        return {**self.report.metrics, "sampled_reward": self.sampled["combined"] if self.sampled else None}


@dataclass
class EvaluateResult:
    """What `geor evaluate` produced."""

    output: str
    benchmark: str | None
    models: list[ModelEvaluation]
    comparison: list[dict[str, Any]]


def model_labels(specs: list[str]) -> list[tuple[str, str]]:
    """``--model`` values -> unique (label, source) pairs. ``LABEL=URI`` names a model; otherwise
    the label is the source's last path part (``models:/NAME@ALIAS`` -> ``NAME-ALIAS``)."""
    pairs, seen = [], set()
    for spec in specs:
        match = _LABEL_RE.match(spec)
        if match and "://" not in match.group(1):
            label, source = match.group(1), match.group(2)
        else:
            label = re.sub(r"[^\w.\-]+", "-", spec.rstrip("/").rsplit("/", 1)[-1]).strip("-") or "model"
            source = spec
        base, counter = label, 2
        while label in seen:
            label, counter = f"{base}-{counter}", counter + 1
        seen.add(label)
        pairs.append((label, source))
    return pairs


def evaluation_rows(data_uri: str, splits: list[str], max_rows: int) -> pa.Table:
    """The rows to evaluate: each split in order, the first ``max_rows`` of each (0: all)."""
    available = require_prepared(data_uri).get("stats", {}).get("splits", {})
    tables = []
    for split in splits:
        table = read_prepared(data_uri, split, INPUT_COLUMNS)
        if table.num_rows == 0:
            raise UserFacingError(
                f"eval.splits names {split!r}, but {data_uri} has no rows in it (splits: {available})"
            )
        tables.append(table.slice(0, max_rows) if max_rows else table)
    return pa.concat_tables(tables)


def run_evaluate(
    cfg: GeorConfig,
    data_uri: str,
    models: list[str],
    output_uri: str,
    benchmark: str | None = None,
    *,
    overwrite: bool = False,
) -> EvaluateResult:
    """Evaluate every model on the same rows and write the report under ``output_uri``, claimed
    first (geor_core/ownership.py: refused when geor did not write it, or when it is or holds the
    data or a model). ``overwrite``: delete the report's own entries first (no shard is reused)."""
    if not models:
        raise UserFacingError("no model given: pass --model URI (repeat it to compare models)")
    if benchmark is not None and benchmark not in BENCHMARKS:
        raise UserFacingError(f"--benchmark {benchmark!r}: known benchmarks are {', '.join(BENCHMARKS)}")
    labelled = model_labels(models)
    for _, source in labelled:
        check_model_source(source)
    rows = evaluation_rows(data_uri, list(cfg.eval.splits), cfg.eval.max_rows)
    manifest = str(require_prepared(data_uri).get("manifest", ""))
    benchmark = benchmark or detect_benchmark(data_uri, manifest)
    inputs = {"data": data_uri, **{f"model {label}": source for label, source in labelled}}
    legacy = (uris.MARKER_NAME, f"{MODELS_DIR}/*/predictions/{MARKERS_DIR}")
    owned = claim_output(output_uri, "evaluate", inputs=inputs, legacy=legacy)
    owned.remove(uris.MARKER_NAME)  # first: a crash never leaves an old marker
    if overwrite:
        owned.remove(*REPORT_ENTRIES)
    fingerprint_of_data = data_fingerprint(data_uri)
    tags = {
        "geor.data_fingerprint": fingerprint_of_data,
        "geor.upstream.data": data_uri,
        "geor.upstream.models": ", ".join(source for _, source in labelled),
        "geor.output": output_uri,
    }
    evaluations: list[ModelEvaluation] = []
    run_inputs = {"data": data_uri, **{f"model.{label}": source for label, source in labelled}}
    with (
        ray_scope(),
        tracking.stage_run(cfg, "evaluate", tags=tags, inputs=run_inputs, output=output_uri) as run,
    ):
        if run is not None:
            log_dataset(data_uri, "evaluation-data", "evaluation", OUTPUT_SCHEMA)
        for label, source in labelled:
            fingerprint = inference_fingerprint(cfg, source, data=fingerprint_of_data, reward=cfg.reward)
            evaluation = _evaluate_model(cfg, label, source, rows, output_uri, fingerprint)
            evaluations.append(evaluation)
            if run is not None:
                log_model_run(cfg, evaluation, _model_dir(output_uri, label))
        comparison = comparison_rows(
            [(e.label, e.source, e.comparison_metrics()) for e in evaluations], benchmark
        )
        _write_comparison(output_uri, evaluations, comparison, benchmark)
        if run is not None:
            log_comparison(evaluations, comparison, output_uri, benchmark)
    uris.write_marker(
        output_uri,
        {
            "stage": "evaluate",
            "data": data_uri,
            "benchmark": benchmark,
            "models": {e.label: {"source": e.source, "predictions": e.predictions_uri} for e in evaluations},
            "comparison": comparison,
        },
    )
    return EvaluateResult(output_uri, benchmark, evaluations, comparison)


def _model_dir(output_uri: str, label: str) -> str:
    return uris.join(output_uri, MODELS_DIR, label)


def _evaluate_model(
    cfg: GeorConfig, label: str, source: str, rows: pa.Table, output_uri: str, fingerprint: str
) -> ModelEvaluation:
    directory = _model_dir(output_uri, label)
    predictions_uri = uris.join(directory, "predictions")

    def build(shard_rows: pa.Table, completions: list[str], errors: list[str]) -> pa.Table:
        return evaluation_predictions(shard_rows, completions, errors, cfg.reward)

    inference = run_sharded_inference(cfg, source, rows, predictions_uri, fingerprint, build)
    predictions = read_table(predictions_uri)
    if len(predictions) != rows.num_rows:
        raise RuntimeError(
            f"{predictions_uri} holds {len(predictions)} rows but {rows.num_rows} were evaluated"
        )
    report = model_report(predictions, worst_n=cfg.eval.worst_n, top_countries=cfg.eval.top_countries)
    if report.metrics["n"] + report.metrics["n_truth_invalid"] != rows.num_rows:
        raise RuntimeError(f"{rows.num_rows} rows evaluated but {report.metrics['n']} scored")
    sampled = _sampled_reward(cfg, source, rows, directory, fingerprint) if cfg.eval.sampled_rows else None
    _write_model_report(directory, label, source, predictions, report, inference, sampled)
    error_km = predictions["error_km"].to_numpy(float)
    return ModelEvaluation(label, source, predictions_uri, report, inference, error_km, sampled)


def _sampled_reward(
    cfg: GeorConfig, source: str, rows: pa.Table, directory: str, fingerprint: str
) -> dict[str, Any]:
    """The sampled reward on the first ``eval.sampled_rows`` rows: reused when a finished one has
    the same fingerprint, else computed by one Ray task with one inference actor's resources."""
    settings = cfg.eval
    subset = rows.slice(0, settings.sampled_rows)
    sampling = {
        "inference": fingerprint,
        "grpo": {k: getattr(cfg.grpo, k) for k in ("temperature", "top_p", "max_completion_length")},
        "per_row": settings.sampled_per_row,
        "batch_size": settings.batch_size,
        "seed": SAMPLING_SEED,
        "ids": subset.column("id").to_pylist(),
    }
    key = inference_fingerprint(cfg, source, sampling=sampling)
    uri = uris.join(directory, "sampled_reward.json")
    if uris.exists(uri):
        kept = json.loads(uris.read_text(uri))
        if kept.get("fingerprint") == key:
            return kept["sampled"]
    import ray

    connect_ray()  # the caller's ray_scope shuts down a session started here
    resources: dict[str, Any] = {"num_cpus": settings.cpus_per_actor, "num_gpus": settings.gpus_per_actor}
    if source.startswith("models:/"):  # the task downloads it: it needs the registry
        resources["runtime_env"] = {"env_vars": tracking.tracking_env(cfg)}
    task = ray.remote(_score_sampled).options(**resources)
    sampled = ray.get(task.remote(cfg, replace(cfg.model, name_or_path=source), subset))
    uris.write_text(uri, json.dumps({"fingerprint": key, "sampled": sampled}, indent=2) + "\n")
    return sampled


def _score_sampled(cfg: GeorConfig, model: ModelConfig, rows: pa.Table) -> dict[str, Any]:
    """On a Ray worker: load the model as an inference actor does, then sample and score."""
    from geor_core.training.sampled_reward import sampled_reward

    loaded = Geolocator(model, cfg.eval)
    result = sampled_reward(
        loaded.model, loaded.processor, rows, cfg, cfg.eval.sampled_per_row, batch_size=cfg.eval.batch_size
    )
    return result.summary()


def _model_plots(label: str, predictions: pd.DataFrame, report: ModelReport) -> dict[str, bytes]:
    return {
        "error_cdf.png": plots.error_cdf_png({label: predictions["error_km"].to_numpy(float)}),
        "world_map.png": plots.world_map_png(
            predictions["lat"],
            predictions["lon"],
            predictions["truth_lat"],
            predictions["truth_lon"],
            title=f"{label}: truth (green) vs prediction (red)",
        ),
        "per_country.png": plots.country_bars_png(report.per_country, title=f"{label}: per country"),
    }


def _write_model_report(
    directory: str,
    label: str,
    source: str,
    predictions: pd.DataFrame,
    report: ModelReport,
    inference: InferenceRun,
    sampled: dict[str, Any] | None,
) -> None:
    summary = {
        "label": label,
        "model": source,
        **report.summary(),
        "sampled": sampled,
        "inference": inference.to_dict(),
    }
    uris.write_text(uris.join(directory, "metrics.json"), json.dumps(summary, indent=2, default=str) + "\n")
    for name, table in (("per_country", report.per_country), ("worst", report.worst)):
        uris.write_text(uris.join(directory, f"{name}.csv"), table.to_csv(index=False))
        records = table.to_dict("records")
        uris.write_text(uris.join(directory, f"{name}.md"), markdown_table(records, list(table.columns)))
    for name, png in _model_plots(label, predictions, report).items():
        uris.write_atomic(uris.join(directory, "plots", name), png)


def _write_comparison(
    output_uri: str,
    evaluations: list[ModelEvaluation],
    comparison: list[dict[str, Any]],
    benchmark: str | None,
) -> None:
    heading = f"Benchmark: {benchmark} (published rows for reference)\n\n" if benchmark else ""
    uris.write_text(
        uris.join(output_uri, "comparison.md"), heading + markdown_table(comparison, COMPARISON_COLUMNS)
    )
    uris.write_text(
        uris.join(output_uri, "comparison.json"),
        json.dumps({"benchmark": benchmark, "rows": comparison}, indent=2) + "\n",
    )
    curves = {e.label: e.error_km for e in evaluations}
    uris.write_atomic(uris.join(output_uri, "error_cdf.png"), plots.error_cdf_png(curves))
