"""Rewards for GRPO: every component of a completion's score, by name, batched with numpy.

We follow the paper (Geo-R, AAAI 2026), not the authors' public code:

- distance, piecewise linear in the Haversine error d (km, R = 6371.0088): ``1 - 0.5 d/750``
  for d <= 750; ``0.5 - 0.3 (d - 750)/1750`` for d <= 2500; ``0.2 - 0.2 (d - 2500)/17500``
  beyond, clipped at 0 (1 at 0 km, 0.5 at 750, 0.2 at 2500, 0 from 20000 on; continuous).
  Variant ``exp``: ``exp(-d / tau_km)``.
- format: 1 iff the answer holds exactly one in-range coordinate pair (geor_core.geo.parse).
- combination ``product``: distance x format (the paper).
The authors' public code differs from the paper in six ways (its parser, range check, breakpoint,
format regex, summed rewards and temperature; docs/design.md, "Rewards", lists each with what we
do). We implement the paper's formulas.

Ours, beyond the paper:
- chain: 1 iff the answer names Country, State, City and Coordinates, each once, in that order.
- region: partial credit ``w_country [country] + w_state [admin1] + w_city [settlement]``
  against the truth's gazetteer row. Source ``point``: the gazetteer's reading of the predicted
  coordinates (one KD-tree query per batch); source ``text``: the levels the answer names.
  The comparison is the metrics' (geor_core.scoring.metrics.level_matches): countries by ISO
  alpha-2 code (a named country goes through countries.country_code), state and city by
  countries.normalize_name. State and city earn credit only when the
  country matches too (so "Georgia" the US state never matches a Georgian truth row, and
  "Punjab" in Pakistan never matches Punjab in India). All region weights 0: region is 0 and no
  lookup is made.
- combination ``weighted_sum``: ``w_distance distance + w_format format + w_chain chain +
  w_region region`` (each weighted component of the table times its weight, in table order).

A completion without an in-range pair (parse failed) scores 0 on every component.

Every component is declared once, in ``COMPONENTS`` (a ``RewardComponent`` each: its name, how it
is computed from the parsed batch, the truth and the config, the config weight that puts it in
``combined`` under weighted_sum, whether GRPO logs it and whether predictions.parquet keeps it as
``reward_<name>``). ``score_completions`` computes the table in order, then ``combined``; GRPO's
reward functions (geor_core.training.grpo_setup) and the predictions table
(geor_core.scoring.predictions) read the table too, so a component added there is scored, logged
as ``rewards/<name>/mean|std`` and written without any other edit. The training-time threshold
hits (acc_25/200/750 km) and GeoScore are the metrics' own per-row rules
(geor_core.scoring.metrics). ``score_completions`` returns a dict of float64 arrays, one per
component (``reward_keys()``: distance_km is NaN where missing, parse_failed 1.0 there) - the
contract EasyR1 reward functions follow; TRL's advantage takes ``combined``. The truth travels as
one ``Truth`` record.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
from numpy.typing import ArrayLike

from geor_core.config import RewardConfig
from geor_core.geo import gazetteer
from geor_core.geo.geo import haversine_km
from geor_core.geo.parse import ParsedBatch, parse_many
from geor_core.scoring.metrics import THRESHOLDS_KM, level_matches, row_geoscore, within_km

BREAK_1_KM, BREAK_2_KM, ZERO_KM = 750.0, 2500.0, 20000.0
TRAINING_THRESHOLDS_KM = tuple(km for km in THRESHOLDS_KM if 25 <= km <= 750)  # logged per completion
TRUTH_COLUMNS = ("lat", "lon", "country_code", "state", "city")  # of prepared rows (`geor prepare`)
COMBINED = "combined"


class RewardSettings(Protocol):
    """What the reward needs from a config: geor_core.config.RewardConfig, or any object like it
    (plus the weight attribute of each weighted component of ``COMPONENTS``)."""

    mode: str
    distance_shape: str
    tau_km: float
    region_source: str
    w_country: float
    w_state: float
    w_city: float


def piecewise_distance_reward(distance_km: ArrayLike) -> np.ndarray:
    """The paper's reward: 1 at 0 km, 0.5 at 750, 0.2 at 2500, 0 from 20000 km; NaN in gives 0."""
    d = np.asarray(distance_km, dtype=np.float64)
    near = 1.0 - 0.5 * d / BREAK_1_KM
    middle = 0.5 - 0.3 * (d - BREAK_1_KM) / (BREAK_2_KM - BREAK_1_KM)
    far = 0.2 - 0.2 * (d - BREAK_2_KM) / (ZERO_KM - BREAK_2_KM)
    reward = np.where(d <= BREAK_1_KM, near, np.where(d <= BREAK_2_KM, middle, far))
    return np.where(np.isnan(d), 0.0, np.clip(reward, 0.0, 1.0))


