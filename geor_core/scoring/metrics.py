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
from dataclasses import dataclass, field
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


# Bins of a distance histogram: bin i holds the errors in (EDGES[i-1], EDGES[i]] (bin 0: up to
# 1 m); the count of errors <= EDGES[i] is exact, which draws an error CDF and locates a median
# from merged histograms (geor_core.scoring.score_tally).
DISTANCE_EDGES_KM = np.geomspace(1e-3, 20040.0, 4096)
LEVELS = ("country", "state", "city")


@dataclass
class MetricSums:
    """``compute_metrics``'s inputs reduced to sums that add up across batches of rows: merge the
    sums of every batch, then ``metrics(median_km)`` gives the same result as ``compute_metrics``
    over all the rows (sums to float precision, every count and rate exactly). The median is not a
    sum: the caller gives it (``median_ranks`` says which bins hold it)."""

    n: int = 0
    found: int = 0
    within: tuple[int, ...] = (0,) * len(THRESHOLDS_KM)
    sum_km: float = 0.0
    sum_geoscore: float = 0.0
    format_ok: int | None = None  # None: no format flags were given
    level_matches: dict[str, int | None] = field(default_factory=lambda: dict.fromkeys(LEVELS))
    histogram: dict[int, int] = field(default_factory=dict)  # DISTANCE_EDGES_KM bin -> found errors

    def merge(self, other: MetricSums) -> MetricSums:
        histogram = dict(self.histogram)
        for key, count in other.histogram.items():
            histogram[key] = histogram.get(key, 0) + count
        return MetricSums(
            self.n + other.n,
            self.found + other.found,
            tuple(a + b for a, b in zip(self.within, other.within, strict=True)),
            self.sum_km + other.sum_km,
            self.sum_geoscore + other.sum_geoscore,
            _add_optional(self.format_ok, other.format_ok),
            {k: _add_optional(v, other.level_matches[k]) for k, v in self.level_matches.items()},
            histogram,
        )

    def median_ranks(self) -> list[tuple[int, int]]:
        """(bin, 0-based rank inside the bin) of the one or two sorted errors the median averages."""
        if not self.found:
            return []
        middle = self.found // 2
        ranks = [middle] if self.found % 2 else [middle - 1, middle]
        located, below = [], 0
        for key in sorted(self.histogram):
            count = self.histogram[key]
            located += [(key, rank - below) for rank in ranks if below <= rank < below + count]
            below += count
        return located

    def metrics(self, median_km: float | None) -> dict[str, Any]:
        """The metrics of the rows summed (see ``compute_metrics``), with their median error."""
        n, found = self.n, self.found
        metrics: dict[str, Any] = {"n": n, "n_missing": n - found, "missing_rate": percent(n - found, n)}
        for threshold, count in zip(THRESHOLDS_KM, self.within, strict=True):
            metrics[f"acc_{threshold}km"] = percent(count, n)
        metrics["median_km"] = median_km if found else None
        metrics["mean_km"] = self.sum_km / found if found else None
        metrics["geoscore"] = self.sum_geoscore / n if n else None
        metrics["format_rate"] = None if self.format_ok is None else percent(self.format_ok, n)
        for level, count in self.level_matches.items():
            metrics[f"{level}_match_rate"] = None if count is None else percent(count, n)
        return metrics


def _add_optional(a: int | None, b: int | None) -> int | None:
    return None if a is None and b is None else (a or 0) + (b or 0)


def compute_metrics(
    pred_lat: ArrayLike, pred_lon: ArrayLike, true_lat: ArrayLike, true_lon: ArrayLike, **optional: Any
) -> dict[str, Any]:
    """Metrics over n rows; the truth must be valid coordinates (ValueError naming the first bad
    row). ``optional``: ``metric_sums``'s format flags and named levels."""
    sums, distance = metric_sums(pred_lat, pred_lon, true_lat, true_lon, **optional)
    found = distance[~np.isnan(distance)]
    return sums.metrics(float(np.median(found)) if found.size else None)


