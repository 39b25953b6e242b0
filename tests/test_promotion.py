"""The champion gate's rule (geor_core/registry/promotion.py) on hand-made scorecards: no server, no model."""

from __future__ import annotations

import pytest

from geor_core.config import RegistryConfig
from geor_core.errors import UserFacingError
from geor_core.registry.promotion import decide


def rules(**values) -> RegistryConfig:
    return RegistryConfig(
        **{"metric": "geoscore", "margin": 50.0, "guards": ["format_rate"], "tolerance": 1.0, **values}
    )


def card(geoscore: float = 1000.0, format_rate: float = 100.0, **more: float) -> dict:
    return {"geoscore": geoscore, "format_rate": format_rate, **more}


def test_no_champion_promotes():
    decision = decide(card(geoscore=0.0, format_rate=0.0), None, rules())
    assert decision.promote and decision.reason == "no champion yet" and decision.champion is None


def test_better_by_more_than_the_margin_promotes():
    decision = decide(card(geoscore=1051.0), card(geoscore=1000.0), rules())
    assert decision.promote, decision.reason
    assert decision.deltas == {"geoscore": pytest.approx(51.0), "format_rate": 0.0}
    assert "geoscore better by 51" in decision.reason


@pytest.mark.parametrize("candidate", [1000.0, 1030.0, 1050.0], ids=["equal", "within", "exactly-margin"])
def test_equal_or_within_the_margin_keeps_the_champion(candidate):
    decision = decide(card(geoscore=candidate), card(geoscore=1000.0), rules())
    assert not decision.promote
    assert "not more than the margin 50" in decision.reason


def test_a_worse_candidate_keeps_the_champion_even_with_no_margin():
    assert not decide(card(geoscore=999.0), card(geoscore=1000.0), rules(margin=0.0)).promote
    assert decide(card(geoscore=1000.5), card(geoscore=1000.0), rules(margin=0.0)).promote


def test_a_guard_falling_beyond_tolerance_keeps_the_champion_even_when_the_metric_is_better():
    decision = decide(card(geoscore=3000.0, format_rate=98.5), card(geoscore=1000.0), rules())
    assert not decision.promote
    assert decision.reason.startswith("format_rate fell 1.5 behind"), decision.reason
    assert decision.deltas["geoscore"] == pytest.approx(2000.0)


def test_a_guard_within_tolerance_does_not_block():
    assert decide(card(geoscore=1100.0, format_rate=99.5), card(geoscore=1000.0), rules()).promote


def test_lower_is_better_metric_median_km():
    median = rules(metric="median_km", margin=10.0, guards=[])
    better = decide({"median_km": 150.0}, {"median_km": 200.0}, median)
    assert better.promote and better.deltas["median_km"] == pytest.approx(50.0)
    assert not decide({"median_km": 195.0}, {"median_km": 200.0}, median).promote  # within margin
    assert not decide({"median_km": 300.0}, {"median_km": 200.0}, median).promote


def test_lower_is_better_guard_median_km():
    guarded = rules(guards=["median_km"], tolerance=20.0)
    farther = decide(card(geoscore=2000.0, median_km=230.0), card(median_km=200.0), guarded)
    assert not farther.promote and farther.reason.startswith("median_km fell 30 behind")
    closer = decide(card(geoscore=2000.0, median_km=150.0), card(median_km=200.0), guarded)
    assert closer.promote


@pytest.mark.parametrize(
    ("candidate", "champion", "who", "missing"),
    [
        ({"format_rate": 100.0}, None, "candidate", "geoscore"),
        ({"format_rate": 100.0}, card(), "candidate", "geoscore"),
        (card(), {"geoscore": 900.0}, "champion", "format_rate"),
        ({"geoscore": 2000.0}, card(), "candidate", "format_rate"),
    ],
)
def test_a_missing_metric_is_an_error_naming_it(candidate, champion, who, missing):
    with pytest.raises(UserFacingError, match=rf"the {who}'s scorecard has no '{missing}'"):
        decide(candidate, champion, rules())


def test_the_best_of_several_candidates_is_the_one_the_rule_prefers_in_order():
    from geor_core.registry.promotion import best_candidate

    sft, grpo = card(3814.0), card(3806.5)
    best, lost = best_candidate([("sft", sft), ("grpo", grpo)], rules(margin=0.0))
    assert best == 0 and lost[1].startswith("did not beat sft: geoscore better by -7.5")
    best, lost = best_candidate([("sft", sft), ("grpo", card(3900.0))], rules(margin=0.0))
    assert best == 1 and lost[0].startswith("grpo beat it: geoscore better by 86")
    # a later candidate must pass the same guards against the leader as against a champion
    best, lost = best_candidate([("sft", sft), ("grpo", card(4500.0, format_rate=90.0))], rules())
    assert best == 0 and "format_rate fell 10 behind sft" in lost[1]
    assert best_candidate([("only", sft)], rules()) == (0, {})
