"""Chain-of-Region target text (geor_core.geo.cor): shape, determinism, fallbacks, vectorised = scalar."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from geor_core.geo import gazetteer
from geor_core.geo.cor import PHRASINGS, cor_target, cor_targets
from geor_core.geo.countries import country_name, normalize_name
from geor_core.geo.geo import validate_coordinates
from geor_core.geo.parse import parse_completion

FIXTURES = Path(__file__).parent / "fixtures"
DOCUMENTED_EXAMPLE = (
    "<think>The scene points to Japan. Within Japan, Hokkaido. The nearest town is Biei.</think>\n"
    "<answer>Country: Japan; State: Hokkaido; City: Biei; Coordinates: (43.452002, 142.615358)</answer>"
)
TARGET_RE = re.compile(
    r"<think>(?P<think>[^<]+)</think>\n<answer>Country: (?P<country>[^;]+); State: (?P<state>[^;]+); "
    r"City: (?P<city>[^;]+); Coordinates: \((?P<lat>-?\d+\.\d{6}), (?P<lon>-?\d+\.\d{6})\)</answer>"
)


@pytest.fixture(scope="module")
def im2gps_rows() -> pd.DataFrame:
    """IM2GPS3K's 2,997 complete rows with their gazetteer labels (real names, real coordinates)."""
    table = pd.read_csv(FIXTURES / "im2gps3k.csv", dtype=str, keep_default_na=False)
    lat, lon, reason = validate_coordinates(table["lat"].to_numpy(), table["lon"].to_numpy())
    ok = reason == ""
    found = gazetteer.lookup(lat[ok], lon[ok])
    return pd.DataFrame({
        "id": table["image_id"][ok].to_numpy(), "country": found["country_name"], "state": found["admin1"],
        "city": found["city"], "lat": lat[ok], "lon": lon[ok],
    })  # fmt: skip


def _phrasing_of(text: str) -> int:
    think = TARGET_RE.fullmatch(text)["think"]
    starts = [k for k, (first, _, _) in enumerate(PHRASINGS) if think.startswith(first.split("{")[0])]
    assert len(starts) == 1, think
    return starts[0]


def test_design_example_shape():
    texts = {
        cor_target("biei-photo", "Japan", "Hokkaido", "Biei", 43.452002, 142.615358, seed)
        for seed in range(40)
    }
    assert DOCUMENTED_EXAMPLE in texts  # docs/design.md's example is one of those the seeds pick
    assert len({_phrasing_of(t) for t in texts}) == len(PHRASINGS)
    for text in texts:
        fields = TARGET_RE.fullmatch(text)
        assert fields is not None, text
        assert (fields["country"], fields["state"], fields["city"]) == ("Japan", "Hokkaido", "Biei")
        assert "Japan" in fields["think"] and "Hokkaido" in fields["think"] and "Biei" in fields["think"]


