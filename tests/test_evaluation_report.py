"""The evaluation report's Ray-free parts: the predictions table, the analyses, metrics equal to
`geor score`'s, the same report from merged batches as from one pass, metrics per group, plots and
the published rows beside a comparison."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image

from geor_core.config import RewardConfig
from geor_core.geo import gazetteer
from geor_core.geo.geo import haversine_km
from geor_core.scoring import plots
from geor_core.scoring.evaluation_report import (
    COMPARISON_COLUMNS,
    comparison_rows,
)
from geor_core.scoring.metrics import metric_sums
from geor_core.scoring.predictions import EVALUATION_SCHEMA, evaluation_predictions
from geor_core.scoring.published import detect_benchmark, published_rows
from geor_core.scoring.report_tally import (
    MAP_POINTS,
    SCORE_ARGS,
    ReportTally,
    medians,
    report_of_table,
    selected_errors,
)
from geor_core.scoring.rewards import Truth, score_completions
from geor_core.scoring.scoring import score_files, score_tables

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# what `geor score` reports about reading its two files, beside the metrics
FILE_KEYS = ("predictions", "truth", "n_malformed_rows", "malformed_rows")
PARIS, TOKYO, LAGOS, OSAKA = (48.8534, 2.3488), (35.6895, 139.69171), (6.45407, 3.39467), (34.69, 135.50)


def assert_png(data: bytes) -> None:
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 200


def truth_table(points: list[tuple[float, float]]) -> pa.Table:
    """Prepared-format truth rows at ``points``, labelled by the gazetteer like `geor prepare`."""
    lat, lon = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    place = gazetteer.lookup(lat, lon)
    return pa.table(
        {
            "id": [f"r{i}" for i in range(len(points))],
            "split": ["test"] * len(points),
            "image": [f"/photos/{i}.jpg" for i in range(len(points))],
            "lat": lat,
            "lon": lon,
            "country_code": place["country_code"].tolist(),
            "country": place["country_name"].tolist(),
            "state": place["admin1"].tolist(),
            "city": place["city"].tolist(),
        }
    )


def answer(country: str, state: str, city: str, lat: float, lon: float) -> str:
    return f"<think>...</think><answer>Country: {country}; State: {state}; City: {city}; Coordinates: ({lat}, {lon})</answer>"


@pytest.fixture(scope="module")
def scored_table() -> pd.DataFrame:
    truth = truth_table([PARIS, TOKYO, LAGOS, PARIS])
    paris = truth.slice(0, 1).to_pylist()[0]
    completions = [
        answer(paris["country"], paris["state"], paris["city"], 48.86, 2.35),  # right, and consistent
        answer("France", "Ile-de-France", "Paris", 48.86, 2.35),  # names France, point in France, truth Japan
        "rainerainerain",  # garbage: no pair
        answer("Japan", "Osaka", "Osaka", *OSAKA),  # names Japan with a point in Japan; truth Paris
    ]
    errors = ["", "", "", ""]
    table = evaluation_predictions(truth, completions, errors, RewardConfig())
    assert table.schema == EVALUATION_SCHEMA
    return table.to_pandas()


def test_predictions_table_keeps_every_row_and_scores_it(scored_table):
    df = scored_table
    assert len(df) == 4 and df["id"].tolist() == ["r0", "r1", "r2", "r3"]
    assert np.isnan(df.loc[2, "lat"]) and df.loc[2, "parse_error"] == "no_pair" and not df.loc[2, "format_ok"]
    expected_km = haversine_km(df["lat"], df["lon"], df["truth_lat"], df["truth_lon"])
    np.testing.assert_allclose(df["error_km"], expected_km, equal_nan=True)
    truth = Truth(*(df[f"truth_{name}"].tolist() for name in ("lat", "lon", "country_code", "state", "city")))
    rewards = score_completions(df["completion"].tolist(), truth, cfg=RewardConfig())
    for component in ("distance", "format", "chain", "region", "combined"):
        np.testing.assert_allclose(df[f"reward_{component}"], rewards[component])
    assert df["country_match"].tolist() == [True, False, False, False]
    assert df.loc[0, "state_match"] and df.loc[0, "city_match"]
    assert df["point_country_code"].tolist()[:2] == ["FR", "FR"] and df.loc[3, "point_country_code"] == "JP"
    assert df["cor_country_consistent"].tolist() == [True, True, False, True]


def report(table: pd.DataFrame, top_countries: int = 5, worst_n: int = 3):
    return report_of_table(table, splits=["val", "test"], worst_n=worst_n, top_countries=top_countries)


def score_predictions(table: pd.DataFrame) -> dict:
    return score_tables(table, table, **SCORE_ARGS)


def test_analysis_levels_consistency_countries_and_worst(scored_table):
    result = report(scored_table, top_countries=1)
    assert result.levels["country_match_rate"] == 25.0 and result.levels["state_given_country_rate"] == 100.0
    assert result.consistency["n_with_point"] == 3 and result.consistency["country_consistent_rate"] == 100.0
    countries = result.per_country
    assert countries["country_code"].tolist() == ["FR"] and countries.loc[0, "n"] == 2
    assert countries.loc[0, "acc_25km"] == 50.0 and countries.loc[0, "country_match_rate"] == 50.0
    assert countries.loc[0, "median_km"] == pytest.approx(np.median(scored_table["error_km"][[0, 3]]))
    ranked = result.worst
    assert ranked["id"].tolist() == ["r2", "r1", "r3"]  # missing first, then the largest errors
    assert ranked.loc[0, "completion"] == "rainerainerain"


def test_metrics_come_from_score_and_count_every_row(scored_table, tmp_path):
    path = tmp_path / "predictions.parquet"
    scored_table.to_parquet(path)
    ours = report(scored_table).metrics
    theirs = score_files(
        str(path), str(path), text_col="completion", lat_col="truth_lat", lon_col="truth_lon"
    )
    assert theirs["n_malformed_rows"] == {"predictions": 0, "truth": 0}
    assert {k: v for k, v in theirs.items() if k not in FILE_KEYS} == ours
    assert ours["n"] == 4 and ours["n_missing"] == 1 and ours["acc_25km"] == 25.0
    assert ours["country_match_rate"] == report(scored_table).levels["country_match_rate"]


def world_table(rows: int, seed: int) -> pd.DataFrame:
    """``rows`` predictions around the world: near misses, far misses, garbage, two splits, groups."""
    rng = np.random.default_rng(seed)
    cities = [PARIS, TOKYO, LAGOS, OSAKA, (40.4168, -3.7038), (-33.8688, 151.2093), (19.4326, -99.1332)]
    points = [cities[i] for i in rng.integers(0, len(cities), rows)]
    truth = truth_table(points)
    truth = truth.append_column("group", pa.array(rng.choice(["clean", "ambiguous", ""], rows).tolist()))
    truth = truth.set_column(1, "split", pa.array(rng.choice(["val", "test"], rows).tolist()))
    completions = []
    for lat, lon in points:
        kind = rng.integers(0, 4)
        if kind == 0:
            completions.append("no coordinates here")
        else:
            spread = (0.01, 1.0, 20.0)[kind - 1]
            guess = (
                np.clip(lat + rng.normal(0, spread), -89, 89),
                (lon + rng.normal(0, spread) + 180) % 360 - 180,
            )
            completions.append(answer("France", "Ile-de-France", "Paris", *guess))
    return evaluation_predictions(truth, completions, [""] * rows, RewardConfig()).to_pandas()


def close(ours: dict, theirs: dict) -> bool:
    """Equal, floats to 1e-12 relative (sums merged in another order round differently)."""
    assert ours.keys() == theirs.keys()
    for key, value in ours.items():
        if isinstance(value, float):
            assert value == pytest.approx(theirs[key], rel=1e-12), key
        else:
            assert value == theirs[key], key
    return True


@pytest.mark.parametrize("rows", [57, 60])  # odd and even: one middle error, or two averaged
def test_a_report_merged_from_batches_is_the_report_of_one_pass(rows, monkeypatch):
    table = world_table(rows, seed=rows)
    whole = report(table, worst_n=7)
    batches = [table.iloc[start : start + 9] for start in range(0, rows, 9)]
    tally = ReportTally.of(batches[0], 7)
    for batch in batches[1:]:
        tally = tally.merge(ReportTally.of(batch, 7))
    requests = tally.median_requests(5)
    merged = tally.report(
        medians(tally, requests, [selected_errors(b, requests) for b in batches]), ["val", "test"], 5
    )

    assert close(merged.metrics, score_predictions(table)) and close(merged.metrics, whole.metrics)
    assert merged.metrics["n"] == rows and merged.metrics["median_km"] == np.median(
        table["error_km"].dropna()
    )  # exact, not approximate
    for name in ("val", "test"):
        assert close(merged.splits[name], score_predictions(table[table["split"] == name]))
    assert list(merged.groups) == ["", "ambiguous", "clean"]
    for name, result in merged.groups.items():
        rows_of = table[table["group"] == name]
        assert close(result, {**score_predictions(rows_of), "reward": rows_of["reward_combined"].mean()})
    assert merged.levels == whole.levels and merged.consistency == whole.consistency
    pd.testing.assert_frame_equal(merged.per_country, whole.per_country, rtol=1e-12)
    pd.testing.assert_frame_equal(merged.worst, whole.worst)
    assert merged.worst["error_km"].isna().sum() == min(7, table["error_km"].isna().sum())
    assert merged.error_sums.histogram == whole.error_sums.histogram
    # the map's sample is the same rows whichever way the batches fell, and bounded
    monkeypatch.setattr("geor_core.scoring.report_tally.MAP_POINTS", 10)
    small = [ReportTally.of(b, 7).map_points for b in batches]
    one = ReportTally.of(table, 7).map_points
    again = ReportTally.of(batches[0], 7)
    for batch in batches[1:]:
        again = again.merge(ReportTally.of(batch, 7))
    assert len(one) == 10 and sorted(again.map_points["rank"]) == sorted(one["rank"]) and MAP_POINTS > 10
    assert all(len(points) <= 10 for points in small)


def test_a_changed_error_between_the_passes_is_an_error():
    table = world_table(20, seed=3)
    tally = ReportTally.of(table, 3)
    requests = tally.median_requests(5)
    changed = table.copy()
    changed["completion"] = "nothing"  # the second pass reads other rows than the first
    with pytest.raises(RuntimeError, match="errors on re-reading"):
        medians(tally, requests, [selected_errors(changed, requests)])


def test_plots_are_png_even_for_missing_predictions(scored_table):
    empty = scored_table.iloc[0:0]
    garbage, _ = metric_sums(np.full(5, np.nan), np.full(5, np.nan), np.zeros(5), np.zeros(5))
    assert_png(plots.error_cdf_png({"a": report(scored_table).error_sums, "garbage": garbage}))
    assert_png(
        plots.world_map_png(
            scored_table["lat"], scored_table["lon"], scored_table["truth_lat"], scored_table["truth_lon"]
        )
    )
    assert_png(plots.world_map_png(np.full(3, np.nan), np.full(3, np.nan)))
    assert_png(plots.country_bars_png(report(scored_table).per_country))
    assert_png(plots.country_bars_png(report(empty).per_country))


def test_published_rows_are_detected_and_added_to_the_comparison():
    assert detect_benchmark("s3://bucket/IM2GPS-3K/prepared") == "im2gps3k"
    assert detect_benchmark("runs/prepared", "/data/yfcc_4k/manifest.csv") == "yfcc4k"
    assert detect_benchmark("runs/world") is None
    rows = comparison_rows([("ours", "/m", {"n": 10, "acc_1km": 5.0})], "im2gps3k")
    assert [r["model"] for r in rows] == ["ours", "Geo-R", "GeoCLIP", "PIGEON", "G3"]
    assert rows[1]["acc_200km"] == 58.31 and rows[1]["n"] is None
    assert all(set(r) == set(COMPARISON_COLUMNS) for r in rows)
    assert published_rows("yfcc4k")[0]["acc_2500km"] == 75.8
    with pytest.raises(ValueError, match="unknown benchmark"):
        published_rows("mp16")
