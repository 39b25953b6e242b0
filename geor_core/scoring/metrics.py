"""The field's standard geolocation metrics, from predicted and true coordinates (docs/design.md, Metrics).

- acc_1km, acc_25km, acc_200km, acc_750km, acc_2500km: percent of rows whose Haversine error is
  ``<=`` the threshold (street / city / region / country / continent), denominator n, computed in
  float64 so published per-image tables are reproduced exactly. A missing prediction (NaN, or a
  coordinate out of range) is a miss at every threshold, never a skipped row.
- median_km, mean_km: over the rows with a prediction (None when there is none); n_missing
  and missing_rate (percent) sit beside them.
- geoscore: mean over all n rows of ``5000 exp(-d / 1492.7)``, a missing prediction scoring 0.
- format_rate: percent of rows whose completion had exactly one in-range pair (None when no
  format flags are given, e.g. predictions that were numbers, not text).
- country/state/city_match_rate: percent of rows whose named level matches the truth's, by the
  text comparison ``level_matches`` (None when that level is not predicted): countries compare by
  ISO alpha-2 code (a named country goes through countries.country_code), state and city by
  countries.normalize_name, and state and city match only where the country matches too.
Rates are percents in [0, 100]; n = 0 gives None for every rate and statistic. The per-row
``within_km`` and ``row_geoscore`` are what the reward table (geor_core.scoring.rewards) logs
per completion during training.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from geor_core.geo.countries import country_code, normalize_name
from geor_core.geo.geo import haversine_km

THRESHOLDS_KM = (1, 25, 200, 750, 2500)
GEOSCORE_MAX = 5000.0
GEOSCORE_SCALE_KM = 1492.7


def within_km(distance_km: np.ndarray, km: float) -> np.ndarray:
    """Per row: the error is ``<= km`` (inclusive); a missing distance (NaN) is a miss."""
    return np.asarray(distance_km) <= km  # NaN compares False


def row_geoscore(distance_km: np.ndarray) -> np.ndarray:
    """Per row: ``5000 exp(-d / 1492.7)``; a missing distance (NaN) scores 0."""
    distance_km = np.asarray(distance_km)
    return np.where(np.isnan(distance_km), 0.0, _geoscore(distance_km))


def _geoscore(distance_km: np.ndarray) -> np.ndarray:
    return GEOSCORE_MAX * np.exp(-distance_km / GEOSCORE_SCALE_KM)


def compute_metrics(
    pred_lat: ArrayLike,
    pred_lon: ArrayLike,
    true_lat: ArrayLike,
    true_lon: ArrayLike,
    *,
    format_ok: ArrayLike | None = None,
    pred_country: Sequence[object] | None = None,
    pred_state: Sequence[object] | None = None,
    pred_city: Sequence[object] | None = None,
    truth_country_code: Sequence[object] | None = None,
    truth_state: Sequence[object] | None = None,
    truth_city: Sequence[object] | None = None,
) -> dict[str, Any]:
    """Metrics over n rows; the truth must be valid coordinates (ValueError naming the first bad row)."""
    plat, plon = _floats(pred_lat, "pred_lat"), _floats(pred_lon, "pred_lon")
    tlat, tlon = _floats(true_lat, "true_lat"), _floats(true_lon, "true_lon")
    n = tlat.size
    for name, array in (("pred_lat", plat), ("pred_lon", plon), ("true_lon", tlon)):
        if array.size != n:
            raise ValueError(f"{name} has {array.size} values but true_lat has {n}")
    bad_truth = ~((np.abs(tlat) <= 90.0) & (np.abs(tlon) <= 180.0))
    if bad_truth.any():
        i = int(np.flatnonzero(bad_truth)[0])
        raise ValueError(f"truth row {i} is not a valid coordinate: ({float(tlat[i])!r}, {float(tlon[i])!r})")
    predicted = (np.abs(plat) <= 90.0) & (np.abs(plon) <= 180.0)  # NaN compares False: missing
    distance = np.full(n, np.nan)
    distance[predicted] = haversine_km(plat[predicted], plon[predicted], tlat[predicted], tlon[predicted])
    found = distance[predicted]
    metrics: dict[str, Any] = {
        "n": int(n),
        "n_missing": int(n - found.size),
        "missing_rate": _percent(n - found.size, n),
    }
    for threshold in THRESHOLDS_KM:
        metrics[f"acc_{threshold}km"] = _percent(np.count_nonzero(within_km(found, threshold)), n)
    metrics["median_km"] = float(np.median(found)) if found.size else None
    metrics["mean_km"] = float(np.mean(found)) if found.size else None
    metrics["geoscore"] = float(_geoscore(found).sum() / n) if n else None
    metrics["format_rate"] = None
    if format_ok is not None:
        flags = np.asarray(format_ok, dtype=bool).reshape(-1)
        if flags.size != n:
            raise ValueError(f"format_ok has {flags.size} values but there are {n} rows")
        metrics["format_rate"] = _percent(np.count_nonzero(flags), n)
    metrics.update(
        _level_rates(n, pred_country, pred_state, pred_city, truth_country_code, truth_state, truth_city)
    )
    return metrics


@functools.lru_cache(maxsize=65536)
def _cached_country_code(name: str) -> str | None:
    return country_code(name)


def _codes(names: Sequence[object]) -> np.ndarray:
    """Country names (or codes) -> alpha-2 codes, "" where unknown or missing."""
    return np.array(
        [(_cached_country_code(v) or "") if isinstance(v, str) else "" for v in names], dtype=object
    )


# Sized for every settlement name of the gazetteer (about 140k) plus the model's own spellings.
_name_key = functools.lru_cache(maxsize=1 << 18)(normalize_name)


def _keys(names: Sequence[object]) -> np.ndarray:
    """Place names -> normalised comparison keys, "" where missing."""
    return np.array([_name_key(v) if isinstance(v, str) else "" for v in names], dtype=object)


def level_matches(
    pred_country: Sequence[object],
    pred_state: Sequence[object],
    pred_city: Sequence[object],
    truth_country_code: Sequence[object],
    truth_state: Sequence[object],
    truth_city: Sequence[object],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(country, state, city) match masks; state and city need the country to match as well.

    Predicted countries may be names or codes; truth countries are alpha-2 codes (names work
    too). A missing or empty name on either side never matches.
    """
    pred_cc, truth_cc = _codes(pred_country), _codes(truth_country_code)
    country = (pred_cc == truth_cc) & (truth_cc != "")
    truth_state_key, truth_city_key = _keys(truth_state), _keys(truth_city)
    state = country & (_keys(pred_state) == truth_state_key) & (truth_state_key != "")
    city = country & (_keys(pred_city) == truth_city_key) & (truth_city_key != "")
    return country.astype(bool), state.astype(bool), city.astype(bool)


