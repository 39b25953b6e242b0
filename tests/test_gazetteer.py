"""Country names/codes (geor_core.geo.countries) and the offline gazetteer (geor_core.geo.gazetteer)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pycountry
import pytest

from geor_core.geo import gazetteer
from geor_core.geo.countries import country_code, country_name, normalize_name
from geor_core.geo.geo import haversine_km, validate_coordinates

FIXTURES = Path(__file__).parent / "fixtures"
LOOKUP_KEYS = {
    "country_code", "country_name", "admin1", "admin2", "city",
    "city_lat", "city_lon", "distance_km", "settlement_index",
}  # fmt: skip


# --- countries -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "name"),
    [("JP", "Japan"), ("TW", "Taiwan"), ("RU", "Russia"), ("IR", "Iran"), ("KR", "South Korea"),
     ("VN", "Vietnam"), ("BO", "Bolivia"), ("XK", "Kosovo"), ("de", "Germany"), ("NA", "Namibia")],
)  # fmt: skip
def test_country_name_prefers_common_names(code, name):
    assert country_name(code) == name


def test_country_name_rejects_unknown_codes_by_name():
    with pytest.raises(ValueError, match="'QQ'"):
        country_name("QQ")
    with pytest.raises(ValueError, match="None"):
        country_name(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "code"),
    [("Japan", "JP"), ("japan", "JP"), ("JPN", "JP"), ("jp", "JP"), ("USA", "US"), ("U.S.A.", "US"),
     ("United States of America", "US"), ("United States", "US"), ("UK", "GB"), ("Britain", "GB"),
     ("United Kingdom of Great Britain and Northern Ireland", "GB"), ("Russia", "RU"),
     ("Russian Federation", "RU"), ("South Korea", "KR"), ("Korea, Republic of", "KR"),
     ("Czech Republic", "CZ"), ("Czechia", "CZ"), ("Ivory Coast", "CI"), ("Côte d'Ivoire", "CI"),
     ("Cote dIvoire", "CI"), ("Türkiye", "TR"), ("Turkey", "TR"), ("The Bahamas", "BS"),
     ("  viet   nam ", "VN"), ("Kosovo", "XK"), ("Plurinational State of Bolivia", "BO"),
     ("UAE", "AE"), ("Ukraine", "UA"), ("Atlantis", None), ("", None), ("Korea", None)],
)  # fmt: skip
def test_country_code_reads_names_codes_and_aliases(text, code):
    assert country_code(text) == code


def test_every_country_round_trips_and_names_are_answer_safe():
    codes = [c.alpha_2 for c in pycountry.countries] + ["XK"]
    for code in codes:
        name = country_name(code)
        assert country_code(name) == code, (code, name)
        assert not set(name) & set(";,\n"), name  # would split the CoR answer's fields


@pytest.mark.parametrize(
    ("a", "b"),
    [("Baden-Württemberg", "Baden-Wuerttemberg"), ("São Paulo", "SAO PAULO"), ("Tromsø", "Tromso"),
     ("Gävleborg", "Gaevleborg"), ("Bingöl", "Bingoel"), ("Zürich", "Zurich"), ("Straße", "Strasse"),
     ("Washington, D.C.", "washington d c"), ("Île-de-France", "Ile de France")],
)  # fmt: skip
def test_normalize_name_equates_spellings_of_one_place(a, b):
    assert normalize_name(a) == normalize_name(b)


def test_normalize_name_shape_and_distinct_places():
    assert normalize_name("  São   Paulo!! ") == "sao paulo"
    assert normalize_name("Baden-Württemberg") == "baden wurttemberg"
    assert normalize_name("Côte d'Ivoire") == "cote divoire"
    assert normalize_name("Bayern") != normalize_name("Hessen")
    assert normalize_name("Georgia") != normalize_name("Georgia (US)")


# --- gazetteer -------------------------------------------------------------------------------


def test_every_gazetteer_country_code_has_a_name():
    table = gazetteer.settlements()
    codes = set(table["cc"])
    assert len(codes) > 240 and "NA" in codes and "XK" in codes  # Namibia's "NA" is not a missing value
    assert all(country_name(code) for code in codes)


def test_settlements_table_shape_and_copy():
    table = gazetteer.settlements()
    assert list(table.columns) == list(gazetteer.SETTLEMENT_COLUMNS)
    assert len(table) > 140_000
    assert table["lat"].dtype == np.float64 and table["lon"].dtype == np.float64
    assert table["lat"].between(-90, 90).all() and table["lon"].between(-180, 180).all()
    table.loc[:, "name"] = "changed"
    assert (gazetteer.settlements()["name"] != "changed").any()


def test_lookup_fields_match_the_settlement_table():
    lat, lon = np.array([43.452, 48.8566, -33.8688]), np.array([142.615, 2.3522, 151.2093])
    found = gazetteer.lookup(lat, lon)
    assert set(found) == LOOKUP_KEYS
    assert found["country_code"].tolist() == ["JP", "FR", "AU"]
    assert found["country_name"].tolist() == ["Japan", "France", "Australia"]
    assert found["admin1"].tolist()[::2] == ["Hokkaido", "New South Wales"]
    table = gazetteer.settlements().iloc[found["settlement_index"]]
    assert table["name"].tolist() == found["city"].tolist()
    assert table["admin1"].tolist() == found["admin1"].tolist()
    np.testing.assert_array_equal(table["lat"].to_numpy(), found["city_lat"])
    np.testing.assert_allclose(
        found["distance_km"], haversine_km(lat, lon, found["city_lat"], found["city_lon"])
    )
    index, distance_km = gazetteer.nearest(lat, lon)  # the same query, without the names
    assert index.tolist() == found["settlement_index"].tolist()
    np.testing.assert_array_equal(distance_km, found["distance_km"])


def test_lookup_finds_the_great_circle_nearest_settlement():
    rng = np.random.default_rng(3)
    lat = np.concatenate([rng.uniform(-60, 75, 30), [-16.6, 68.9, 78.2, 64.1, -54.8]])
    lon = np.concatenate([rng.uniform(-180, 180, 30), [179.999, -179.99, 15.6, -21.9, -68.3]])
    found = gazetteer.lookup(lat, lon)
    table = gazetteer.settlements()
    for i in range(lat.size):  # brute force over every settlement
        distances = haversine_km(lat[i], lon[i], table["lat"].to_numpy(), table["lon"].to_numpy())
        assert found["distance_km"][i] == pytest.approx(distances.min(), abs=1e-9)


def test_lookup_makes_one_tree_query_per_batch(monkeypatch):
    real = gazetteer._gazetteer()
    batch_sizes = []

    class CountingTree:
        def query(self, points, k=1):
            batch_sizes.append(len(points))
            return real.tree.query(points, k=k)

    monkeypatch.setattr(gazetteer, "_gazetteer", lambda: dataclasses.replace(real, tree=CountingTree()))
    gazetteer.lookup(np.linspace(-50, 50, 1000), np.linspace(-170, 170, 1000))
    assert batch_sizes == [1000]


def test_lookup_empty_and_invalid_input():
    found = gazetteer.lookup(np.array([]), np.array([]))
    assert set(found) == LOOKUP_KEYS and all(len(v) == 0 for v in found.values())
    with pytest.raises(ValueError, match=r"first at row 1: \(nan, 3.0\)"):
        gazetteer.lookup([1.0, np.nan], [2.0, 3.0])
    with pytest.raises(ValueError, match=r"row 0: \(91.0"):
        gazetteer.lookup([91.0], [0.0])
    with pytest.raises(ValueError, match="equal length"):
        gazetteer.lookup([1.0, 2.0], [1.0])


def test_streetscape_photos_match_their_gadm_labels():
    manifest = pd.read_csv(FIXTURES / "streetscapes" / "manifest.csv", dtype=str, keep_default_na=False)
    lat, lon, reason = validate_coordinates(manifest["lat"].to_numpy(), manifest["lon"].to_numpy())
    assert (reason == "").all()
    found = gazetteer.lookup(lat, lon)
    expected_codes = [country_code(name) for name in manifest["country"]]
    assert None not in expected_codes
    assert found["country_code"].tolist() == expected_codes  # all 25 rows
    state_agreement = sum(
        normalize_name(gadm) == normalize_name(admin1)
        for gadm, admin1 in zip(manifest["state"], found["admin1"], strict=True)
    )
    print(f"streetscapes: admin1 agrees with GADM state on {state_agreement}/{len(manifest)} photos")
    # Measured 19/25: every Stuttgart photo (Baden-Württemberg = Baden-Wuerttemberg); GeoNames
    # gives Singapore no admin1 where GADM says "Central".
    assert state_agreement >= 19


def test_im2gps3k_complete_rows():
    table = pd.read_csv(FIXTURES / "im2gps3k.csv", dtype=str, keep_default_na=False)
    lat, lon, reason = validate_coordinates(table["lat"].to_numpy(), table["lon"].to_numpy())
    assert (reason == "").sum() == 2997
    assert set(reason[reason != ""]) == {"missing_lat"}
    ok = reason == ""
    found = gazetteer.lookup(lat[ok], lon[ok])
    assert all(len(values) == 2997 for values in found.values())
    names_by_code = {code: country_name(code) for code in set(found["country_code"])}
    assert [names_by_code[c] for c in found["country_code"]] == found["country_name"].tolist()
    assert len(names_by_code) > 100
    assert np.median(found["distance_km"]) < 10.0  # photos are taken near settlements


def test_lookup_is_batched_fast():
    rng = np.random.default_rng(5)
    lat, lon = rng.uniform(-60, 70, 200_000), rng.uniform(-180, 180, 200_000)
    gazetteer.lookup(lat[:10], lon[:10])  # load outside the timing
    start = time.perf_counter()
    gazetteer.lookup(lat, lon)
    assert time.perf_counter() - start < 3.0  # about 0.2 s here; a per-row loop takes tens of seconds


def test_gazetteer_prints_nothing():
    code = "from geor_core.geo import gazetteer; gazetteer.lookup([43.45], [142.61]); gazetteer.settlements()"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == ""
