"""geor_core.training.sampled_reward: GRPO's objective measured on rows (unit, with a scripted generator),
and on the session's models: the shared SFT checkpoint's sampled reward clearly beats the
untrained tiny model's.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from geor_core.config import RewardConfig, load_config
from geor_core.data.dataset import read_prepared
from geor_core.geo import gazetteer
from geor_core.training import sampled_reward as module
from geor_core.training.grpo_setup import GRPO_COLUMNS
from geor_core.training.sampled_reward import (
    completion_metrics,
    greedy_completions,
    greedy_metrics,
    load_policy,
    sampled_reward,
    single_torch_thread,
)

POINTS = [(48.8534, 2.3488), (35.6895, 139.69171), (6.45407, 3.39467)]  # Paris, Tokyo, Lagos
REAL_ROWS = 16  # held-out test rows for the real-model comparison
REAL_SAMPLES = 2
MIN_SFT_GAIN = 0.3  # mean combined reward (0..1): SFT minus untrained


def answer(lat: float, lon: float) -> str:
    return f"<answer>Country: X; State: Y; City: Z; Coordinates: ({lat}, {lon})</answer>"


@pytest.fixture
def rows(tmp_path) -> pa.Table:
    """Three truth rows whose photos encode the row number in their width."""
    images = []
    for index in range(len(POINTS)):
        path = tmp_path / f"{index}.png"
        Image.new("RGB", (10 + index, 8)).save(path)
        images.append(str(path))
    lat, lon = np.array([p[0] for p in POINTS]), np.array([p[1] for p in POINTS])
    place = gazetteer.lookup(lat, lon)
    return pa.table(
        {
            "id": ["p", "t", "l"],
            "image": images,
            "lat": lat,
            "lon": lon,
            "country_code": place["country_code"].tolist(),
            "state": place["admin1"].tolist(),
            "city": place["city"].tolist(),
        }
    )


@pytest.fixture
def scripted(monkeypatch) -> list[dict]:
    """Replace generation: an even seed answers each row exactly, an odd seed answers nonsense."""
    calls: list[dict] = []

    def fake_generate(
        model, processor, images, *, max_new_tokens, do_sample=False, temperature=1.0, top_p=1.0, seed=0
    ):
        calls.append(
            {
                "rows": [image.width - 10 for image in images],
                "seed": seed,
                "do_sample": do_sample,
                "temperature": temperature,
                "top_p": top_p,
                "max_new_tokens": max_new_tokens,
            }
        )
        if seed % 2:
            return ["no idea"] * len(images)
        return [answer(*POINTS[image.width - 10]) for image in images]

    monkeypatch.setattr(module, "generate", fake_generate)
    return calls


def test_sampled_reward_scores_every_draw_with_grpo_sampling_settings(rows, scripted):
    cfg = load_config("test", ["grpo.temperature=0.7", "grpo.top_p=0.95", "grpo.max_completion_length=64"])
    result = sampled_reward(None, None, rows, cfg, 2, seed=10)
    # draw 0 (seed 10) exact on every row, draw 1 (seed 11) unparseable: half the completions
    assert (result.combined, result.format, result.parse_failed) == (0.5, 0.5, 0.5)
    assert result.median_km == 0.0 and result.rows == 3 and result.unreadable_rows == 0
    assert (
        result.completions[:3] == [answer(*p) for p in POINTS] and result.completions[3:] == ["no idea"] * 3
    )
    assert [c["seed"] for c in scripted] == [10, 11]
    assert all(c["do_sample"] and c["temperature"] == 0.7 and c["top_p"] == 0.95 for c in scripted)
    assert all(c["max_new_tokens"] == 64 for c in scripted)


def test_batches_get_distinct_seeds_and_the_reward_config_can_be_given(rows, scripted):
    cfg = load_config("test")
    weighted = RewardConfig(mode="weighted_sum", w_distance=0.5, w_format=0.0, w_region=0.0)
    result = sampled_reward(None, None, rows, cfg, 3, seed=0, batch_size=2, reward=weighted)
    assert [c["rows"] for c in scripted] == [[0, 1], [2]] * 3
    seeds = [c["seed"] for c in scripted]
    assert seeds == [0, 6, 1, 7, 2, 8] and len(set(seeds)) == len(seeds)
    # exact answers at the even seeds: rows 0-1 at seeds 0 and 2, row 2 at 6 and 8; each earns 0.5
    assert result.combined == pytest.approx(0.5 * 6 / 9)
    assert result.summary()["samples_per_row"] == 3 and "completions" not in result.summary()


def test_unreadable_photos_are_counted_not_scored(rows, scripted):
    broken = rows.set_column(
        1, "image", pa.array([rows["image"][0].as_py(), "/nowhere/x.png", rows["image"][2].as_py()])
    )
    result = sampled_reward(None, None, broken, load_config("test"), 1, seed=0)
    assert (result.rows, result.unreadable_rows, result.combined) == (2, 1, 1.0)
    greedy = greedy_metrics(None, None, broken, load_config("test"))
    assert greedy["n"] == 2 and greedy["unreadable_rows"] == 1 and greedy["acc_1km"] == 100.0
    with pytest.raises(ValueError, match="samples_per_row must be >= 1, got 0"):
        sampled_reward(None, None, rows, load_config("test"), 0)
    with pytest.raises(ValueError, match="none of the 1 rows has a readable photo"):
        sampled_reward(None, None, broken.slice(1, 1), load_config("test"), 1)


def test_greedy_completions_come_in_batches_in_row_order(rows, scripted):
    cfg = load_config("test", ["grpo.max_completion_length=32"])
    scored, completions, unreadable = greedy_completions(None, None, rows, cfg, batch_size=2)
    assert [c["rows"] for c in scripted] == [[0, 1], [2]] and not any(c["do_sample"] for c in scripted)
    assert completions == [answer(*p) for p in POINTS] and unreadable == 0 and scored.num_rows == 3
    assert all(c["max_new_tokens"] == 32 for c in scripted)


def test_completion_metrics_repeat_the_truth_per_draw(rows):
    metrics = completion_metrics([answer(*p) for p in POINTS] + ["nothing"] * 3, rows)
    assert metrics["n"] == 6 and metrics["n_missing"] == 3 and metrics["acc_1km"] == 50.0
    with pytest.raises(ValueError, match="4 completions are not a whole number of draws over 3 rows"):
        completion_metrics(["x"] * 4, rows)
    with pytest.raises(ValueError, match="lack column"):
        completion_metrics(["x"] * 3, rows.drop_columns(["state"]))


def test_sft_model_earns_clearly_more_sampled_reward_than_the_untrained_one(
    sft_checkpoint, tiny_model_dir, prepared_world
):
    cfg = load_config("test", ["grpo.max_completion_length=96"])
    held_out = read_prepared(prepared_world, "test", GRPO_COLUMNS).slice(0, REAL_ROWS)
    scores = {}
    with single_torch_thread():
        for name, uri in (("untrained", str(tiny_model_dir)), ("sft", sft_checkpoint.export_uri)):
            model, processor = load_policy(uri, cfg)
            scores[name] = sampled_reward(model, processor, held_out, cfg, REAL_SAMPLES)
    print({name: result.summary() for name, result in scores.items()})
    assert scores["sft"].rows == REAL_ROWS and len(scores["sft"].completions) == REAL_ROWS * REAL_SAMPLES
    assert scores["sft"].combined >= scores["untrained"].combined + MIN_SFT_GAIN, scores
    assert scores["sft"].format > scores["untrained"].format
