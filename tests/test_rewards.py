"""Reward components (docs/design.md, Rewards): the paper's piecewise distance, exp, format, chain, region."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from geor_core.config import RewardConfig
from geor_core.geo.geo import haversine_km
from geor_core.scoring.metrics import level_matches
from geor_core.scoring.rewards import (
    Truth,
    distance_reward,
    exp_distance_reward,
    piecewise_distance_reward,
    reward_keys,
    score_completions,
)


def answer(
    lat: float, lon: float, country: str = "Japan", state: str = "Hokkaido", city: str = "Asahikawa"
) -> str:
    return f"<think>...</think><answer>Country: {country}; State: {state}; City: {city}; Coordinates: ({lat}, {lon})</answer>"


ASAHIKAWA = (43.77063, 142.36489)  # a settlement of the gazetteer: JP, Hokkaido, Asahikawa


def hokkaido(lat: list[float], lon: list[float]) -> Truth:
    """Truth rows at (lat, lon), each named Japan, Hokkaido, Asahikawa."""
    n = len(lat)
    return Truth(lat, lon, ["JP"] * n, ["Hokkaido"] * n, ["Asahikawa"] * n)


@pytest.mark.parametrize(
    ("d", "expected"),
    [
        (0.0, 1.0),
        (749.9, 1.0 - 0.5 * 749.9 / 750.0),  # 0.500066...
        (750.0, 0.5),
        (1625.0, 0.5 - 0.3 * 875.0 / 1750.0),
        (2500.0, 0.2),
        (11250.0, 0.2 - 0.2 * 8750.0 / 17500.0),
        (20000.0, 0.0),
        (20037.5, 0.0),  # half the circumference: clipped, not negative
    ],
)
def test_piecewise_reward_values(d, expected):
    assert piecewise_distance_reward([d])[0] == pytest.approx(expected, abs=1e-12)


def test_piecewise_reward_published_anchor_values():
    values = piecewise_distance_reward([0.0, 749.9, 750.0, 2500.0, 20000.0])
    assert values.tolist() == pytest.approx([1.0, 0.5000666666666667, 0.5, 0.2, 0.0], abs=1e-12)


@pytest.mark.parametrize("breakpoint_km", [750.0, 2500.0, 20000.0])
def test_piecewise_reward_is_continuous_and_decreasing(breakpoint_km):
    eps = 1e-6
    left, at, right = piecewise_distance_reward([breakpoint_km - eps, breakpoint_km, breakpoint_km + eps])
    assert abs(left - at) < 1e-8 and abs(right - at) < 1e-8
    grid = piecewise_distance_reward(np.linspace(0, 25000, 100_001))
    assert np.all(np.diff(grid) <= 0) and grid.min() == 0.0 and grid.max() == 1.0


def test_missing_distance_scores_zero():
    assert piecewise_distance_reward([np.nan])[0] == 0.0
    assert exp_distance_reward([np.nan], 100.0)[0] == 0.0
    assert piecewise_distance_reward([np.inf, np.nan, 0.0]).tolist() == [0.0, 0.0, 1.0]


def test_truth_slice_keeps_every_column():
    truth = Truth(
        [1.0, 2.0, 3.0], [4.0, 5.0, 6.0], ["JP", "FR", None], ("a", "b", "c"), np.array(["x", "y", "z"])
    )
    part = truth[1:3]
    assert part.lat.tolist() == [2.0, 3.0] and part.lon.tolist() == [5.0, 6.0]
    assert part.country_code.tolist() == ["FR", None] and part.state.tolist() == ["b", "c"]
    assert part.city.tolist() == ["y", "z"] and {part.state.dtype, part.city.dtype} == {np.dtype(object)}


def test_exp_shape():
    d = np.array([0.0, 100.0, 500.0, 2000.0])
    assert exp_distance_reward(d, 500.0).tolist() == pytest.approx(np.exp(-d / 500.0).tolist())
    assert exp_distance_reward([500.0], 500.0)[0] == pytest.approx(1 / math.e)
    assert distance_reward([250.0], "exp", 250.0)[0] == pytest.approx(1 / math.e)
    with pytest.raises(ValueError, match="tau_km"):
        exp_distance_reward([1.0], 0.0)
    with pytest.raises(ValueError, match="distance_shape"):
        distance_reward([1.0], "linear", 1.0)


def test_product_is_distance_times_format():
    cfg = RewardConfig(mode="product")
    completions = [answer(45.0, 10.0), "Coordinates: (45.0, 10.0) or (46, 11)"]
    scores = score_completions(completions, hokkaido([45.0, 45.0], [12.0, 12.0]), cfg=cfg)
    d = haversine_km(45.0, 10.0, 45.0, 12.0)
    expected_distance = piecewise_distance_reward([d])[0]
    assert scores["distance_km"] == pytest.approx([d, d])
    assert scores["distance"] == pytest.approx([expected_distance] * 2)
    assert scores["format"].tolist() == [1.0, 0.0]
    assert scores["combined"] == pytest.approx([expected_distance, 0.0])


def test_weighted_sum_uses_every_weight():
    cfg = RewardConfig(mode="weighted_sum", w_distance=0.5, w_format=0.1, w_chain=0.15, w_region=0.25,
                       region_source="text", w_country=0.5, w_state=0.3, w_city=0.2)  # fmt: skip
    completions = [answer(45.0, 10.0, "Japan", "Hokkaido", "Nowhere"), "Coordinates: (45.0, 10.0) (1, 1)"]
    scores = score_completions(completions, hokkaido([45.0] * 2, [12.0] * 2), cfg=cfg)
    assert scores["region"].tolist() == pytest.approx([0.8, 0.0])  # country + state, wrong city
    assert scores["chain"].tolist() == [1.0, 0.0]
    dist = scores["distance"]
    expected = [0.5 * dist[0] + 0.1 + 0.15 + 0.25 * 0.8, 0.5 * dist[1]]
    assert scores["combined"] == pytest.approx(expected)
    product = score_completions(
        completions, hokkaido([45.0] * 2, [12.0] * 2), cfg=replace(cfg, mode="product")
    )
    assert product["combined"] == pytest.approx([dist[0], 0.0])


def test_unparseable_scores_zero_on_every_component():
    cfg = RewardConfig(mode="weighted_sum", w_chain=0.2)
    completions = [
        "Country: Japan; State: Hokkaido; City: Biei; Coordinates: (95, 10)",
        None,
        "",
        "<answer>(1, 2)",
    ]
    scores = score_completions(completions, hokkaido([1.0] * 4, [2.0] * 4), cfg=cfg)
    assert list(scores) == list(reward_keys())
    for key in ("distance", "format", "chain", "region", "combined", "acc_25km", "geoscore"):
        assert scores[key].tolist() == [0.0] * 4, key
    assert np.isnan(scores["distance_km"]).all()
    assert scores["parse_failed"].tolist() == [1.0] * 4


def test_region_text_source_compares_codes_and_normalised_names():
    cfg = RewardConfig(mode="weighted_sum", region_source="text", w_country=0.5, w_state=0.3, w_city=0.2)
    completions = [
        answer(*ASAHIKAWA, "JAPAN", "hokkaidō", "asahikawa."),  # case, accents, punctuation
        answer(*ASAHIKAWA, "JP", "Hokkaido", "Biei"),  # a code is a country too
        answer(*ASAHIKAWA, "Georgia", "Hokkaido", "Asahikawa"),  # country wrong: the rest earns nothing
        answer(*ASAHIKAWA, "Japan", "Aomori", "Asahikawa"),  # city counts without the state
        "Coordinates: (43.5, 142.4)",  # names nothing
    ]
    n = len(completions)
    scores = score_completions(completions, hokkaido([ASAHIKAWA[0]] * n, [ASAHIKAWA[1]] * n), cfg=cfg)
    assert scores["region"].tolist() == pytest.approx([1.0, 0.8, 0.0, 0.7, 0.0])


def test_region_point_source_reads_the_gazetteer_at_the_predicted_point():
    cfg = RewardConfig(mode="weighted_sum", region_source="point", w_country=0.5, w_state=0.3, w_city=0.2)
    completions = [
        answer(43.7707, 142.3649, "France", "Nowhere", "Nothing"),  # the text is ignored
        answer(43.84, 142.77111),  # Kamikawa: same country and state
        answer(40.82, 140.74),  # Aomori: same country only
        answer(48.85, 2.35),  # Paris
    ]
    n = len(completions)
    scores = score_completions(completions, hokkaido([ASAHIKAWA[0]] * n, [ASAHIKAWA[1]] * n), cfg=cfg)
    assert scores["region"].tolist() == pytest.approx([1.0, 0.8, 0.5, 0.0])


def test_region_needs_truth_rows_unless_its_weights_are_zero():
    with pytest.raises(ValueError, match="truth_state"):
        score_completions([answer(1, 2)], Truth([1.0], [2.0], country_code=["JP"]), cfg=RewardConfig())
    off = RewardConfig(w_country=0.0, w_state=0.0, w_city=0.0)
    assert score_completions([answer(1, 2)], Truth([1.0], [2.0]), cfg=off)["region"].tolist() == [0.0]


def test_bad_configuration_and_shapes_are_named():
    with pytest.raises(ValueError, match="reward.mode"):
        score_completions(
            ["(1, 2)"], Truth([1.0], [2.0]), RewardConfig(mode="sum", w_country=0.0, w_state=0.0, w_city=0.0)
        )
    with pytest.raises(ValueError, match="region_source"):
        score_completions(["(1, 2)"], hokkaido([1.0], [2.0]), cfg=RewardConfig(region_source="both"))
    with pytest.raises(ValueError, match=r"truth row 1 is not a valid coordinate: \(nan, 2.0\)"):
        score_completions(["(1, 2)", "(3, 4)"], hokkaido([1.0, np.nan], [2.0, 2.0]), cfg=RewardConfig())
    with pytest.raises(ValueError, match="2 completions but 1 truth_lat"):
        score_completions(["(1, 2)", "(3, 4)"], hokkaido([1.0], [2.0, 3.0]), cfg=RewardConfig())


def test_accepts_trl_conversational_completions_and_duck_typed_config():
    class Settings:
        mode, distance_shape, tau_km = "product", "exp", 100.0
        w_distance = w_format = w_chain = w_region = 0.0
        region_source, w_country, w_state, w_city = "text", 0.0, 0.0, 0.0

    scores = score_completions(
        [[{"role": "assistant", "content": answer(10.0, 20.0)}]], Truth([10.0], [20.0]), Settings()
    )
    assert scores["combined"].tolist() == [1.0]


def test_level_matches_never_match_missing_names():
    country, state, city = level_matches(
        [None, "", "Japan"], [None, "", None], [None, "", None], ["JP", "JP", ""], ["", "", ""], ["", "", ""]
    )
    assert not country.any() and not state.any() and not city.any()