def exp_distance_reward(distance_km: ArrayLike, tau_km: float) -> np.ndarray:
    """``exp(-d / tau_km)``; NaN in gives 0."""
    if not tau_km > 0:
        raise ValueError(f"tau_km must be > 0, got {tau_km!r}")
    d = np.asarray(distance_km, dtype=np.float64)
    return np.nan_to_num(np.exp(-d / tau_km), nan=0.0)


def distance_reward(distance_km: ArrayLike, shape: str, tau_km: float) -> np.ndarray:
    """The distance component for ``shape`` "piecewise" or "exp"."""
    if shape == "piecewise":
        return piecewise_distance_reward(distance_km)
    if shape == "exp":
        return exp_distance_reward(distance_km, tau_km)
    raise ValueError(f"reward.distance_shape must be 'piecewise' or 'exp', got {shape!r}")


def region_reward(
    country_match: np.ndarray, state_match: np.ndarray, city_match: np.ndarray, cfg: RewardSettings
) -> np.ndarray:
    """``w_country [country] + w_state [state] + w_city [city]``."""
    return cfg.w_country * country_match + cfg.w_state * state_match + cfg.w_city * city_match


@dataclass(frozen=True, eq=False)
class Truth:
    """The true place of each row: coordinates, and its gazetteer row (alpha-2 country code, admin1,
    city) where known - needed only by the region component. Stored as numpy arrays (float64,
    object); ``truth[a:b]`` is the record of rows a..b-1."""

    lat: np.ndarray
    lon: np.ndarray
    country_code: np.ndarray | None = None
    state: np.ndarray | None = None
    city: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name in ("lat", "lon"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float64).reshape(-1))
        for name in ("country_code", "state", "city"):
            values = getattr(self, name)
            if values is not None and not (isinstance(values, np.ndarray) and values.dtype == object):
                object.__setattr__(self, name, np.asarray(list(values), dtype=object))

    @classmethod
    def from_columns(cls, rows: pa.Table | Mapping[str, Sequence[Any]]) -> Truth:
        """From the columns lat, lon, country_code, state, city of prepared rows (a table, a dict of
        columns, or the batch TRL hands its reward functions); a ValueError names missing ones."""
        names = rows.column_names if isinstance(rows, pa.Table) else list(rows)
        missing = [name for name in TRUTH_COLUMNS if name not in names]
        if missing:
            raise ValueError(f"the rows lack column(s) {missing}; they have {names}")
        if isinstance(rows, pa.Table):
            return cls(*(rows.column(name).to_pylist() for name in TRUTH_COLUMNS))
        return cls(*(rows[name] for name in TRUTH_COLUMNS))

    def __getitem__(self, rows: slice) -> Truth:
        return Truth(*(None if v is None else v[rows] for v in (getattr(self, f.name) for f in fields(self))))

    def check(self, n: int, *, names: bool) -> None:
        """A ValueError naming what does not fit ``n`` completions: a length, an invalid coordinate,
        or (``names``: the region component is on) a missing country code, state or city."""
        if self.lat.size != n or self.lon.size != n:
            raise ValueError(
                f"got {n} completions but {self.lat.size} truth_lat and {self.lon.size} truth_lon values"
            )
        bad = ~((np.abs(self.lat) <= 90.0) & (np.abs(self.lon) <= 180.0))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            lat, lon = float(self.lat[i]), float(self.lon[i])
            raise ValueError(f"truth row {i} is not a valid coordinate: ({lat!r}, {lon!r})")
        for name in ("country_code", "state", "city"):
            values = getattr(self, name)
            if values is None and names:
                raise ValueError(
                    f"the region reward (reward.w_country/w_state/w_city not all 0) needs truth_{name}, "
                    f"one value per completion ({n}); got None"
                )
            if values is not None and len(values) != n:
                raise ValueError(f"got {n} completions but {len(values)} truth_{name} values")


@dataclass(frozen=True)
class ScoredBatch:
    """What a component reads: the parsed completions, their truth, which failed to parse, and the
    components computed before it (in table order)."""

    parsed: ParsedBatch
    truth: Truth
    failed: np.ndarray
    scores: dict[str, np.ndarray]


@dataclass(frozen=True)
class RewardComponent:
    """One named per-completion score (float64, one value per completion)."""

    name: str
    compute: Callable[[ScoredBatch, RewardSettings], np.ndarray]
    weight: str | None = None  # the config weight that adds it to ``combined`` under weighted_sum
    logged: bool = True  # a TRL reward function of weight 0: GRPO logs rewards/<name>/mean|std
    column: bool = True  # a ``reward_<name>`` column of predictions.parquet


