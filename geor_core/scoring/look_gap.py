"""What RL can win on an ambiguous look: the reward's optimum against greedy imitation (Ray-free).

A photo whose look is shared by several countries has a posterior over places (the world's draw
rule: geor_core.data.world_looks.look_posterior). Two answers to it:

- **the reward's optimum**: the point with the highest expected distance reward under that
  posterior, found on a 0.5-degree grid over the posterior's box (plus every settlement), then a
  0.05-degree grid around the best;
- **greedy imitation**: what greedy decoding of a model that learned the targets exactly answers.
  Decoding goes character by character through the answers (``Country: ..; State: ..; City: ..;
  Coordinates: (..)``), each time taking the character with the most probability mass; the names
  come before the coordinates, so the country is the one with the most mass. This is exact for a
  character-level model, an approximation for a tokenizer's pieces.

``look_gap`` returns both points, their expected rewards and the gap: the most any policy can
gain over imitation on such photos (sampling from the posterior, what SFT does at temperature 1,
is reported beside them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from geor_core.geo.geo import haversine_km
from geor_core.scoring.rewards import piecewise_distance_reward

COARSE_DEG, FINE_DEG = 0.5, 0.05
Reward = Callable[[np.ndarray], np.ndarray]  # distance in km -> reward


def expected_rewards(
    lat: np.ndarray,
    lon: np.ndarray,
    truth_lat: np.ndarray,
    truth_lon: np.ndarray,
    prob: np.ndarray,
    reward: Reward,
) -> np.ndarray:
    """Expected reward of answering each point (lat[i], lon[i]) when the truth is drawn with ``prob``."""
    out = np.empty(len(lat))
    for start in range(0, len(lat), 2048):  # bounded memory: 2048 points x every truth at a time
        d = haversine_km(
            lat[start : start + 2048, None], lon[start : start + 2048, None], truth_lat, truth_lon
        )
        out[start : start + 2048] = reward(d) @ prob
    return out


def reward_optimum(
    truth_lat: np.ndarray, truth_lon: np.ndarray, prob: np.ndarray, reward: Reward
) -> tuple[float, float, float]:
    """(lat, lon, expected reward) of the best answer found by the coarse-then-fine grid search."""

    def grid(
        lat_lo: float, lat_hi: float, lon_lo: float, lon_hi: float, step: float
    ) -> tuple[np.ndarray, np.ndarray]:
        la, lo = np.meshgrid(
            np.arange(lat_lo, lat_hi + step / 2, step), np.arange(lon_lo, lon_hi + step / 2, step)
        )
        return np.clip(la.ravel(), -90, 90), ((lo.ravel() + 180) % 360) - 180

    lat, lon = grid(
        truth_lat.min() - 2, truth_lat.max() + 2, truth_lon.min() - 2, truth_lon.max() + 2, COARSE_DEG
    )
    lat, lon = np.concatenate([lat, truth_lat]), np.concatenate([lon, truth_lon])
    values = expected_rewards(lat, lon, truth_lat, truth_lon, prob, reward)
    best = int(values.argmax())
    lat, lon = grid(
        lat[best] - COARSE_DEG,
        lat[best] + COARSE_DEG,
        lon[best] - COARSE_DEG,
        lon[best] + COARSE_DEG,
        FINE_DEG,
    )
    fine = expected_rewards(lat, lon, truth_lat, truth_lon, prob, reward)
    best = int(fine.argmax())
    return float(lat[best]), float(lon[best]), float(fine[best])


def greedy_choice(answers: Sequence[str], prob: np.ndarray) -> int:
    """Index of the answer that character-by-character greedy decoding of the distribution produces."""
    alive = np.arange(len(answers))
    position = 0
    while len(alive) > 1:
        ended = [i for i in alive if len(answers[i]) <= position]
        if len(ended) == len(alive):
            break
        mass: dict[str, float] = {}
        for i in alive:
            if len(answers[i]) > position:
                mass[answers[i][position]] = mass.get(answers[i][position], 0.0) + float(prob[i])
        end_mass = float(prob[ended].sum()) if ended else 0.0
        char = min(mass, key=lambda c: (-mass[c], c))  # ties: the smallest character, deterministic
        if end_mass > mass[char]:
            alive = np.array(ended)
            break
        alive = np.array([i for i in alive if len(answers[i]) > position and answers[i][position] == char])
        position += 1
    return int(alive[0])


def look_gap(
    truth_lat: Sequence[float],
    truth_lon: Sequence[float],
    prob: Sequence[float],
    answers: Sequence[str],
    reward: Reward = piecewise_distance_reward,
) -> dict[str, Any]:
    """The optimum, the greedy answer, posterior sampling, and the gap, for one look's posterior."""
    lat, lon = np.asarray(truth_lat, float), np.asarray(truth_lon, float)
    p = np.asarray(prob, float) / np.sum(prob)
    opt_lat, opt_lon, optimum = reward_optimum(lat, lon, p, reward)
    g = greedy_choice(list(answers), p)
    greedy = float(expected_rewards(lat[g : g + 1], lon[g : g + 1], lat, lon, p, reward)[0])
    sampled = float(p @ expected_rewards(lat, lon, lat, lon, p, reward))
    return {
        "optimum": {"lat": round(opt_lat, 3), "lon": round(opt_lon, 3), "reward": round(optimum, 4)},
        "greedy": {"index": g, "answer": answers[g], "reward": round(greedy, 4)},
        "sampled_reward": round(sampled, 4),
        "gap": round(optimum - greedy, 4),
    }
