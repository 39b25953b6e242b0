"""A policy's sampled reward: the quantity GRPO optimises, measured on rows it did not train on (Ray-free).

``sampled_reward`` draws ``samples_per_row`` completions per row with GRPO's sampling settings
(``grpo.temperature``, ``grpo.top_p``, at most ``grpo.max_completion_length`` new tokens), draw
``d`` of the batch of rows starting at row ``start`` seeded with ``seed + start * samples_per_row
+ d`` (fixed seeds: the same numbers on every run), scores them with geor_core.scoring.rewards.score_completions and returns
the mean combined reward with its parts: format rate, parse-failure rate and the median error
in km of the completions that gave a point. Greedy decoding of the same policy is usually what a
user ships, so ``greedy_metrics`` gives the field's metrics beside it; ``completion_metrics``
turns any completions (greedy or sampled) into those metrics.

Rows are prepared rows (``geor prepare``): ``image``, ``lat``, ``lon``, ``country_code``,
``state``, ``city``. Photos are decoded down to ``model.max_pixels`` (geor_core.data.images). A photo
that cannot be loaded (missing, undecodable, over ``model.max_image_pixels``) is not scored; it is
counted in ``unreadable_rows`` beside the result, never dropped silently.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from geor_core.config import GeorConfig, RewardConfig
from geor_core.data.images import load_image
from geor_core.geo.parse import parse_many
from geor_core.scoring.metrics import compute_metrics
from geor_core.scoring.rewards import Truth, score_completions
from geor_core.training.generation import generate

SAMPLING_SEED = 1234
MEAN_COMPONENTS = ("combined", "format", "parse_failed")


@dataclass
class SampledReward:
    """Mean reward components of ``samples_per_row`` sampled completions per scored row."""

    rows: int  # rows scored (their photos loaded)
    unreadable_rows: int  # rows whose photo could not be loaded: not scored
    samples_per_row: int
    combined: float  # the GRPO objective: mean combined reward (0..1 with the paper's reward)
    format: float  # share of completions with exactly one in-range pair
    parse_failed: float  # share of completions without an in-range pair
    median_km: float | None  # over the completions that gave a point; None when none did
    completions: list[str] = field(repr=False)  # draw-major: every row's draw 0, then draw 1, ...

    def summary(self) -> dict[str, Any]:
        """The JSON-ready numbers (everything but the completions)."""
        return {
            "combined": self.combined,
            "format": self.format,
            "parse_failed": self.parse_failed,
            "median_km": self.median_km,
            "rows": self.rows,
            "unreadable_rows": self.unreadable_rows,
            "samples_per_row": self.samples_per_row,
        }


@contextmanager
def single_torch_thread() -> Iterator[None]:
    """Generation on one torch thread: on a loaded 2-core machine two OpenMP threads run 30x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def load_policy(model_uri: str, cfg: GeorConfig) -> tuple[Any, Any]:
    """(model, processor) at ``model_uri``, loaded the way ``cfg.model`` says."""
    from geor_core.training.model_loading import load_model, load_processor

    model_cfg = replace(cfg.model, name_or_path=model_uri)
    return load_model(model_cfg), load_processor(model_cfg)


def sampled_reward(
    model: Any,
    processor: Any,
    rows: pa.Table,
    cfg: GeorConfig,
    samples_per_row: int,
    *,
    reward: RewardConfig | None = None,
    seed: int = SAMPLING_SEED,
    batch_size: int | None = None,
) -> SampledReward:
    """Sample ``samples_per_row`` completions per row with GRPO's settings and score them with
    ``reward`` (default ``cfg.reward``); ``batch_size`` rows per generate call (None: all)."""
    if samples_per_row < 1:
        raise ValueError(f"samples_per_row must be >= 1, got {samples_per_row!r}")
    readable, images, unreadable = _readable(rows, cfg)
    if not images:
        raise ValueError(f"none of the {rows.num_rows} rows has a readable photo: no sampled reward")
    step = batch_size or len(images)
    completions: list[str] = []
    for draw in range(samples_per_row):
        for start in range(0, len(images), step):
            completions += generate(
                model, processor, images[start : start + step],
                max_new_tokens=cfg.grpo.max_completion_length, do_sample=True, temperature=cfg.grpo.temperature,
                top_p=cfg.grpo.top_p, seed=seed + start * samples_per_row + draw,
            )  # fmt: skip
    return score_sampled(completions, readable, unreadable, samples_per_row, reward or cfg.reward)