def _floats(values: ArrayLike, name: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numbers (NaN for missing): {exc}") from exc


def _percent(count: int, n: int) -> float | None:
    return float(count) * 100.0 / n if n else None


def _level_rates(
    n: int,
    pred_country: Sequence[object] | None,
    pred_state: Sequence[object] | None,
    pred_city: Sequence[object] | None,
    truth_country_code: Sequence[object] | None,
    truth_state: Sequence[object] | None,
    truth_city: Sequence[object] | None,
) -> dict[str, float | None]:
    given = {"country": pred_country, "state": pred_state, "city": pred_city}
    rates: dict[str, float | None] = {f"{level}_match_rate": None for level in given}
    if all(values is None for values in given.values()):
        return rates
    truth = {"truth_country_code": truth_country_code, "truth_state": truth_state, "truth_city": truth_city}
    for name, values in {**given, **truth}.items():
        if values is not None and len(values) != n:
            raise ValueError(f"{name} has {len(values)} values but there are {n} rows")
    if any(values is None for values in truth.values()):
        raise ValueError("level match rates need truth_country_code, truth_state and truth_city")
    absent = [None] * n
    matches = level_matches(*(absent if v is None else v for v in given.values()), *truth.values())
    for (level, values), match in zip(given.items(), matches, strict=True):
        if values is not None:
            rates[f"{level}_match_rate"] = _percent(np.count_nonzero(match), n)
    return rates
