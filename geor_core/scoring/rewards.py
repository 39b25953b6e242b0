"""Rewards for GRPO: every component of a completion's score, by name, batched with numpy.

We follow the paper (Geo-R, AAAI 2026), not the authors' public code:

- distance, piecewise linear in the Haversine error d (km, R = 6371.0088): ``1 - 0.5 d/750``
  for d <= 750; ``0.5 - 0.3 (d - 750)/1750`` for d <= 2500; ``0.2 - 0.2 (d - 2500)/17500``
  beyond, clipped at 0 (1 at 0 km, 0.5 at 750, 0.2 at 2500, 0 from 20000 on; continuous).
  Variant ``exp``: ``exp(-d / tau_km)``.
- format: 1 iff the answer holds exactly one in-range coordinate pair (geor_core.geo.parse).
- combination ``product``: distance x format (the paper).
The authors' public code differs: its piecewise breakpoint is 3000 km instead of 2500, its format
check is a regex left over from a bounding-box answer format, and it sums the rewards instead of
multiplying them. We implement the paper's formulas.

Ours, beyond the paper:
- chain: 1 iff the answer names Country, State, City and Coordinates, each once, in that order.
- region: partial credit ``w_country [country] + w_state [admin1] + w_city [settlement]``
  against the truth's gazetteer row. Source ``point``: the gazetteer's reading of the predicted
  coordinates (one KD-tree query per batch); source ``text``: the levels the answer names.
  Countries compare by ISO alpha-2 code (a named country goes through countries.country_code);
  state and city compare by countries.normalize_name. State and city earn credit only when the
  country matches too (so "Georgia" the US state never matches a Georgian truth row, and
  "Punjab" in Pakistan never matches Punjab in India). All region weights 0: region is 0 and no
  lookup is made.
- combination ``weighted_sum``: ``w_distance distance + w_format format + w_chain chain +
  w_region region``.

A completion without an in-range pair (parse failed) scores 0 on every component.
``score_completions`` returns float64 arrays: distance_km (NaN where missing), distance, format,
chain, region, combined and parse_failed (1.0 where missing) - a dict of named sub-scores, the
contract EasyR1 reward functions follow; TRL reward functions take ``combined``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from numpy.typing import ArrayLike

from geor_core.config import RewardConfig
from geor_core.geo import gazetteer
from geor_core.geo.countries import country_code, normalize_name
from geor_core.geo.geo import haversine_km
from geor_core.geo.parse import ParsedBatch, parse_many

BREAK_1_KM, BREAK_2_KM, ZERO_KM = 750.0, 2500.0, 20000.0
REWARD_KEYS = ("distance_km", "distance", "format", "chain", "region", "combined", "parse_failed")


class RewardSettings(Protocol):
    """What the reward needs from a config: geor_core.config.RewardConfig, or any object like it."""

    mode: str
    distance_shape: str
    tau_km: float
    w_distance: float
    w_format: float
    w_chain: float
    w_region: float
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
    return np.nan_to_num(np.clip(reward, 0.0, 1.0), nan=0.0)


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


@functools.lru_cache(maxsize=65536)
def _cached_country_code(name: str) -> str | None:
    return country_code(name)


def _codes(names: Sequence[object]) -> np.ndarray:
    """Country names (or codes) -> alpha-2 codes, "" where unknown or missing."""
    return np.array(
        [(_cached_country_code(v) or "") if isinstance(v, str) else "" for v in names], dtype=object
    )


# Sized for every settlement name of the gazetteer (about 140k) plus the model's own spellings.
_name_key = functools.lru_cache(maxsize=1 << 18)(normalize_name)


def _keys(names: Sequence[object]) -> np.ndarray:
    """Place names -> normalised comparison keys, "" where missing."""
    return np.array([_name_key(v) if isinstance(v, str) else "" for v in names], dtype=object)


def level_matches(
    pred_country: Sequence[object],
    pred_state: Sequence[object],
    pred_city: Sequence[object],
    truth_country_code: Sequence[object],
    truth_state: Sequence[object],
    truth_city: Sequence[object],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(country, state, city) match masks; state and city need the country to match as well.

    Predicted countries may be names or codes; truth countries are alpha-2 codes (names work
    too). A missing or empty name on either side never matches.
    """
    pred_cc, truth_cc = _codes(pred_country), _codes(truth_country_code)
    country = (pred_cc == truth_cc) & (truth_cc != "")
    truth_state_key, truth_city_key = _keys(truth_state), _keys(truth_city)
    state = country & (_keys(pred_state) == truth_state_key) & (truth_state_key != "")
    city = country & (_keys(pred_city) == truth_city_key) & (truth_city_key != "")
    return country.astype(bool), state.astype(bool), city.astype(bool)