def needs_truth_names(cfg: RewardSettings) -> bool:
    """Whether the region component compares names (some region weight is not 0)."""
    return bool(cfg.w_country or cfg.w_state or cfg.w_city)


def _region(batch: ScoredBatch, cfg: RewardSettings) -> np.ndarray:
    n = batch.failed.size
    region = np.zeros(n, dtype=np.float64)
    ok = np.flatnonzero(~batch.failed)
    if not needs_truth_names(cfg) or ok.size == 0:
        return region
    parsed = batch.parsed
    if cfg.region_source == "point":
        place = gazetteer.lookup(parsed.lat[ok], parsed.lon[ok])  # the table loads on first use
        predicted = place["country_code"], place["admin1"], place["city"]
    elif cfg.region_source == "text":
        predicted = tuple([names[i] for i in ok] for names in (parsed.country, parsed.state, parsed.city))
    else:
        raise ValueError(f"reward.region_source must be 'point' or 'text', got {cfg.region_source!r}")
    truth = batch.truth
    region[ok] = region_reward(
        *level_matches(*predicted, truth.country_code[ok], truth.state[ok], truth.city[ok]), cfg
    )
    return region


def _hits_within(km: int) -> Callable[[ScoredBatch, RewardSettings], np.ndarray]:
    return lambda batch, cfg: within_km(batch.scores["distance_km"], km).astype(np.float64)


COMPONENTS: tuple[RewardComponent, ...] = (
    RewardComponent(
        "distance_km",
        lambda b, cfg: haversine_km(b.parsed.lat, b.parsed.lon, b.truth.lat, b.truth.lon),
        logged=False,  # NaN where missing; predictions.parquet has it as error_km
        column=False,
    ),
    RewardComponent(
        "distance",
        lambda b, cfg: distance_reward(b.scores["distance_km"], cfg.distance_shape, cfg.tau_km),
        weight="w_distance",
    ),
    RewardComponent("format", lambda b, cfg: b.parsed.format_ok.astype(np.float64), weight="w_format"),
    RewardComponent(
        "chain", lambda b, cfg: (b.parsed.chain_ok & ~b.failed).astype(np.float64), weight="w_chain"
    ),
    RewardComponent("region", _region, weight="w_region"),
    RewardComponent("parse_failed", lambda b, cfg: b.failed.astype(np.float64), column=False),
    *(RewardComponent(f"acc_{km}km", _hits_within(km), column=False) for km in TRAINING_THRESHOLDS_KM),
    RewardComponent("geoscore", lambda b, cfg: row_geoscore(b.scores["distance_km"]), column=False),
)


def reward_keys() -> tuple[str, ...]:
    """The names ``score_completions`` returns, in order: the table's components, then combined."""
    return (*(c.name for c in COMPONENTS), COMBINED)


def score_completions(
    completions: Sequence[object], truth: Truth, cfg: RewardSettings | None = None
) -> dict[str, np.ndarray]:
    """Score a batch of completions (str or TRL conversational) against their truth rows.

    Returns float64 arrays by name (``reward_keys()``). ``combined`` is distance x format (mode
    product) or the weighted sum of the weighted components (weighted_sum), 0 where parsing
    failed. The truth's country code, state and city are needed only when a region weight is not
    0. ``cfg`` defaults to geor_core.config.RewardConfig().
    """
    cfg = cfg if cfg is not None else RewardConfig()
    if cfg.mode not in ("product", "weighted_sum"):
        raise ValueError(f"reward.mode must be 'product' or 'weighted_sum', got {cfg.mode!r}")
    weighted = [c for c in COMPONENTS if c.weight is not None]
    lacking = [f"reward.{c.weight}" for c in weighted if not hasattr(cfg, c.weight)]
    if lacking:
        raise ValueError(f"the reward config lacks {lacking}, the weight(s) of reward components")
    truth.check(len(completions), names=needs_truth_names(cfg))
    parsed = parse_many(completions)
    batch = ScoredBatch(parsed, truth, parsed.missing, {})
    for component in COMPONENTS:
        batch.scores[component.name] = component.compute(batch, cfg)
    scores = batch.scores
    if cfg.mode == "product":
        combined = scores["distance"] * scores["format"]
    else:
        combined = functools.reduce(operator.add, [getattr(cfg, c.weight) * scores[c.name] for c in weighted])
    scores[COMBINED] = np.where(batch.failed, 0.0, combined)
    return scores
