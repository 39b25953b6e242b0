"""Shared looks and what RL can win on them: the posterior a look leaves, greedy imitation of it,
the reward's optimum, and benchmarks/world_looks.py reading them off a real world."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import world_looks
from geor_core.data.world import choose_places
from geor_core.data.world_looks import look_posterior
from geor_core.geo.parse import parse_completion
from geor_core.scoring.look_gap import expected_rewards, greedy_choice, look_gap, reward_optimum
from geor_core.scoring.rewards import piecewise_distance_reward


def test_greedy_decoding_follows_pooled_mass_not_the_likeliest_answer():
    answers = ["Country: A; City: x", "Country: B; City: y", "Country: B; City: z"]
    # A alone is the likeliest answer, but B's two answers hold more mass together
    assert greedy_choice(answers, np.array([0.45, 0.30, 0.25])) == 1
    assert greedy_choice(answers, np.array([0.60, 0.30, 0.10])) == 0
    assert greedy_choice(["ab", "abc"], np.array([0.6, 0.4])) == 0  # ending is a choice too


def test_the_optimum_sits_in_a_compact_minority_when_the_majority_is_spread_out():
    # 60%: three places ~3,300 km apart (a big country); 40%: one place (a compact one)
    lat, lon = np.array([0.0, 0.0, 0.0, 50.0]), np.array([-30.0, 0.0, 30.0, 100.0])
    prob = np.array([0.2, 0.2, 0.2, 0.4])
    best_lat, best_lon, best = reward_optimum(lat, lon, prob, piecewise_distance_reward)
    assert abs(best_lat - 50.0) < 0.5 and abs(best_lon - 100.0) < 0.5
    at_truths = expected_rewards(lat, lon, lat, lon, prob, piecewise_distance_reward)
    assert best >= at_truths.max() - 1e-9 and best > at_truths[:3].max() + 0.1
    again = expected_rewards(
        np.array([best_lat]), np.array([best_lon]), lat, lon, prob, piecewise_distance_reward
    )
    assert again[0] == pytest.approx(best)


def test_a_looks_posterior_follows_the_draw_rule_and_its_answers_parse_back():
    places = choose_places(3, seed=0, country_codes=("CA", "SE", "JP"))
    posterior = look_posterior(places, (("CA", 0.7), ("SE", 0.3)))
    assert set(posterior["cc"]) == {"CA", "SE"}
    assert posterior.groupby("cc")["prob"].sum().to_dict() == pytest.approx({"CA": 0.7, "SE": 0.3})
    per_state = posterior.groupby(["cc", "state_idx"])["prob"].sum()
    assert np.allclose(per_state.loc["CA"], 0.7 / 6) and np.allclose(per_state.loc["SE"], 0.3 / 6)
    for row in posterior.sample(20, random_state=0).itertuples():
        parsed = parse_completion(f"<answer>{row.answer}</answer>")
        assert parsed.chain_ok and parsed.format_ok and parsed.city is not None
        assert (parsed.lat, parsed.lon) == pytest.approx((row.lat, row.lon), abs=1e-6)
    gap = look_gap(posterior["lat"], posterior["lon"], posterior["prob"], posterior["answer"])
    assert gap["optimum"]["reward"] >= gap["greedy"]["reward"] and gap["gap"] >= 0


def test_world_looks_finds_canada_sweden_worth_training_for(capsys):
    assert world_looks.main(["--codes", "CA,SE"]) == 0
    *looks, summary = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_look = {row["look"]: row for row in looks}
    assert set(by_look) == {"CA:0.6,SE:0.4", "SE:0.6,CA:0.4"} and summary["looks"] == 2
    canada_first = by_look["CA:0.6,SE:0.4"]
    # greedy imitation names the majority (Canada); the reward's optimum is in Sweden, well above it
    assert (canada_first["greedy"]["country"], canada_first["optimum"]["country"]) == ("CA", "SE")
    assert canada_first["gap"] > 0.05 and summary["optimum_in_another_country"] == ["CA:0.6,SE:0.4"]
    assert by_look["SE:0.6,CA:0.4"]["gap"] < 0.02  # Sweden first: imitation is already near the optimum
