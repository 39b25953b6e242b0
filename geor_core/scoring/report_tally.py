"""A model's evaluation report as sums over batches of its predictions (Ray-free): each batch of
an evaluation predictions table (geor_core.scoring.predictions.EVALUATION_SCHEMA) becomes a small
``ReportTally``; tallies merge; the merged tally gives the report. Memory is bounded by what the
report shows, not by the rows: counts per split, group and country, a histogram of errors per
reported slice, the worst rows, and a sample of points for the map.

Two passes, both per batch (tasks/evaluation_tally.py runs them in Ray Data workers;
``report_of_table`` runs them in this process):

1. ``ReportTally.of(batch)``: `geor score`'s sums (geor_core.scoring.score_tally) overall, per
   split and per group, the per-country sums, level and consistency counts, the worst rows and
   the map's sample;
2. ``selected_errors(batch, requests)``: the errors of the histogram bins that hold each reported
   median (``ReportTally.median_requests``); ``medians`` picks the exact order statistics.

Metrics per slice equal `geor score` over that slice's rows: counts, rates and medians exactly,
mean_km and geoscore up to float rounding of the sums' order. Beside them: level match rates (and
each level's rate where the level above matched), CoR consistency (is the predicted point in the
country and state the text names?), the standard metrics of the most frequent true countries, and
the worst rows (missing predictions first, by id, then the largest errors). Rates are percents; a
denominator of 0 gives None.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from geor_core.scoring.metrics import DISTANCE_EDGES_KM, THRESHOLDS_KM, MetricSums, metric_sums_by, percent
from geor_core.scoring.rewards import COMBINED
from geor_core.scoring.score_tally import ScoreTally
from geor_core.scoring.scoring import join_rows

SCORE_ARGS = {"text_col": "completion", "lat_col": "truth_lat", "lon_col": "truth_lon"}
MAX_GROUPS = 20  # groups reported per model (the largest): a group column is a handful of slices
MAP_POINTS = 20_000  # rows drawn on the world map: a sample chosen by a hash of the id
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
PER_COUNTRY_COLUMNS = (
    "country_code",
    "country",
    "n",
    *(f"acc_{t}km" for t in THRESHOLDS_KM),
    "median_km",
    "country_match_rate",
    "state_match_rate",
    "format_rate",
    "missing_rate",
)
Slice = tuple[str, str]  # ("all", ""), ("split", name), ("group", name) or ("country", code)


@dataclass
class ModelReport:
    """Everything `geor evaluate` reports about one model."""

    metrics: dict[str, Any]  # the score result over all rows
    splits: dict[str, dict[str, Any]]  # split -> score result over its rows
    groups: dict[str, dict[str, Any]]  # group -> score result plus mean reward; empty without groups
    levels: dict[str, Any]
    consistency: dict[str, Any]
    per_country: pd.DataFrame
    worst: pd.DataFrame
    error_sums: MetricSums  # over all rows: draws the error CDF
    map_points: pd.DataFrame  # lat, lon, truth_lat, truth_lon of at most MAP_POINTS rows

    def summary(self) -> dict[str, Any]:
        """The JSON-ready part: metrics overall, per split and per group, levels and consistency."""
        return {
            "metrics": self.metrics,
            "splits": self.splits,
            **({"groups": self.groups} if self.groups else {}),
            "levels": self.levels,
            "cor_consistency": self.consistency,
        }


@dataclass
class CountryTally:
    """One true country's rows as sums."""

    name: str
    sums: MetricSums  # sums.n: the country's rows
    country_match: int
    state_match: int

    def merge(self, other: CountryTally) -> CountryTally:
        return CountryTally(
            self.name,
            self.sums.merge(other.sums),
            self.country_match + other.country_match,
            self.state_match + other.state_match,
        )


