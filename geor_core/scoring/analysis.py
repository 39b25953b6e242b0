"""Reviewing a model's predictions beyond the headline metrics (input: an evaluation predictions
table, geor_core.scoring.predictions.EVALUATION_SCHEMA, as a DataFrame).

- ``level_summary``: country / state / city match rates over all rows, and each level's rate
  among the rows whose level above matched (where the chain breaks).
- ``cor_consistency``: does the gazetteer place the predicted point in the country (and state)
  the text names? Rates over the rows that have a predicted point.
- ``per_country``: the standard metrics for the most frequent true countries.
- ``worst``: the N worst rows with their reasoning: missing predictions first, then the largest
  errors.
Rates are percents; a denominator of 0 gives None.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from geor_core.scoring.metrics import THRESHOLDS_KM, compute_metrics

WORST_COLUMNS = (
    "id",
    "split",
    "truth_country",
    "truth_state",
    "truth_city",
    "truth_lat",
    "truth_lon",
    "country",
    "state",
    "city",
    "lat",
    "lon",
    "error_km",
    "parse_error",
    "inference_error",
    "completion",
)


def _percent(count: int, n: int) -> float | None:
    return float(count) * 100.0 / n if n else None


def level_summary(predictions: pd.DataFrame) -> dict[str, Any]:
    """Level match rates (% of all rows) and conditional rates down the chain."""
    country = predictions["country_match"].to_numpy(bool)
    state = predictions["state_match"].to_numpy(bool)
    city = predictions["city_match"].to_numpy(bool)
    n = len(predictions)
    return {
        "n": n,
        "country_match_rate": _percent(country.sum(), n),
        "state_match_rate": _percent(state.sum(), n),
        "city_match_rate": _percent(city.sum(), n),
        "state_given_country_rate": _percent(state.sum(), country.sum()),
        "city_given_state_rate": _percent((city & state).sum(), state.sum()),
        "chain_ok_rate": _percent(predictions["chain_ok"].to_numpy(bool).sum(), n),
    }


def cor_consistency(predictions: pd.DataFrame) -> dict[str, Any]:
    """Share of predicted points that lie in the country (and state) the chain names."""
    with_point = ~np.isnan(predictions["lat"].to_numpy(float))
    n_point = int(with_point.sum())
    country = predictions["cor_country_consistent"].to_numpy(bool) & with_point
    state = predictions["cor_state_consistent"].to_numpy(bool) & with_point
    return {
        "n_with_point": n_point,
        "country_consistent_rate": _percent(country.sum(), n_point),
        "state_consistent_rate": _percent(state.sum(), n_point),
        "n_country_inconsistent": int(n_point - country.sum()),
    }


def per_country(predictions: pd.DataFrame, top_n: int) -> pd.DataFrame:
    """The standard metrics for the ``top_n`` most frequent true countries (most rows first)."""
    counts = predictions.groupby("truth_country_code", sort=False).size()
    order = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top_n]
    rows = []
    for code, _ in order:
        group = predictions[predictions["truth_country_code"] == code]
        metrics = compute_metrics(
            group["lat"].to_numpy(float),
            group["lon"].to_numpy(float),
            group["truth_lat"].to_numpy(float),
            group["truth_lon"].to_numpy(float),
            format_ok=group["format_ok"].to_numpy(bool),
        )
        rows.append(
            {
                "country_code": code,
                "country": group["truth_country"].iloc[0],
                "n": metrics["n"],
                **{f"acc_{t}km": metrics[f"acc_{t}km"] for t in THRESHOLDS_KM},
                "median_km": metrics["median_km"],
                "country_match_rate": _percent(group["country_match"].to_numpy(bool).sum(), len(group)),
                "state_match_rate": _percent(group["state_match"].to_numpy(bool).sum(), len(group)),
                "format_rate": metrics["format_rate"],
                "missing_rate": metrics["missing_rate"],
            }
        )
    return pd.DataFrame(rows, columns=_PER_COUNTRY_COLUMNS)


_PER_COUNTRY_COLUMNS = [
    "country_code",
    "country",
    "n",
    *(f"acc_{t}km" for t in THRESHOLDS_KM),
    "median_km",
    "country_match_rate",
    "state_match_rate",
    "format_rate",
    "missing_rate",
]


def worst(predictions: pd.DataFrame, n: int) -> pd.DataFrame:
    """The ``n`` worst rows: missing predictions first (by id), then the largest errors."""
    error = predictions["error_km"].to_numpy(float)
    missing = np.isnan(error)
    order = np.lexsort((predictions["id"].astype(str).to_numpy(), -np.nan_to_num(error, nan=0.0), ~missing))
    return predictions.iloc[order[:n]].loc[:, list(WORST_COLUMNS)].reset_index(drop=True)
