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

Metrics are computed by `geor score`'s code, in Ray Data over the prediction shards above
``eval.report_in_driver_rows`` rows (tasks/evaluation_tally.py: the driver merges small tallies
and never holds the predictions), in the driver below. Rows come from the
prepared data's ``eval.splits`` in that order, the first ``eval.max_rows`` of each (0: all).
A re-run skips every finished prediction shard and rebuilds the report.

Sampled reward (``eval.sampled_rows`` > 0): beside the greedy metrics, each model's mean combined
reward over ``eval.sampled_per_row`` completions sampled with GRPO's settings on the first
``eval.sampled_rows`` evaluated rows (geor_core.training.sampled_reward: the objective GRPO optimises,
which greedy metrics do not show). Every model's greedy rows and sampled draws go through ONE
actor pool (tasks/batch_inference.py), model after model: one pool start per run, not one per
model plus one per sampled reward. The sampled reward is the comparison's ``sampled_reward``
column, and is kept with a fingerprint so a re-run reuses it.
MLflow: an ``evaluate`` run with one child run per model (tasks/evaluation_logging.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from geor_core import uris
from geor_core.config import GeorConfig
from geor_core.data.cor_rows import OUTPUT_SCHEMA
from geor_core.data.dataset import head_prepared, read_prepared, require_prepared
from geor_core.data.shards import MARKERS_DIR
from geor_core.errors import UserFacingError
from geor_core.ownership import claim_output
from geor_core.registry import tracking
from geor_core.registry.dataset_inputs import log_dataset
from geor_core.registry.lineage import data_fingerprint
from geor_core.scoring import plots
from geor_core.scoring.evaluation_report import (
    comparison_columns,
    comparison_rows,
    group_rewards,
    markdown_table,
)
from geor_core.scoring.predictions import PREPARED_TRUTH, evaluation_predictions
from geor_core.scoring.published import BENCHMARKS, detect_benchmark
from geor_core.scoring.report_tally import ModelReport
from geor_core.training.sampled_reward import SAMPLING_SEED, score_sampled
from tasks.batch_inference import InferenceJob, InferenceRun, inference_fingerprint, ray_scope, run_inference
from tasks.evaluation_logging import log_comparison, log_model_run
from tasks.evaluation_tally import tally_report
from tasks.inference_actor import Decoding
from tasks.training_run import check_model_source

INPUT_COLUMNS = ["id", "split", "group", "image", *dict.fromkeys(PREPARED_TRUTH.values())]
_LABEL_RE = re.compile(r"^([A-Za-z0-9][\w.\-]{0,63})=(.+)$")
MODELS_DIR = "models"
SAMPLED_FILE = "sampled_reward.json"
REPORT_ENTRIES = (MODELS_DIR, "comparison.md", "comparison.json", "error_cdf.png")  # + the marker


@dataclass
class ModelEvaluation:
    """One model's evaluation: where its predictions are, its report, what inference did."""

    label: str
    source: str
    predictions_uri: str
    report: ModelReport
    inference: InferenceRun
    sampled: (
        dict[str, Any] | None
    )  # geor_core.training.sampled_reward's summary; None when eval.sampled_rows is 0

    def comparison_metrics(self) -> dict[str, Any]:
        """The greedy score result plus ``sampled_reward`` (the mean combined sampled reward) and
        ``reward_<group>`` per group (the mean combined greedy reward)."""
        sampled = self.sampled["combined"] if self.sampled else None
        return {**self.report.metrics, "sampled_reward": sampled, **group_rewards(self.report.groups)}


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


def first_rows(data_uri: str, split: str, max_rows: int) -> pa.Table:
    """``INPUT_COLUMNS`` of the first ``max_rows`` rows of ``split`` (0: all), read no further."""
    if max_rows:
        return head_prepared(data_uri, split, INPUT_COLUMNS, max_rows)
    return read_prepared(data_uri, split, INPUT_COLUMNS)


def evaluation_rows(data_uri: str, splits: list[str], max_rows: int) -> pa.Table:
    """The rows to evaluate: each split in order, the first ``max_rows`` of each (0: all)."""
    available = require_prepared(data_uri).get("stats", {}).get("splits", {})
    tables = []
    for split in splits:
        table = first_rows(data_uri, split, max_rows)
        if table.num_rows == 0:
            raise UserFacingError(
                f"eval.splits names {split!r}, but {data_uri} has no rows in it (splits: {available})"
            )
        tables.append(table)
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
        plans = [
            _ModelPlan.of(cfg, label, source, rows, output_uri, fingerprint_of_data)
            for label, source in labelled
        ]
        runs = iter(run_inference(cfg, [job for plan in plans for job in plan.jobs()], label="evaluate"))
        for plan in plans:  # the runs come back in the jobs' order
            inference, sampled_run = next(runs), next(runs) if plan.sampled_job else None
            evaluation = _finish_model(cfg, plan, rows, inference, sampled_run)
            evaluations.append(evaluation)
            if run is not None:
                log_model_run(cfg, evaluation, plan.directory)
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


@dataclass
class _ModelPlan:
    """One model's inference jobs: greedy predictions (sharded, resumable) and, unless a kept one
    has the same fingerprint, its sampled reward (in memory)."""

    label: str
    source: str
    directory: str
    greedy_job: InferenceJob
    sampled_job: InferenceJob | None
    sampled_key: str  # the sampled reward's fingerprint ("" when eval.sampled_rows is 0)
    sampled_kept: dict[str, Any] | None

    @classmethod
    def of(
        cls, cfg: GeorConfig, label: str, source: str, rows: pa.Table, output_uri: str, data_fingerprint: str
    ) -> _ModelPlan:
        directory = uris.join(output_uri, MODELS_DIR, label)
        fingerprint = inference_fingerprint(cfg, source, data=data_fingerprint, reward=cfg.reward)

        def build(shard_rows: pa.Table, completions: list[str], errors: list[str]) -> pa.Table:
            return evaluation_predictions(shard_rows, completions, errors, cfg.reward)

        greedy = InferenceJob(
            source, rows, Decoding.of_eval(cfg.eval), uris.join(directory, "predictions"), fingerprint, build
        )
        if not cfg.eval.sampled_rows:
            return cls(label, source, directory, greedy, None, "", None)
        subset = rows.slice(0, cfg.eval.sampled_rows)
        decoding = Decoding(
            cfg.grpo.max_completion_length, True, cfg.grpo.temperature, cfg.grpo.top_p,
            samples=cfg.eval.sampled_per_row, seed=SAMPLING_SEED,
        )  # fmt: skip
        sampling = {
            "inference": fingerprint,
            "grpo": {k: getattr(cfg.grpo, k) for k in ("temperature", "top_p", "max_completion_length")},
            "per_row": cfg.eval.sampled_per_row,
            "batch_size": cfg.eval.batch_size,
            "seed": SAMPLING_SEED,
            "ids": subset.column("id").to_pylist(),
        }
        key = inference_fingerprint(cfg, source, sampling=sampling)
        kept_uri = uris.join(directory, SAMPLED_FILE)
        kept = json.loads(uris.read_text(kept_uri)) if uris.exists(kept_uri) else {}
        if kept.get("fingerprint") == key:
            return cls(label, source, directory, greedy, None, key, kept["sampled"])
        return cls(label, source, directory, greedy, InferenceJob(source, subset, decoding), key, None)

    def jobs(self) -> list[InferenceJob]:
        return [self.greedy_job, *([self.sampled_job] if self.sampled_job else [])]


def _finish_model(
    cfg: GeorConfig,
    plan: _ModelPlan,
    rows: pa.Table,
    inference: InferenceRun,
    sampled_run: InferenceRun | None,
) -> ModelEvaluation:
    """The model's report from its written predictions, and its sampled reward scored and kept."""
    predictions_uri = plan.greedy_job.directory
    report = tally_report(
        predictions_uri,
        rows.num_rows,
        splits=list(cfg.eval.splits),
        worst_n=cfg.eval.worst_n,
        top_countries=cfg.eval.top_countries,
        in_driver_rows=cfg.eval.report_in_driver_rows,
    )
    if report.metrics["n_truth_rows"] != rows.num_rows:
        raise RuntimeError(
            f"{predictions_uri} holds {report.metrics['n_truth_rows']} rows but {rows.num_rows} were evaluated"
        )
    sampled = plan.sampled_kept
    if sampled_run is not None:
        sampled = _score_sampled(cfg, plan.sampled_job.rows, sampled_run)
        record = {"fingerprint": plan.sampled_key, "sampled": sampled}
        uris.write_text(uris.join(plan.directory, SAMPLED_FILE), json.dumps(record, indent=2) + "\n")
    _write_model_report(plan.directory, plan.label, plan.source, report, inference, sampled)
    return ModelEvaluation(plan.label, plan.source, predictions_uri, report, inference, sampled)


def _score_sampled(cfg: GeorConfig, rows: pa.Table, run: InferenceRun) -> dict[str, Any]:
    """The sampled reward's summary over the rows whose photo loaded in every draw."""
    samples = cfg.eval.sampled_per_row
    errors = np.array(run.errors, dtype=object).reshape(samples, rows.num_rows)
    readable = np.flatnonzero((errors == "").all(axis=0))
    if not readable.size:
        raise UserFacingError(
            f"none of the {rows.num_rows} sampled rows has a readable photo: no sampled reward"
        )
    texts = np.array(run.completions, dtype=object).reshape(samples, rows.num_rows)[:, readable]
    unreadable = rows.num_rows - readable.size
    result = score_sampled(texts.ravel().tolist(), rows.take(readable), unreadable, samples, cfg.reward)
    return result.summary()


def _model_plots(label: str, report: ModelReport) -> dict[str, bytes]:
    points, rows = report.map_points, report.metrics["n_truth_rows"]
    sample = f" (a sample of {len(points)} of {rows} rows)" if len(points) < rows else ""
    return {
        "error_cdf.png": plots.error_cdf_png({label: report.error_sums}),
        "world_map.png": plots.world_map_png(
            points["lat"],
            points["lon"],
            points["truth_lat"],
            points["truth_lon"],
            title=f"{label}: truth (green) vs prediction (red){sample}",
        ),
        "per_country.png": plots.country_bars_png(report.per_country, title=f"{label}: per country"),
    }


def _write_model_report(
    directory: str,
    label: str,
    source: str,
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
    for name, png in _model_plots(label, report).items():
        uris.write_atomic(uris.join(directory, "plots", name), png)


def _write_comparison(
    output_uri: str,
    evaluations: list[ModelEvaluation],
    comparison: list[dict[str, Any]],
    benchmark: str | None,
) -> None:
    heading = f"Benchmark: {benchmark} (published rows for reference)\n\n" if benchmark else ""
    uris.write_text(
        uris.join(output_uri, "comparison.md"),
        heading + markdown_table(comparison, comparison_columns(comparison)),
    )
    uris.write_text(
        uris.join(output_uri, "comparison.json"),
        json.dumps({"benchmark": benchmark, "rows": comparison}, indent=2) + "\n",
    )
    curves = {e.label: e.report.error_sums for e in evaluations}
    uris.write_atomic(uris.join(output_uri, "error_cdf.png"), plots.error_cdf_png(curves))