@dataclass
class ReportTally:
    """A batch of predictions (or several, merged) as the sums the report needs."""

    overall: ScoreTally
    splits: dict[str, ScoreTally]
    groups: dict[str, ScoreTally]
    group_reward: dict[str, float]  # group -> sum of the combined reward
    countries: dict[str, CountryTally]
    counts: Counter  # level and consistency counts (see ``_counts``)
    worst: pd.DataFrame  # WORST_COLUMNS, at most the worst_n worst rows
    map_points: pd.DataFrame  # map columns + rank, at most MAP_POINTS rows (the smallest ranks)
    worst_n: int = field(default=0)

    @classmethod
    def of(cls, predictions: pd.DataFrame, worst_n: int) -> ReportTally:
        keyed = _slices(predictions)
        overall, _ = keyed.pop(("all", ""))
        by_kind: dict[str, dict[str, Any]] = {"split": {}, "group": {}, "country": {}}
        for (kind, name), (tally, _) in keyed.items():
            by_kind[kind][name] = tally
        groups = predictions["group"].fillna("")
        rewards = predictions[f"reward_{COMBINED}"].to_numpy(float)
        return cls(
            overall,
            by_kind["split"],
            by_kind["group"],
            {name: float(rewards[(groups == name).to_numpy()].sum()) for name in by_kind["group"]},
            by_kind["country"],
            _counts(predictions),
            _worst(predictions, worst_n),
            _map_sample(predictions),
            worst_n,
        )

    def merge(self, other: ReportTally) -> ReportTally:
        return ReportTally(
            self.overall.merge(other.overall),
            _merge_dicts(self.splits, other.splits),
            _merge_dicts(self.groups, other.groups),
            {  # not Counter's +, which drops sums that are not positive
                name: self.group_reward.get(name, 0.0) + other.group_reward.get(name, 0.0)
                for name in {**self.group_reward, **other.group_reward}
            },
            _merge_dicts(self.countries, other.countries),
            self.counts + other.counts,
            _worst(pd.concat([self.worst, other.worst], ignore_index=True), self.worst_n),
            _smallest(pd.concat([self.map_points, other.map_points], ignore_index=True)),
            self.worst_n,
        )

    def reported_groups(self) -> list[str]:
        """The ``MAX_GROUPS`` largest groups, by name; none when every row's group is ""."""
        if set(self.groups) <= {""}:
            return []
        sizes = sorted(self.groups.items(), key=lambda item: (-item[1].n_truth_rows, item[0]))
        return sorted(name for name, _ in sizes[:MAX_GROUPS])

    def reported_countries(self, top_n: int) -> list[str]:
        """The ``top_n`` most frequent true countries, most rows first."""
        return sorted(self.countries, key=lambda code: (-self.countries[code].sums.n, code))[:top_n]

    def sums_of(self, key: Slice) -> MetricSums:
        kind, name = key
        if kind == "all":
            return self.overall.sums
        return {"split": self.splits, "group": self.groups, "country": self.countries}[kind][name].sums

    def median_requests(self, top_countries: int) -> dict[Slice, list[tuple[int, int]]]:
        """Per reported slice: (histogram bin, rank inside it) of the errors its median averages."""
        keys = [
            ("all", ""),
            *(("split", name) for name in self.splits),
            *(("group", name) for name in self.reported_groups()),
            *(("country", code) for code in self.reported_countries(top_countries)),
        ]
        return {key: self.sums_of(key).median_ranks() for key in keys}

    def report(
        self, medians: dict[Slice, float | None], splits: list[str], top_countries: int
    ) -> ModelReport:
        """The report, given the median of every slice ``median_requests`` named; ``splits`` in
        the order to show them (those with rows)."""
        countries = [
            self._country_row(code, medians[("country", code)])
            for code in self.reported_countries(top_countries)
        ]
        return ModelReport(
            metrics=self.overall.result(medians[("all", "")]),
            splits={
                name: self.splits[name].result(medians[("split", name)])
                for name in splits
                if name in self.splits
            },
            groups={
                name: {
                    **self.groups[name].result(medians[("group", name)]),
                    "reward": self.group_reward[name] / self.groups[name].n_truth_rows,
                }
                for name in self.reported_groups()
            },
            levels=_levels(self.counts),
            consistency=_consistency(self.counts),
            per_country=pd.DataFrame(countries, columns=list(PER_COUNTRY_COLUMNS)),
            worst=self.worst.loc[:, list(WORST_COLUMNS)].reset_index(drop=True),
            error_sums=self.overall.sums,
            map_points=self.map_points.drop(columns="rank").reset_index(drop=True),
        )

    def _country_row(self, code: str, median_km: float | None) -> dict[str, Any]:
        country = self.countries[code]
        metrics = country.sums.metrics(median_km)
        return {
            "country_code": code,
            "country": country.name,
            "n": metrics["n"],
            **{f"acc_{t}km": metrics[f"acc_{t}km"] for t in THRESHOLDS_KM},
            "median_km": metrics["median_km"],
            "country_match_rate": percent(country.country_match, country.sums.n),
            "state_match_rate": percent(country.state_match, country.sums.n),
            "format_rate": metrics["format_rate"],
            "missing_rate": metrics["missing_rate"],
        }


