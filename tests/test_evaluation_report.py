"""The evaluation report's Ray-free parts: the predictions table, the analyses, metrics equal to
`geor score`'s, metrics per group, plots and the published rows beside a comparison."""

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
from geor_core.scoring.analysis import cor_consistency, level_summary, per_country, worst
from geor_core.scoring.evaluation_report import (
    COMPARISON_COLUMNS,
    comparison_columns,
    comparison_rows,
    group_metrics,
    group_reward_change,
    group_rewards,
    score_predictions,
)
from geor_core.scoring.predictions import EVALUATION_SCHEMA, evaluation_predictions
from geor_core.scoring.published import detect_benchmark, published_rows
from geor_core.scoring.rewards import Truth, score_completions
from geor_core.scoring.scoring import score_files

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


def test_analysis_levels_consistency_countries_and_worst(scored_table):
    levels = level_summary(scored_table)
    assert levels["country_match_rate"] == 25.0 and levels["state_given_country_rate"] == 100.0
    consistency = cor_consistency(scored_table)
    assert consistency["n_with_point"] == 3 and consistency["country_consistent_rate"] == 100.0
    countries = per_country(scored_table, top_n=1)
    assert countries["country_code"].tolist() == ["FR"] and countries.loc[0, "n"] == 2
    assert countries.loc[0, "acc_25km"] == 50.0 and countries.loc[0, "country_match_rate"] == 50.0
    ranked = worst(scored_table, 3)
    assert ranked["id"].tolist() == ["r2", "r1", "r3"]  # missing first, then the largest errors
    assert ranked.loc[0, "completion"] == "rainerainerain"


def test_metrics_come_from_score_and_count_every_row(scored_table, tmp_path):
    path = tmp_path / "predictions.parquet"
    scored_table.to_parquet(path)
    ours = score_predictions(scored_table)
    theirs = score_files(
        str(path), str(path), text_col="completion", lat_col="truth_lat", lon_col="truth_lon"
    )
    assert theirs["n_malformed_rows"] == {"predictions": 0, "truth": 0}
    assert {k: v for k, v in theirs.items() if k not in FILE_KEYS} == ours
    assert ours["n"] == 4 and ours["n_missing"] == 1 and ours["acc_25km"] == 25.0
    assert ours["country_match_rate"] == level_summary(scored_table)["country_match_rate"]


def test_metrics_per_group_when_rows_carry_one():
    truth = truth_table([PARIS, TOKYO, LAGOS, PARIS])
    completions = [
        answer("France", "Ile-de-France", "Paris", 48.86, 2.35),
        "no answer",
        *[answer("France", "", "", *PARIS)] * 2,
    ]
    plain = evaluation_predictions(truth, completions, [""] * 4, RewardConfig()).to_pandas()
    assert plain["group"].tolist() == [""] * 4 and group_metrics(plain) == {}
    grouped = truth.append_column("group", pa.array(["clean", "ambiguous", "ambiguous", None]))
    df = evaluation_predictions(grouped, completions, [""] * 4, RewardConfig()).to_pandas()
    assert df["group"].tolist() == ["clean", "ambiguous", "ambiguous", ""]
    groups = group_metrics(df)
    assert list(groups) == ["", "ambiguous", "clean"]
    for name, result in groups.items():
        rows = df[df["group"] == name]
        assert result == {**score_predictions(rows), "reward": pytest.approx(rows["reward_combined"].mean())}
    assert groups["ambiguous"]["n"] == 2 and groups["ambiguous"]["n_missing"] == 1
    assert groups["clean"]["reward"] > 0.9 > groups["ambiguous"]["reward"]

    # the comparison table carries each group's reward after its fixed columns, and says in words
    # how it moved from one model to another
    worse = {name: {**result, "reward": result["reward"] - 0.25} for name, result in groups.items()}
    rows = comparison_rows(
        [("sft", "/s", group_rewards(worse)), ("grpo", "/g", group_rewards(groups)), ("base", "/b", {})]
    )
    assert comparison_columns(rows) == [
        *COMPARISON_COLUMNS,
        "reward_ambiguous",
        "reward_clean",
        "reward_ungrouped",
    ]
    assert rows[1]["reward_clean"] == groups["clean"]["reward"] and "reward_clean" not in rows[2]
    change = group_reward_change(rows, "sft", "grpo")
    assert change.startswith("grpo against sft, mean reward of greedy answers per group: ")
    clean = groups["clean"]["reward"]
    assert f"clean {clean - 0.25:.3f} -> {clean:.3f} (+0.250)" in change and "ambiguous" in change
    assert group_reward_change(rows, "base", "grpo") is None  # the base row has no group rewards
    assert group_reward_change(rows, "sft", "missing") is None


def test_plots_are_png_even_for_missing_predictions(scored_table):
    empty = scored_table.iloc[0:0]
    assert_png(plots.error_cdf_png({"a": scored_table["error_km"], "garbage": np.full(5, np.nan)}))
    assert_png(
        plots.world_map_png(
            scored_table["lat"], scored_table["lon"], scored_table["truth_lat"], scored_table["truth_lon"]
        )
    )
    assert_png(plots.world_map_png(np.full(3, np.nan), np.full(3, np.nan)))
    assert_png(plots.country_bars_png(per_country(scored_table, 5)))
    assert_png(plots.country_bars_png(per_country(empty, 5)))


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