def test_deterministic_per_row_and_seed_across_processes():
    rows = [(f"img_{i}.jpg", 0.123456789 * i, -1.5 * i) for i in range(30)] + [
        (12345, 1.0, 2.0),
        ("é/ü.jpg", 3.0, 4.0),
    ]
    here = [cor_target(rid, "France", "Bretagne", "Brest", lat, lon, 7) for rid, lat, lon in rows]
    assert here == [cor_target(rid, "France", "Bretagne", "Brest", lat, lon, 7) for rid, lat, lon in rows]
    code = (
        "from geor_core.geo.cor import cor_target\n"
        f"for rid, lat, lon in {rows!r}: print(repr(cor_target(rid, 'France', 'Bretagne', 'Brest', lat, lon, 7)))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # a stable hash, not Python's salted hash()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert done.stdout.splitlines() == [repr(t) for t in here]


def test_phrasing_depends_on_id_and_seed_and_is_balanced():
    ids = [f"photo{i:05d}.jpg" for i in range(2000)]
    by_seed = {
        seed: [_phrasing_of(cor_target(i, "Peru", "Cusco", "Pisac", -13.4, -71.8, seed)) for i in ids]
        for seed in (0, 1)
    }
    assert by_seed[0] != by_seed[1]
    assert sum(a != b for a, b in zip(by_seed[0], by_seed[1], strict=True)) > 1000
    shares = np.bincount(by_seed[0], minlength=len(PHRASINGS)) / len(ids)
    assert shares.min() > 0.2 and shares.max() < 0.3


@pytest.mark.parametrize(
    ("lat", "lon", "expected"),
    [(43.452002, 142.615358, "(43.452002, 142.615358)"), (-33.8688, -0.0000004, "(-33.868800, 0.000000)"),
     (1.23456789, -179.9999996, "(1.234568, -180.000000)"), (90.0, 180.0, "(90.000000, 180.000000)"),
     (-7.5e-6, 0.0000015, "(-0.000008, 0.000002)")],
)  # fmt: skip
def test_coordinates_have_six_decimals_of_the_true_point(lat, lon, expected):
    text = cor_target("x", "Chile", "Maule", "Talca", lat, lon, 0)
    assert text.endswith(f"Coordinates: {expected}</answer>")


def test_empty_levels_fall_back_and_skip_their_sentence():
    text = cor_target("sg-1", "Singapore", "", "Singapore", 1.3121, 103.8143, 0)
    fields = TARGET_RE.fullmatch(text)
    assert (fields["country"], fields["state"], fields["city"]) == ("Singapore", "Singapore", "Singapore")
    assert fields["think"].count(".") == 2  # country and town sentences only
    text = cor_target("ru-1", "Russia", "Bashkortostan", None, 51.85905, 58.22136, 0)
    fields = TARGET_RE.fullmatch(text)
    assert (fields["state"], fields["city"]) == ("Bashkortostan", "Bashkortostan")
    assert fields["think"].count(".") == 2  # country and state sentences only
    text = cor_target("x", "Fiji", "A;B", "C\nD", -17.7, 178.0, 0)
    assert TARGET_RE.fullmatch(text)["state"] == "A B" and TARGET_RE.fullmatch(text)["city"] == "C D"


def test_bad_rows_raise_with_the_row_named():
    with pytest.raises(ValueError, match="row 'r1': country is empty"):
        cor_target("r1", "", "S", "C", 1.0, 2.0, 0)
    with pytest.raises(ValueError, match=r"row 'r2': invalid coordinates \(nan, 2.0\)"):
        cor_target("r2", "Chad", "S", "C", float("nan"), 2.0, 0)
    with pytest.raises(TypeError, match="float"):
        cor_target(1.5, "Chad", "S", "C", 1.0, 2.0, 0)  # type: ignore[arg-type]
    ids, names = pa.array(["a", "b", "c"]), pa.array(["Chad", "Chad", None])
    with pytest.raises(ValueError, match="first at row 1: id 'b', country 'Chad', coordinates \\(95.0"):
        cor_targets(ids, names, names, names, pa.array([1.0, 95.0, 1.0]), pa.array([1.0, 1.0, 1.0]), 0)
    with pytest.raises(ValueError, match="first at row 2: id 'c', country None"):
        cor_targets(ids, names, names, names, pa.array([1.0, 1.0, 1.0]), pa.array([1.0, 1.0, 1.0]), 0)
    with pytest.raises(TypeError, match="double"):
        cor_targets(pa.array([1.0]), names[:1], names[:1], names[:1], pa.array([1.0]), pa.array([1.0]), 0)
    with pytest.raises(ValueError, match="equal lengths"):
        cor_targets(ids, names, names, names[:2], pa.array([1.0] * 3), pa.array([1.0] * 3), 0)


@pytest.mark.parametrize("seed", [0, 1, 2**63 + 5, -3])
def test_vectorised_equals_scalar_on_real_rows(im2gps_rows, seed):
    rows = im2gps_rows
    vectorised = cor_targets(
        pa.array(rows["id"]), pa.array(rows["country"]), pa.array(rows["state"]), pa.array(rows["city"]),
        pa.array(rows["lat"]), pa.array(rows["lon"]), seed,
    ).to_pylist()  # fmt: skip
    scalar = [
        cor_target(r.id, r.country, r.state, r.city, r.lat, r.lon, seed) for r in rows.itertuples(index=False)
    ]
    assert vectorised == scalar
    assert len({_phrasing_of(t) for t in scalar}) == len(PHRASINGS)


def test_vectorised_equals_scalar_on_edge_rows():
    ids = [0, 7, 123456789012, -4, 99]
    country = ["Singapore", "Russia", "Fiji", "Chad", "Peru"]
    state = ["", "Bashkortostan", None, "A;B", "Cusco"]
    city = ["Singapore", "", "Suva", None, "Pisac"]
    lat, lon = [1.3, 51.85905, -18.1, 12.0, -13.4], [103.8, 58.22136, 178.4, 17.0, -71.8]
    expected = [cor_target(*row, 11) for row in zip(ids, country, state, city, lat, lon, strict=True)]
    args = [pa.array(v) for v in (ids, country, state, city, lat, lon)]
    assert cor_targets(*args, 11).to_pylist() == expected  # integer ids
    chunked = [pa.chunked_array([a[:2], a[2:]]) for a in args]
    assert cor_targets(*chunked, 11).to_pylist() == expected
    text_ids = pa.array(["", "é/ü.jpg", "a" * 300, "x", "x y"])
    expected = [
        cor_target(*row, 11) for row in zip(text_ids.to_pylist(), country, state, city, lat, lon, strict=True)
    ]
    assert cor_targets(text_ids, *args[1:], 11).to_pylist() == expected
    sliced = [pa.concat_arrays([v[:1], v])[1:] for v in [text_ids, *args[1:]]]  # non-zero array offsets
    assert sliced[0].offset == 1
    assert cor_targets(*sliced, 11).to_pylist() == expected
    assert cor_targets(*[a[:0] for a in args], 11).to_pylist() == []


def test_targets_round_trip_through_the_parser(im2gps_rows):
    rows = im2gps_rows
    extra = pd.DataFrame({
        "id": ["sg", "dc", "ru"], "country": ["Singapore", "United States", "Russia"],
        "state": ["", "Washington, D.C.", "Bashkortostan"], "city": ["Singapore", "Washington, D.C.", ""],
        "lat": [1.3121, 38.89511, 51.85905], "lon": [103.8143, -77.03637, 58.22136],
    })  # fmt: skip
    for r in pd.concat([rows, extra]).itertuples(index=False):
        parsed = parse_completion(cor_target(r.id, r.country, r.state, r.city, r.lat, r.lon, 5))
        assert parsed.format_ok and parsed.chain_ok and parsed.error == "", r
        assert parsed.country == r.country
        assert normalize_name(parsed.state) == normalize_name(r.state or r.country)
        assert normalize_name(parsed.city) == normalize_name(r.city or r.state or r.country)
        assert abs(parsed.lat - r.lat) <= 5e-7 and abs(parsed.lon - r.lon) <= 5e-7


def test_every_country_name_survives_the_parser():
    codes = sorted(gazetteer.settlements()["cc"].unique())
    for code in codes:
        parsed = parse_completion(cor_target(code, country_name(code), "", "", -12.5, 45.25, 0))
        assert parsed.format_ok and parsed.chain_ok and parsed.country == country_name(code), code


def test_vectorised_is_fast():
    n = 200_000
    rng = np.random.default_rng(0)
    args = (
        pa.array([f"{i:07d}/{i}.jpg" for i in range(n)]), pa.array(rng.choice(["Japan", "Germany"], n)),
        pa.array(rng.choice(["Hokkaido", "Bayern", ""], n)), pa.array(rng.choice(["Biei", "Passau"], n)),
        pa.array(rng.uniform(-90, 90, n)), pa.array(rng.uniform(-180, 180, n)),
    )  # fmt: skip
    start = time.perf_counter()
    out = cor_targets(*args, 0)
    assert len(out) == n and time.perf_counter() - start < 3.0  # about 0.3 s here