def selected_errors(
    predictions: pd.DataFrame, requests: dict[Slice, list[tuple[int, int]]]
) -> dict[Slice, dict[int, list[float]]]:
    """Pass 2 on a batch: per requested slice, the errors of the batch's rows in the requested bins."""
    out: dict[Slice, dict[int, list[float]]] = {}
    for key, (_, distance) in _slices(predictions, set(requests)).items():
        bins = {bin_ for bin_, _ in requests[key]}
        found = distance[~np.isnan(distance)]
        where = np.searchsorted(DISTANCE_EDGES_KM, found)
        out[key] = {bin_: found[where == bin_].tolist() for bin_ in bins}
    return out


def medians(
    tally: ReportTally,
    requests: dict[Slice, list[tuple[int, int]]],
    selections: list[dict[Slice, dict[int, list[float]]]],
) -> dict[Slice, float | None]:
    """Each requested slice's exact median from the bins' errors gathered over every batch."""
    gathered: dict[Slice, dict[int, list[float]]] = {key: {} for key in requests}
    for selection in selections:
        for key, bins in selection.items():
            for bin_, values in bins.items():
                gathered[key].setdefault(bin_, []).extend(values)
    out: dict[Slice, float | None] = {}
    for key, ranks in requests.items():
        if not ranks:
            out[key] = None
            continue
        picked = []
        for bin_, rank in ranks:
            values = sorted(gathered[key].get(bin_, []))
            expected = tally.sums_of(key).histogram[bin_]
            if len(values) != expected:
                raise RuntimeError(
                    f"{key}: bin {bin_} holds {len(values)} errors on re-reading, {expected} before"
                )
            picked.append(values[rank])
        out[key] = picked[0] if len(picked) == 1 else (picked[0] + picked[1]) / 2
    return out


def report_of_table(
    predictions: pd.DataFrame, *, splits: list[str], worst_n: int, top_countries: int
) -> ModelReport:
    """The report of a whole predictions table, both passes in this process (one batch)."""
    tally = ReportTally.of(predictions, worst_n)
    requests = tally.median_requests(top_countries)
    return tally.report(
        medians(tally, requests, [selected_errors(predictions, requests)]), splits, top_countries
    )


