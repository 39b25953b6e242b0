"""Standard metrics (docs/design.md, Metrics) on small examples that can be checked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geor_core.geo.geo import EARTH_RADIUS_KM
from geor_core.scoring.metrics import compute_metrics, metric_sums, metric_sums_by

KM_PER_DEGREE = math.pi * EARTH_RADIUS_KM / 180.0  # along a meridian


def north_of_origin(km: float) -> float:
    """The latitude that lies ``km`` north of (0, 0) on the same meridian."""
    return km / KM_PER_DEGREE


def test_hand_checked_example():
    # Five truth rows at (0, 0); errors of 0.5, 20, 300, 1000 km and one missing prediction.
    errors = [0.5, 20.0, 300.0, 1000.0]
    pred_lat = [north_of_origin(d) for d in errors] + [np.nan]
    pred_lon = [0.0] * 4 + [np.nan]
    m = compute_metrics(pred_lat, pred_lon, [0.0] * 5, [0.0] * 5, format_ok=[True, True, False, True, False])
    assert (m["n"], m["n_missing"], m["missing_rate"]) == (5, 1, 20.0)
    assert m["acc_1km"] == pytest.approx(20.0)  # 1 of 5
    assert m["acc_25km"] == pytest.approx(40.0)
    assert m["acc_200km"] == pytest.approx(40.0)
    assert m["acc_750km"] == pytest.approx(60.0)
    assert m["acc_2500km"] == pytest.approx(80.0)  # the missing row is a miss, not skipped
    assert m["median_km"] == pytest.approx((20.0 + 300.0) / 2)  # over the 4 predictions
    assert m["mean_km"] == pytest.approx(sum(errors) / 4)
    assert m["geoscore"] == pytest.approx(sum(5000 * math.exp(-d / 1492.7) for d in errors) / 5)
    assert m["format_rate"] == pytest.approx(60.0)
    assert m["country_match_rate"] is None and m["state_match_rate"] is None and m["city_match_rate"] is None


def test_thresholds_are_inclusive():
    pred_lat = [north_of_origin(25.0), north_of_origin(25.0 + 1e-6)]
    m = compute_metrics(pred_lat, [0.0, 0.0], [0.0, 0.0], [0.0, 0.0])
    assert m["acc_25km"] == 50.0


def test_out_of_range_prediction_counts_as_missing():
    m = compute_metrics([95.0, 10.0], [0.0, 200.0], [0.0, 0.0], [0.0, 0.0])
    assert m["n_missing"] == 2 and m["median_km"] is None and m["mean_km"] is None and m["geoscore"] == 0.0
    assert m["acc_2500km"] == 0.0 and m["format_rate"] is None


def test_no_rows():
    m = compute_metrics([], [], [], [])
    assert m["n"] == 0 and m["acc_1km"] is None and m["geoscore"] is None and m["median_km"] is None


def test_level_match_rates_use_the_text_comparison():
    m = compute_metrics(
        [48.85, 48.85, 48.85, np.nan],
        [2.35, 2.35, 2.35, np.nan],
        [48.85] * 4,
        [2.35] * 4,
        pred_country=["France", "FR", "Belgium", "france"],
        pred_state=["Île-de-France", "Normandy", "Ile-de-France", None],
        pred_city=["paris", "Paris", "Paris", "Paris"],
        truth_country_code=["FR"] * 4,
        truth_state=["Ile-de-France"] * 4,
        truth_city=["Paris"] * 4,
    )
    assert m["country_match_rate"] == 75.0  # names count even where the coordinates are missing
    assert m["state_match_rate"] == 25.0  # Belgium's Ile-de-France: the country is wrong
    assert m["city_match_rate"] == 75.0


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"truth row 1 is not a valid coordinate: \(nan, 0.0\)"):
        compute_metrics([0.0, 0.0], [0.0, 0.0], [0.0, np.nan], [0.0, 0.0])
    with pytest.raises(ValueError, match="pred_lon has 1 values"):
        compute_metrics([0.0, 0.0], [0.0], [0.0, 0.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="truth_country_code"):
        compute_metrics([0.0], [0.0], [0.0], [0.0], pred_country=["France"])


def test_sums_by_key_equal_the_sums_of_each_keys_rows():
    rng = np.random.default_rng(4)
    n = 200
    true_lat, true_lon = rng.uniform(-60, 60, n), rng.uniform(-170, 170, n)
    pred_lat = np.where(rng.random(n) < 0.2, np.nan, true_lat + rng.normal(0, 5, n))
    pred_lon = true_lon + rng.normal(0, 5, n)
    flags = rng.random(n) < 0.7
    keys = rng.integers(-1, 4, n)  # -1: left out
    by_key, distance = metric_sums_by(keys, 5, pred_lat, pred_lon, true_lat, true_lon, format_ok=flags)
    assert len(by_key) == 5 and by_key[4].n == 0 and by_key[4].histogram == {}
    for key in range(4):
        rows = keys == key
        alone, alone_distance = metric_sums(
            pred_lat[rows], pred_lon[rows], true_lat[rows], true_lon[rows], format_ok=flags[rows]
        )
        got = by_key[key]
        assert (got.n, got.found, got.within, got.format_ok, got.histogram) == (
            alone.n, alone.found, alone.within, alone.format_ok, alone.histogram
        )  # fmt: skip
        assert got.sum_km == pytest.approx(alone.sum_km, rel=1e-12)
        assert got.sum_geoscore == pytest.approx(alone.sum_geoscore, rel=1e-12)
        np.testing.assert_array_equal(distance[rows], alone_distance)