def region_reward(
    country_match: np.ndarray, state_match: np.ndarray, city_match: np.ndarray, cfg: RewardSettings
) -> np.ndarray:
    """``w_country [country] + w_state [state] + w_city [city]``."""
    return cfg.w_country * country_match + cfg.w_state * state_match + cfg.w_city * city_match


def score_completions(
    completions: Sequence[object],
    truth_lat: ArrayLike,
    truth_lon: ArrayLike,
    truth_country_code: Sequence[object] | None = None,
    truth_state: Sequence[object] | None = None,
    truth_city: Sequence[object] | None = None,
    cfg: RewardSettings | None = None,
) -> dict[str, np.ndarray]:
    """Score a batch of completions (str or TRL conversational) against their truth rows.

    Returns float64 arrays by name (see REWARD_KEYS). The truth's country code, state and city
    (its gazetteer row) are needed only when a region weight is non-zero. ``cfg`` defaults to
    geor_core.config.RewardConfig().
    """
    cfg = cfg if cfg is not None else RewardConfig()
    if cfg.mode not in ("product", "weighted_sum"):
        raise ValueError(f"reward.mode must be 'product' or 'weighted_sum', got {cfg.mode!r}")
    n = len(completions)
    lat_true, lon_true = truth_coordinates(truth_lat, truth_lon, n)
    parsed = parse_many(completions)
    failed = parsed.missing
    distance_km = haversine_km(parsed.lat, parsed.lon, lat_true, lon_true)
    distance = distance_reward(distance_km, cfg.distance_shape, cfg.tau_km)
    format_score = parsed.format_ok.astype(np.float64)
    chain = (parsed.chain_ok & ~failed).astype(np.float64)
    region = _region_scores(parsed, failed, truth_country_code, truth_state, truth_city, n, cfg)
    if cfg.mode == "product":
        combined = distance * format_score
    else:
        combined = (
            cfg.w_distance * distance
            + cfg.w_format * format_score
            + cfg.w_chain * chain
            + cfg.w_region * region
        )
    return {
        "distance_km": distance_km,
        "distance": distance,
        "format": format_score,
        "chain": chain,
        "region": region,
        "combined": np.where(failed, 0.0, combined),
        "parse_failed": failed.astype(np.float64),
    }


def truth_coordinates(truth_lat: ArrayLike, truth_lon: ArrayLike, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Truth coordinates as float64 arrays of length ``n``; a ValueError names a bad row."""
    lat = np.asarray(truth_lat, dtype=np.float64).reshape(-1)
    lon = np.asarray(truth_lon, dtype=np.float64).reshape(-1)
    if lat.size != n or lon.size != n:
        raise ValueError(f"got {n} completions but {lat.size} truth_lat and {lon.size} truth_lon values")
    bad = ~((np.abs(lat) <= 90.0) & (np.abs(lon) <= 180.0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"truth row {i} is not a valid coordinate: ({float(lat[i])!r}, {float(lon[i])!r})")
    return lat, lon


def _region_scores(
    parsed: ParsedBatch,
    failed: np.ndarray,
    truth_country_code: Sequence[object] | None,
    truth_state: Sequence[object] | None,
    truth_city: Sequence[object] | None,
    n: int,
    cfg: RewardSettings,
) -> np.ndarray:
    region = np.zeros(n, dtype=np.float64)
    if not (cfg.w_country or cfg.w_state or cfg.w_city):
        return region
    truth = {"truth_country_code": truth_country_code, "truth_state": truth_state, "truth_city": truth_city}
    for name, values in truth.items():
        if values is None or len(values) != n:
            got = "None" if values is None else f"{len(values)} values"
            raise ValueError(f"the region reward needs {name} with one value per completion ({n}), got {got}")
    truth_arrays = [np.asarray(list(values), dtype=object) for values in truth.values()]
    ok = np.flatnonzero(~failed)
    if ok.size == 0:
        return region
    if cfg.region_source == "point":
        place = gazetteer.lookup(parsed.lat[ok], parsed.lon[ok])  # the table loads on first use
        predicted = place["country_code"], place["admin1"], place["city"]
    elif cfg.region_source == "text":
        predicted = tuple([names[i] for i in ok] for names in (parsed.country, parsed.state, parsed.city))
    else:
        raise ValueError(f"reward.region_source must be 'point' or 'text', got {cfg.region_source!r}")
    truth_rows = [values[ok] for values in truth_arrays]
    region[ok] = region_reward(*level_matches(*predicted, *truth_rows), cfg)
    return region