def _slices(
    predictions: pd.DataFrame, wanted: set[Slice] | None = None
) -> dict[Slice, tuple[Any, np.ndarray]]:
    """(tally, errors in km) per slice of the batch: all, each split, each group, each country."""
    scored = join_rows(predictions, predictions, **SCORE_ARGS)
    columns = {"split": predictions["split"], "group": predictions["group"].fillna("")}
    masks: dict[Slice, Any] = {("all", ""): None}
    for kind, values in columns.items():
        masks |= {(kind, name): (values == name).to_numpy() for name in dict.fromkeys(values)}
    out: dict[Slice, tuple[Any, np.ndarray]] = {
        key: scored.tally(mask) for key, mask in masks.items() if wanted is None or key in wanted
    }
    keys, codes = pd.factorize(predictions["truth_country_code"])  # -1: no country code
    sums, distance = metric_sums_by(
        keys,
        len(codes),
        predictions["lat"].to_numpy(float),
        predictions["lon"].to_numpy(float),
        predictions["truth_lat"].to_numpy(float),
        predictions["truth_lon"].to_numpy(float),
        format_ok=predictions["format_ok"].to_numpy(bool),
    )
    kept = keys >= 0
    first = np.flatnonzero(kept)[np.unique(keys[kept], return_index=True)[1]]  # each key's first row
    names = predictions["truth_country"].to_numpy(object)[first]
    matches = {
        level: np.bincount(
            keys[kept], weights=predictions[f"{level}_match"].to_numpy(bool)[kept], minlength=len(codes)
        )
        for level in ("country", "state")
    }
    for i, code in enumerate(codes):
        if wanted is None or ("country", code) in wanted:
            tally = CountryTally(str(names[i]), sums[i], int(matches["country"][i]), int(matches["state"][i]))
            out[("country", code)] = (tally, distance[keys == i] if wanted is not None else distance[:0])
    return out


def _counts(predictions: pd.DataFrame) -> Counter:
    country = predictions["country_match"].to_numpy(bool)
    state = predictions["state_match"].to_numpy(bool)
    city = predictions["city_match"].to_numpy(bool)
    with_point = ~np.isnan(predictions["lat"].to_numpy(float))
    return Counter(
        rows=len(predictions),
        country=int(country.sum()),
        state=int(state.sum()),
        city=int(city.sum()),
        city_and_state=int((city & state).sum()),
        chain_ok=int(predictions["chain_ok"].to_numpy(bool).sum()),
        with_point=int(with_point.sum()),
        point_country=int((predictions["cor_country_consistent"].to_numpy(bool) & with_point).sum()),
        point_state=int((predictions["cor_state_consistent"].to_numpy(bool) & with_point).sum()),
    )


def _levels(counts: Counter) -> dict[str, Any]:
    n = counts["rows"]
    return {
        "n": n,
        "country_match_rate": percent(counts["country"], n),
        "state_match_rate": percent(counts["state"], n),
        "city_match_rate": percent(counts["city"], n),
        "state_given_country_rate": percent(counts["state"], counts["country"]),
        "city_given_state_rate": percent(counts["city_and_state"], counts["state"]),
        "chain_ok_rate": percent(counts["chain_ok"], n),
    }


def _consistency(counts: Counter) -> dict[str, Any]:
    n_point = counts["with_point"]
    return {
        "n_with_point": n_point,
        "country_consistent_rate": percent(counts["point_country"], n_point),
        "state_consistent_rate": percent(counts["point_state"], n_point),
        "n_country_inconsistent": n_point - counts["point_country"],
    }


def _worst(predictions: pd.DataFrame, n: int) -> pd.DataFrame:
    """The ``n`` worst rows: missing predictions first (by id), then the largest errors."""
    error = predictions["error_km"].to_numpy(float)
    missing = np.isnan(error)
    order = np.lexsort((predictions["id"].astype(str).to_numpy(), -np.nan_to_num(error, nan=0.0), ~missing))
    return predictions.iloc[order[:n]].loc[:, list(WORST_COLUMNS)].reset_index(drop=True)


def _map_sample(predictions: pd.DataFrame) -> pd.DataFrame:
    points = predictions.loc[:, ["lat", "lon", "truth_lat", "truth_lon"]].reset_index(drop=True)
    points["rank"] = pd.util.hash_pandas_object(predictions["id"].astype(str), index=False).to_numpy()
    return _smallest(points)


def _smallest(points: pd.DataFrame) -> pd.DataFrame:
    return points.nsmallest(MAP_POINTS, "rank") if len(points) > MAP_POINTS else points


def _merge_dicts(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    merged = dict(a)
    for key, value in b.items():
        merged[key] = merged[key].merge(value) if key in merged else value
    return merged
