"""A model's evaluation report and the comparison table of several models (Ray-free).

Metrics come from `geor score`'s own code: ``scoring.score_tables`` over the predictions table in
text mode (the ``completion`` column parsed by the one rule, the truth from ``truth_lat`` /
``truth_lon``), so `geor evaluate` and `geor score --predictions <predictions dir> --truth
<predictions dir> --text-col completion --lat-col truth_lat --lon-col truth_lon` always agree,
overall and per split. Every row is scored: a completion without a pair is a miss, never a
dropped row.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from geor_core.scoring import analysis
from geor_core.scoring.published import published_rows
from geor_core.scoring.scoring import METRIC_COLUMNS, score_tables

SCORE_ARGS = {"text_col": "completion", "lat_col": "truth_lat", "lon_col": "truth_lon"}
# sampled_reward: the mean combined reward of sampled completions (eval.sampled_rows; "-" when off)
COMPARISON_COLUMNS = ("model", "source", "n", "n_missing", *METRIC_COLUMNS, "sampled_reward")
# Scalars of a score result logged as MLflow metrics (the rest is counts by reason and id samples).
METRIC_KEYS = ("n", "n_missing", *METRIC_COLUMNS, "missing_rate")


@dataclass
class ModelReport:
    """Everything `geor evaluate` reports about one model."""

    metrics: dict[str, Any]  # the score result over all rows
    splits: dict[str, dict[str, Any]]  # split -> score result over its rows
    levels: dict[str, Any]
    consistency: dict[str, Any]
    per_country: pd.DataFrame
    worst: pd.DataFrame

    def summary(self) -> dict[str, Any]:
        """The JSON-ready part: metrics overall and per split, levels and consistency."""
        return {
            "metrics": self.metrics,
            "splits": self.splits,
            "levels": self.levels,
            "cor_consistency": self.consistency,
        }


def score_predictions(predictions: pd.DataFrame) -> dict[str, Any]:
    """`geor score`'s result for a predictions table (the table is its own truth)."""
    return score_tables(predictions, predictions, **SCORE_ARGS)


def model_report(predictions: pd.DataFrame, *, worst_n: int, top_countries: int) -> ModelReport:
    """Metrics overall and per split (in order of appearance), levels, consistency, tables."""
    splits = list(dict.fromkeys(predictions["split"].tolist()))
    return ModelReport(
        metrics=score_predictions(predictions),
        splits={name: score_predictions(predictions[predictions["split"] == name]) for name in splits},
        levels=analysis.level_summary(predictions),
        consistency=analysis.cor_consistency(predictions),
        per_country=analysis.per_country(predictions, top_countries),
        worst=analysis.worst(predictions, worst_n),
    )


def comparison_rows(
    models: Iterable[tuple[str, str, dict[str, Any]]], benchmark: str | None = None
) -> list[dict[str, Any]]:
    """One row per (label, source, metrics: a score result, plus ``sampled_reward`` where measured),
    then the benchmark's published rows if any."""
    rows = [
        {"model": label, "source": source, **{key: metrics.get(key) for key in COMPARISON_COLUMNS[2:]}}
        for label, source, metrics in models
    ]
    if benchmark:
        rows += [{key: row.get(key) for key in COMPARISON_COLUMNS} for row in published_rows(benchmark)]
    return rows


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub-flavoured markdown table; floats with 2 decimals, None as "-"."""

    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and value != value):
            return "-"
        if isinstance(value, float):
            return f"{value:.2f}"
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"
