"""Haversine distance and coordinate validation (geor_core.geo.geo)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geor_core.geo import geo

# Expected distances were computed independently with mpmath at 40 digits, using the
# atan2 (Vincenty, sphere) central-angle formula and R = 6371.0088 km. They agree with the
# commonly published figures (Paris-London ~343.5 km, NYC-LA ~3935.7 km, Sydney-Tokyo ~7826 km).
CITY_PAIRS = [
    ("Paris-London", (48.8566, 2.3522, 51.5074, -0.1278), 343.556534881),
    ("New York-Los Angeles", (40.7128, -74.0060, 34.0522, -118.2437), 3935.75169089),
    ("Sydney-Tokyo", (-33.8688, 151.2093, 35.6762, 139.6503), 7825.829426),
    ("Suva-Apia across the antimeridian", (-17.7134, 178.0650, -13.8333, -171.7500), 1171.8288238),
]
HALF_CIRCUMFERENCE_KM = 20015.114442  # pi * 6371.0088, from mpmath


def _central_angle_atan2_km(lat1, lon1, lat2, lon2):
    """An independent formula (atan2 form, no arcsin) to cross-check haversine_km."""
    p1, l1, p2, l2 = (np.radians(np.asarray(v, dtype=np.float64)) for v in (lat1, lon1, lat2, lon2))
    dl = l2 - l1
    num = np.hypot(np.cos(p2) * np.sin(dl), np.cos(p1) * np.sin(p2) - np.sin(p1) * np.cos(p2) * np.cos(dl))
    den = np.sin(p1) * np.sin(p2) + np.cos(p1) * np.cos(p2) * np.cos(dl)
    return geo.EARTH_RADIUS_KM * np.arctan2(num, den)


@pytest.mark.parametrize(("name", "coords", "expected_km"), CITY_PAIRS, ids=[p[0] for p in CITY_PAIRS])
def test_known_city_pairs(name, coords, expected_km):
    assert float(geo.haversine_km(*coords)) == pytest.approx(expected_km, abs=1e-5)
    lat1, lon1, lat2, lon2 = coords
    assert float(geo.haversine_km(lat2, lon2, lat1, lon1)) == pytest.approx(expected_km, abs=1e-5)


def test_vectorised_matches_scalars_and_an_independent_formula():
    rng = np.random.default_rng(0)
    lat1, lat2 = rng.uniform(-90, 90, (2, 10_000))
    lon1, lon2 = rng.uniform(-180, 180, (2, 10_000))
    d = geo.haversine_km(lat1, lon1, lat2, lon2)
    assert d.shape == (10_000,)
    np.testing.assert_allclose(d, _central_angle_atan2_km(lat1, lon1, lat2, lon2), atol=1e-6)
    assert float(geo.haversine_km(lat1[7], lon1[7], lat2[7], lon2[7])) == d[7]
    # broadcasting one point against many
    np.testing.assert_allclose(
        geo.haversine_km(lat1[0], lon1[0], lat2, lon2),
        _central_angle_atan2_km(lat1[0], lon1[0], lat2, lon2),
        atol=1e-6,
    )


def test_antipodes_and_identical_points():
    assert float(geo.haversine_km(0, 0, 0, 180)) == pytest.approx(HALF_CIRCUMFERENCE_KM, abs=1e-6)
    assert float(geo.haversine_km(90, 0, -90, 0)) == pytest.approx(HALF_CIRCUMFERENCE_KM, abs=1e-6)
    # Haversine is ill-conditioned next to the antipode (arcsin near 1): sub-metre error is expected.
    assert float(geo.haversine_km(43.5, 142.6, -43.5, -37.4)) == pytest.approx(
        HALF_CIRCUMFERENCE_KM, abs=1e-3
    )
    assert float(geo.haversine_km(43.5, 142.6, 43.5, 142.6)) == 0.0


def test_nan_in_gives_nan_out_only_where_nan():
    d = geo.haversine_km(np.array([np.nan, 10.0, 10.0]), np.array([0.0, np.nan, 20.0]), 10.0, 20.0)
    assert np.isnan(d[0]) and np.isnan(d[1])
    assert d[2] == 0.0


@settings(max_examples=200, deadline=None)
@given(st.floats(-90, 90), st.floats(-180, 180), st.floats(-90, 90), st.floats(-180, 180))
def test_distance_is_symmetric_and_bounded(lat1, lon1, lat2, lon2):
    d = float(geo.haversine_km(lat1, lon1, lat2, lon2))
    assert 0.0 <= d <= HALF_CIRCUMFERENCE_KM + 1e-6
    assert d == pytest.approx(float(geo.haversine_km(lat2, lon2, lat1, lon1)), abs=1e-9)


def test_every_reason_code_from_string_cells():
    cells = [
        ("43.5", "142.6", ""),
        (" 43.5 ", "\t-142.6 ", ""),
        ("", "1", geo.MISSING_LAT),
        ("  ", "1", geo.MISSING_LAT),
        (None, "1", geo.MISSING_LAT),
        ("1", "", geo.MISSING_LON),
        ("43.5N", "1", geo.NON_NUMERIC_LAT),
        ("1,5", "1", geo.NON_NUMERIC_LAT),
        ("1", "142.6E", geo.NON_NUMERIC_LON),
        ("nan", "1", geo.NAN_LAT),
        (float("nan"), "1", geo.NAN_LAT),
        ("1", "NaN", geo.NAN_LON),
        ("90.0001", "1", geo.LAT_OUT_OF_RANGE),
        ("inf", "1", geo.LAT_OUT_OF_RANGE),
        ("1", "-180.5", geo.LON_OUT_OF_RANGE),
        ("0", "0.0", geo.NULL_ISLAND),
        ("90", "-180", ""),
        ("0", "1e-9", ""),
        (True, "1", geo.NON_NUMERIC_LAT),
        ("", "", geo.MISSING_LAT),  # the first reason in REASON_CODES order wins
        ("abc", "", geo.NON_NUMERIC_LAT),
        ("95", "xyz", geo.NON_NUMERIC_LON),
    ]
    lat_cells = np.array([c[0] for c in cells], dtype=object)
    lon_cells = np.array([c[1] for c in cells], dtype=object)
    lat, lon, reason = geo.validate_coordinates(lat_cells, lon_cells)
    assert reason.tolist() == [c[2] for c in cells]
    assert {c[2] for c in cells} - {""} == set(geo.REASON_CODES)
    assert lat.dtype == np.float64 and lon.dtype == np.float64
    assert lat[1] == 43.5 and lon[1] == -142.6
    assert lat[12] == 90.0001  # out-of-range values are kept as parsed, for the rejects table
    assert np.isnan(lat[6])  # no guessing: "43.5N" is not read as 43.5


def test_float_input_reasons_and_plain_lists():
    lat, lon, reason = geo.validate_coordinates([10.0, np.nan, 0.0, 91.0, 5], [20.0, 1.0, 0.0, 1.0, np.nan])
    assert reason.tolist() == ["", geo.NAN_LAT, geo.NULL_ISLAND, geo.LAT_OUT_OF_RANGE, geo.NAN_LON]
    assert lat[0] == 10.0 and np.isnan(lon[4])


def test_empty_and_mismatched_input():
    lat, lon, reason = geo.validate_coordinates(np.array([], dtype=object), np.array([], dtype=object))
    assert lat.shape == lon.shape == reason.shape == (0,)
    with pytest.raises(ValueError, match="3 values but lon_values has 2"):
        geo.validate_coordinates([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="one-dimensional"):
        geo.validate_coordinates(np.zeros((2, 2)), np.zeros((2, 2)))


def test_validation_is_vectorised_fast():
    rng = np.random.default_rng(1)
    lat, lon = rng.uniform(-90, 90, 1_000_000), rng.uniform(-180, 180, 1_000_000)
    start = time.perf_counter()
    _, _, reason = geo.validate_coordinates(lat, lon)
    assert time.perf_counter() - start < 1.0
    assert (reason == "").all()
    lat_text = lat[:200_000].astype(str).astype(object)
    lat_text[::1000] = "12N"
    start = time.perf_counter()
    _, _, reason = geo.validate_coordinates(lat_text, lon[:200_000])
    assert time.perf_counter() - start < 2.0
    assert (reason == geo.NON_NUMERIC_LAT).sum() == 200
