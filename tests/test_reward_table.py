"""The reward table (geor_core.scoring.rewards.COMPONENTS): a component declared once there is
scored, exposed to TRL and logged by GRPO, and written to predictions.parquet - no other edit."""

from __future__ import annotations

from dataclasses import asdict, fields
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from geor_core.config import RewardConfig
from geor_core.scoring import rewards
from geor_core.scoring.metrics import compute_metrics
from geor_core.scoring.predictions import EVALUATION_SCHEMA, evaluation_predictions
from geor_core.scoring.rewards import RewardComponent, Truth, score_completions
from geor_core.training.grpo_setup import RewardBoard

ROWS = {  # prepared rows (`geor prepare` columns), as TRL and the predictions builder receive them
    "id": ["a", "b", "c"],
    "split": ["test"] * 3,
    "image": ["a.jpg", "b.jpg", "c.jpg"],
    "lat": [43.77, 48.85, 10.0],
    "lon": [142.36, 2.35, 20.0],
    "country_code": ["JP", "FR", "TD"],
    "country": ["Japan", "France", "Chad"],
    "state": ["Hokkaido", "Ile-de-France", "Salamat"],
    "city": ["Asahikawa", "Paris", "Am Timan"],
}
COMPLETIONS = [
    "<answer>Country: Japan; State: Hokkaido; City: Asahikawa; Coordinates: (43.0, 142.0)</answer>",
    "<answer>Country: France; Coordinates: (45.0, 5.0)</answer>",
    "no coordinates at all",
]


def _latitude_bonus(batch: rewards.ScoredBatch, cfg: object) -> np.ndarray:
    """A made-up component: the truth's |latitude| / 100 where the answer parsed, else 0."""
    return np.where(batch.failed, 0.0, np.abs(batch.truth.lat) / 100.0)


EXPECTED_BONUS = [0.4377, 0.4885, 0.0]


@pytest.fixture
def dummy(monkeypatch) -> SimpleNamespace:
    """The table plus one weighted dummy component, and a weighted_sum config that weights it."""
    component = RewardComponent("latitude_bonus", _latitude_bonus, weight="w_latitude_bonus")
    monkeypatch.setattr(rewards, "COMPONENTS", (*rewards.COMPONENTS, component))
    return SimpleNamespace(**asdict(RewardConfig(mode="weighted_sum")), w_latitude_bonus=0.5)


def test_a_registered_component_is_scored_and_weighted_into_combined(dummy):
    scores = score_completions(COMPLETIONS, Truth.from_columns(ROWS), dummy)
    assert scores["latitude_bonus"].tolist() == pytest.approx(EXPECTED_BONUS)
    assert list(scores) == list(rewards.reward_keys())
    without = {**vars(dummy), "w_latitude_bonus": 0.0}
    plain = score_completions(COMPLETIONS, Truth.from_columns(ROWS), SimpleNamespace(**without))
    bonus = 0.5 * np.asarray(EXPECTED_BONUS)
    assert scores["combined"] == pytest.approx(plain["combined"] + bonus)


def test_a_registered_component_is_a_trl_reward_function_logged_by_grpo(dummy):
    board = RewardBoard(lambda completions, truth: score_completions(completions, truth, dummy))
    funcs, weights = board.reward_functions()
    by_name = dict(zip([f.__name__ for f in funcs], weights, strict=True))  # TRL names them so
    logged = {f"rewards/{name}/{stat}" for name in by_name for stat in ("mean", "std")}  # TRL's keys
    assert {"rewards/latitude_bonus/mean", "rewards/latitude_bonus/std", "rewards/acc_200km/mean"} <= logged
    assert by_name["combined"] == 1.0 and by_name["latitude_bonus"] == 0.0
    assert sum(weights) == 1.0  # only combined drives the advantage
    kwargs = {key: ROWS[key] for key in ("id", "lat", "lon", "country_code", "state", "city")}
    reward = funcs[list(by_name).index("latitude_bonus")]
    assert reward([None] * 3, COMPLETIONS, **kwargs) == pytest.approx(EXPECTED_BONUS)


def test_a_registered_component_is_a_predictions_column(dummy):
    table = evaluation_predictions(pa.table(ROWS), COMPLETIONS, [""] * 3, dummy)
    assert table.column("reward_latitude_bonus").to_pylist() == pytest.approx(EXPECTED_BONUS)
    assert table.schema.names[-2:] == ["reward_latitude_bonus", "reward_combined"]


def test_a_weight_missing_from_the_config_is_named(dummy):
    with pytest.raises(ValueError, match=r"lacks \['reward.w_latitude_bonus'\]"):
        score_completions(COMPLETIONS, Truth.from_columns(ROWS), RewardConfig())


def test_the_shipped_table_is_what_every_consumer_reads():
    settings = {field.name for field in fields(RewardConfig)}
    weights = [c.weight for c in rewards.COMPONENTS if c.weight is not None]
    assert {"w_distance", "w_format", "w_chain", "w_region"} <= set(weights) <= settings
    board = RewardBoard(lambda completions, truth: {})
    names = [f.__name__ for f in board.reward_functions()[0]]
    assert names == ["combined", *(c.name for c in rewards.COMPONENTS if c.logged)]
    assert {"distance", "format", "chain", "region", "parse_failed", "acc_25km", "acc_200km", "acc_750km",
            "geoscore"} <= set(names)  # fmt: skip
    columns = [name for name in EVALUATION_SCHEMA.names if name.startswith("reward_")]
    assert columns == [f"reward_{c.name}" for c in rewards.COMPONENTS if c.column] + ["reward_combined"]
    assert columns[:4] == ["reward_distance", "reward_format", "reward_chain", "reward_region"]


def test_threshold_hits_and_geoscore_follow_the_metrics():
    truth = Truth.from_columns(ROWS)
    scores = score_completions(COMPLETIONS, truth, RewardConfig())
    parsed_lat, parsed_lon = [43.0, 45.0, np.nan], [142.0, 5.0, np.nan]
    metrics = compute_metrics(parsed_lat, parsed_lon, truth.lat, truth.lon)
    for km in (25, 200, 750):
        assert 100.0 * scores[f"acc_{km}km"].mean() == pytest.approx(metrics[f"acc_{km}km"])
    assert scores["geoscore"].mean() == pytest.approx(metrics["geoscore"])
    assert scores["geoscore"][2] == 0.0 and scores["acc_750km"].tolist() == [1.0, 1.0, 0.0]


def test_truth_from_rows_names_missing_columns():
    with pytest.raises(ValueError, match=r"lack column\(s\) \['state', 'city'\]"):
        Truth.from_columns({"lat": [0.0], "lon": [0.0], "country_code": ["FR"]})