def metric_sums(
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
) -> tuple[MetricSums, np.ndarray]:
    """(the rows' ``MetricSums``, each row's error in km, NaN where the prediction is missing)."""
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
    format_count = None
    if format_ok is not None:
        flags = np.asarray(format_ok, dtype=bool).reshape(-1)
        if flags.size != n:
            raise ValueError(f"format_ok has {flags.size} values but there are {n} rows")
        format_count = int(np.count_nonzero(flags))
    bins, counts = np.unique(np.searchsorted(DISTANCE_EDGES_KM, found), return_counts=True)
    sums = MetricSums(
        n=int(n),
        found=int(found.size),
        within=tuple(int(np.count_nonzero(within_km(found, t))) for t in THRESHOLDS_KM),
        sum_km=float(np.sum(found)),
        sum_geoscore=float(_geoscore(found).sum()),
        format_ok=format_count,
        level_matches=_level_counts(
            n, pred_country, pred_state, pred_city, truth_country_code, truth_state, truth_city
        ),
        histogram=dict(zip(bins.tolist(), counts.tolist(), strict=True)),
    )
    return sums, distance


def metric_sums_by(
    keys: np.ndarray,
    n_keys: int,
    pred_lat: ArrayLike,
    pred_lon: ArrayLike,
    true_lat: ArrayLike,
    true_lon: ArrayLike,
    *,
    format_ok: ArrayLike,
) -> tuple[list[MetricSums], np.ndarray]:
    """(the ``MetricSums`` of each key's rows, each row's error in km) in one vectorised pass.

    ``keys``: per row, a key number in [0, n_keys), or -1 to leave the row out (e.g. from
    ``pandas.factorize``). Counts equal per-key ``metric_sums``; float sums may differ in the last
    bits (another order of addition)."""
    _, distance = metric_sums(pred_lat, pred_lon, true_lat, true_lon, format_ok=format_ok)
    keys = np.asarray(keys)
    kept = keys >= 0
    key, error = keys[kept], distance[kept]
    found = ~np.isnan(error)

    def count(mask: np.ndarray) -> np.ndarray:
        return np.bincount(key[mask], minlength=n_keys)

    n, n_found = np.bincount(key, minlength=n_keys), count(found)
    within = [count(within_km(error, t)) for t in THRESHOLDS_KM]
    sum_km = np.bincount(key[found], weights=error[found], minlength=n_keys)
    sum_geoscore = np.bincount(key[found], weights=_geoscore(error[found]), minlength=n_keys)
    formats = count(np.asarray(format_ok, dtype=bool).reshape(-1)[kept])
    width = DISTANCE_EDGES_KM.size + 1
    pairs, pair_counts = np.unique(
        key[found] * width + np.searchsorted(DISTANCE_EDGES_KM, error[found]), return_counts=True
    )
    histograms: list[dict[int, int]] = [{} for _ in range(n_keys)]
    for pair, pair_count in zip(pairs.tolist(), pair_counts.tolist(), strict=True):
        histograms[pair // width][pair % width] = pair_count
    sums = [
        MetricSums(
            n=int(n[i]),
            found=int(n_found[i]),
            within=tuple(int(counts[i]) for counts in within),
            sum_km=float(sum_km[i]),
            sum_geoscore=float(sum_geoscore[i]),
            format_ok=int(formats[i]),
            histogram=histograms[i],
        )
        for i in range(n_keys)
    ]
    return sums, distance


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


def percent(count: int, n: int) -> float | None:
    """``count`` of ``n`` in percent; None when n is 0."""
    return float(count) * 100.0 / n if n else None


def _level_counts(
    n: int,
    pred_country: Sequence[object] | None,
    pred_state: Sequence[object] | None,
    pred_city: Sequence[object] | None,
    truth_country_code: Sequence[object] | None,
    truth_state: Sequence[object] | None,
    truth_city: Sequence[object] | None,
) -> dict[str, int | None]:
    given = {"country": pred_country, "state": pred_state, "city": pred_city}
    counts: dict[str, int | None] = dict.fromkeys(given)
    if all(values is None for values in given.values()):
        return counts
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
            counts[level] = int(np.count_nonzero(match))
    return counts