def score_sampled(
    completions: list[str], rows: pa.Table, unreadable: int, samples_per_row: int, reward: RewardConfig
) -> SampledReward:
    """Score draw-major ``completions`` (``samples_per_row`` per row of ``rows``, the rows whose photo
    loaded; ``unreadable`` more did not) with ``reward``."""
    truth = _repeated_truth(rows, samples_per_row)
    scores = score_completions(completions, truth, reward)
    means = {name: float(np.mean(scores[name])) for name in MEAN_COMPONENTS}
    located = scores["distance_km"][~np.isnan(scores["distance_km"])]
    return SampledReward(
        rows=rows.num_rows,
        unreadable_rows=unreadable,
        samples_per_row=samples_per_row,
        median_km=float(np.median(located)) if located.size else None,
        completions=completions,
        **means,
    )


def greedy_completions(
    model: Any, processor: Any, rows: pa.Table, cfg: GeorConfig, *, batch_size: int | None = None
) -> tuple[pa.Table, list[str], int]:
    """(the rows whose photo loads, their greedy completions of at most ``grpo.max_completion_length``
    tokens, how many rows did not load); ``batch_size`` rows per generate call (None: all)."""
    readable, images, unreadable = _readable(rows, cfg)
    step = batch_size or max(len(images), 1)
    completions: list[str] = []
    for start in range(0, len(images), step):
        completions += generate(
            model, processor, images[start : start + step], max_new_tokens=cfg.grpo.max_completion_length
        )
    return readable, completions, unreadable


def greedy_metrics(model: Any, processor: Any, rows: pa.Table, cfg: GeorConfig) -> dict[str, Any]:
    """The field's metrics of greedy completions (at most ``grpo.max_completion_length`` tokens)."""
    readable, completions, unreadable = greedy_completions(model, processor, rows, cfg)
    return {**completion_metrics(completions, readable), "unreadable_rows": unreadable}


def completion_metrics(completions: list[str], rows: pa.Table) -> dict[str, Any]:
    """The field's metrics of draw-major completions (one or more per row) against ``rows``."""
    if not rows.num_rows or len(completions) % rows.num_rows:
        raise ValueError(
            f"{len(completions)} completions are not a whole number of draws over {rows.num_rows} rows"
        )
    truth = _repeated_truth(rows, len(completions) // rows.num_rows)
    parsed = parse_many(completions)
    return compute_metrics(
        parsed.lat, parsed.lon, truth.lat, truth.lon, format_ok=parsed.format_ok,
        pred_country=parsed.country, pred_state=parsed.state, pred_city=parsed.city,
        truth_country_code=truth.country_code, truth_state=truth.state, truth_city=truth.city,
    )  # fmt: skip


def _repeated_truth(rows: pa.Table, copies: int) -> Truth:
    """The truth of ``copies`` draws over ``rows``, draw-major."""
    return Truth.from_columns(pa.concat_tables([rows] * copies) if copies else rows.slice(0, 0))


def _readable(rows: pa.Table, cfg: GeorConfig) -> tuple[pa.Table, list[Image.Image], int]:
    """(the rows whose photo loads, those photos decoded down to ``model.max_pixels``, how many did
    not load)."""
    if "image" not in rows.column_names:
        raise ValueError(f"the rows lack column 'image'; they have {rows.column_names}")
    kept, images = [], []
    for index, uri in enumerate(rows.column("image").to_pylist()):
        try:
            images.append(load_image(str(uri), cfg.model))
        except (OSError, ValueError):  # missing, undecodable or too large: counted by the caller's result
            continue
        kept.append(index)
    return rows.take(pa.array(kept, pa.int64())), images, rows.num_rows - len(kept)


def score_policy(
    model_uri: str,
    rows: pa.Table,
    cfg: GeorConfig,
    samples_per_row: int,
    *,
    reward: RewardConfig | None = None,
) -> tuple[dict[str, Any], SampledReward]:
    """(greedy metrics, sampled reward) of the model at ``model_uri`` on ``rows``, generated on one
    torch thread: how the GRPO learning test and benchmarks/grpo_vs_sft.py judge a policy."""
    model, processor = load_policy(model_uri, cfg)
    with single_torch_thread():
        greedy = greedy_metrics(model, processor, rows, cfg)
        sampled = sampled_reward(model, processor, rows, cfg, samples_per_row, reward=reward)
    return greedy, sampled
