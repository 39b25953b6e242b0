"""Benchmark reward scoring on one core: parse + distance + format (+ chain), and with the region term.

    python benchmarks/rewards.py [--n 1000000] [--batch-size 1024] [--group-size 4] [--seed 0]

Builds N completions with a realistic mix (truth: real MP-16 photo coordinates labelled by the
gazetteer, G completions per truth row as in GRPO): 70% valid
Chain-of-Region answers near the truth (within about 0-3000 km), 8% with two coordinate pairs, 2%
with an out-of-range pair, 10% garbage without any pair, 5% an answer without tags, 5% cut off
inside the answer. Then scores them in batches of ``--batch-size`` with
geor_core.rewards.score_completions, the process pinned to one CPU. Prints one JSON object with,
per configuration, the completions scored per second by wall clock and by process CPU time
(``*_per_s`` / ``*_cpu_per_s``; CPU time is the fairer figure on a shared machine):

- ``parse``: geor_core.parse.parse_many alone;
- ``no_region``: parse + distance + format + chain (region weights 0: no region work);
- ``text_region``: the same plus region from the names in the answer (normalised names cached);
- ``point_region``: the same plus region from a gazetteer lookup of the predicted point (one
  KD-tree query per batch; the gazetteer is loaded before timing).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from geor_core import gazetteer
from geor_core.config import RewardConfig
from geor_core.countries import country_name
from geor_core.parse import parse_many
from geor_core.rewards import score_completions

MP16 = Path(__file__).resolve().parents[1] / "data" / "mp16_coords_100k.csv"
THINK = [
    "The scene points to {country}. Within {country}, {state}. The nearest town is {city}.",
    "Vegetation and signage suggest {country}; the landscape fits {state}, near {city}.",
    "Architecture typical of {country}, region {state}. Closest settlement: {city}.",
]


def build_batch(n: int, group_size: int, seed: int) -> tuple[list[str], dict[str, np.ndarray]]:
    """N completions and their truth rows (lat, lon, country code, admin1, city).

    Truth: MP-16 photo coordinates (data/mp16_coords_100k.csv) labelled by the gazetteer, each
    row repeated ``group_size`` times in a row, as GRPO scores G completions per prompt.
    """
    rng = np.random.default_rng(seed)
    pick = random.Random(seed)
    photos = pd.read_csv(MP16)
    rows = photos.iloc[rng.integers(0, len(photos), -(-n // group_size))]
    lat = np.repeat(rows["LAT"].to_numpy(), group_size)[:n]
    lon = np.repeat(rows["LON"].to_numpy(), group_size)[:n]
    place = gazetteer.lookup(lat, lon)
    truth = {
        "lat": lat,
        "lon": lon,
        "country_code": place["country_code"],
        "state": place["admin1"],
        "city": place["city"],
    }
    names = {code: country_name(code) for code in np.unique(truth["country_code"])}
    error_deg = rng.exponential(3.0, n) * rng.choice([-1.0, 1.0], n)
    pred_lat = np.clip(truth["lat"] + error_deg * rng.random(n), -90, 90)
    pred_lon = (truth["lon"] + error_deg + 180.0) % 360.0 - 180.0
    kind = rng.random(n)
    completions = []
    for i in range(n):
        country, state, city = names[truth["country_code"][i]], truth["state"][i], truth["city"][i]
        think = pick.choice(THINK).format(country=country, state=state, city=city)
        pair = f"({pred_lat[i]:.6f}, {pred_lon[i]:.6f})"
        answer = f"Country: {country}; State: {state}; City: {city}; Coordinates: {pair}"
        k = kind[i]
        if k < 0.70:
            text = f"<think>{think}</think>\n<answer>{answer}</answer>"
        elif k < 0.78:
            text = f"<think>{think}</think>\n<answer>{answer} or maybe ({pred_lat[i] / 2:.4f}, {pred_lon[i] / 2:.4f})</answer>"
        elif k < 0.80:
            text = f"<think>{think}</think>\n<answer>Country: {country}; Coordinates: (123.4, {pred_lon[i]:.3f})</answer>"
        elif k < 0.90:
            text = f"<think>{think} I am not sure at all.</think> It is hard to say where this is."
        elif k < 0.95:
            text = f"{think} {answer}"
        else:
            text = f"<think>{think}</think>\n<answer>Country: {country}; State: {state}; Ci"
        completions.append(text)
    return completions, truth


def per_second(n: int, work: Callable[[], None]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return n / (time.perf_counter() - wall), n / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--group-size", type=int, default=4, help="completions per truth row (GRPO's G)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    completions, truth = build_batch(args.n, args.group_size, args.seed)  # loads the gazetteer too
    batches = [slice(start, start + args.batch_size) for start in range(0, args.n, args.batch_size)]
    base = RewardConfig(mode="weighted_sum", w_chain=0.1)
    configs = {
        "no_region": replace(base, w_country=0.0, w_state=0.0, w_city=0.0),
        "text_region": replace(base, region_source="text"),
        "point_region": replace(base, region_source="point"),
    }
    result: dict[str, object] = {
        "n": args.n,
        "batch_size": args.batch_size,
        "group_size": args.group_size,
        "cores": 1,
    }

    def parse_all() -> None:
        for batch in batches:
            parse_many(completions[batch])

    result["parse_per_s"], result["parse_cpu_per_s"] = per_second(args.n, parse_all)
    for name, cfg in configs.items():

        def score_all(cfg: RewardConfig = cfg) -> None:
            for batch in batches:
                score_completions(
                    completions[batch],
                    truth["lat"][batch],
                    truth["lon"][batch],
                    truth["country_code"][batch],
                    truth["state"][batch],
                    truth["city"][batch],
                    cfg,
                )

        result[f"{name}_per_s"], result[f"{name}_cpu_per_s"] = per_second(args.n, score_all)
    sample = score_completions(
        completions[:10_000], truth["lat"][:10_000], truth["lon"][:10_000], truth["country_code"][:10_000],
        truth["state"][:10_000], truth["city"][:10_000], configs["text_region"],
    )  # fmt: skip
    result["mix"] = {
        "parse_failed": float(sample["parse_failed"].mean()),
        "format": float(sample["format"].mean()),
        "chain": float(sample["chain"].mean()),
        "mean_text_region": float(sample["region"].mean()),
    }
    print(json.dumps({k: round(v) if isinstance(v, float) else v for k, v in result.items()}, indent=2))


if __name__ == "__main__":
    main()
