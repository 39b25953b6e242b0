"""Benchmark reward scoring: on one core in process, and through the GRPO reward actor pool on Ray.

    python benchmarks/rewards.py [--n 1000000] [--batch-size 1024] [--group-size 4] [--seed 0]
                                 [--repeats 3] [--section all|single_core|ray_pool]
                                 [--ray-completions 65536] [--grpo-step-s 0.5]

Builds N completions with a realistic mix (truth: real MP-16 photo coordinates labelled by the
gazetteer, G completions per truth row as in GRPO): 70% valid
Chain-of-Region answers near the truth (within about 0-3000 km), 8% with two coordinate pairs, 2%
with an out-of-range pair, 10% garbage without any pair, 5% an answer without tags, 5% cut off
inside the answer. Then scores them in batches of ``--batch-size`` with
geor_core.scoring.rewards.score_completions, the process pinned to one CPU. Prints one JSON object; its
section ``single_core`` has, per configuration, the completions scored per second by wall clock and by process CPU time
(``*_per_s`` / ``*_cpu_per_s``; CPU time is the fairer figure on a shared machine), the median
of ``--repeats`` runs of each configuration in an order rotated every repeat, with [min, max] and
the load average beside:

- ``parse``: geor_core.geo.parse.parse_many alone;
- ``no_region``: parse + distance + format + chain (region weights 0: no region work);
- ``text_region``: the same plus region from the names in the answer (normalised names cached);
- ``point_region``: the same plus region from a gazetteer lookup of the predicted point (one
  KD-tree query per batch; the gazetteer is loaded before timing).

Section ``ray_pool`` (tasks/reward_actors.py) starts a local 2-CPU Ray cluster (loopback
only, no dashboard), with the process's CPU pinning undone, and sends the same kind of mix, as
TRL's conversational completions, through ``RewardActorPool.score`` with the default reward
config (the paper's product; the text region is computed too): pools of 1 and 2 actors at 0.25
and 0.5 CPU, batches of 16, 64 (a GRPO step of the tiny preset scores 16-64 completions) and
1024. Each pool is started, measured and closed ``--repeats`` times, the pools in an order rotated
every repeat; per pool: the median and [min, max] of its start seconds and, per batch size, of
completions per second by wall clock over back-to-back calls and the per-call p95 latency in ms;
``in_process`` is score_completions on the same batches in the driver (once), for the Ray
overhead. ``reward_wait_share`` is the median 64-completion p95 latency over
``--grpo-step-s`` (default 0.5 s, a tiny-preset GRPO step): the target is < 2% of step time
(docs/design.md). Ray's ``num_cpus`` is a reservation, not a cap: 0.25 and 0.5 differ only in
how many actors fit. The machine's load average is printed beside, since other jobs share it.

The script exits 1 when outputs differ: a single-core configuration whose output digest changes
between repeats, or a pool whose scores of a 1,024-completion batch are not exactly the
in-process ones in every repeat (``same_scores_as_in_process``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geor_core.config import RewardConfig
from geor_core.geo import gazetteer
from geor_core.geo.countries import country_name
from geor_core.geo.parse import parse_many
from geor_core.scoring.rewards import Truth, score_completions

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.repeats import Runs, median_and_spread  # noqa: E402

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


def per_second(n: int, work: Callable[[], float]) -> tuple[float, float, float]:
    """(completions per wall second, per CPU second, the digest ``work`` returns)."""
    wall, cpu = time.perf_counter(), time.process_time()
    digest = work()
    return n / (time.perf_counter() - wall), n / (time.process_time() - cpu), digest


def single_core(args: argparse.Namespace) -> dict[str, object]:
    """Completions per second of parse and score_completions, the process pinned to one CPU: every
    configuration once per repeat, in an order rotated each repeat; medians and [min, max]. Each
    run returns a digest of its output (sum of lat and format for parse, of ``combined`` for the
    scores): a configuration whose digest changes between repeats is reported."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    completions, truth = build_batch(args.n, args.group_size, args.seed)  # loads the gazetteer too
    every_truth = Truth.from_columns(truth)
    batches = [slice(start, start + args.batch_size) for start in range(0, args.n, args.batch_size)]
    base = RewardConfig(mode="weighted_sum", w_chain=0.1)
    configs = {
        "no_region": replace(base, w_country=0.0, w_state=0.0, w_city=0.0),
        "text_region": replace(base, region_source="text"),
        "point_region": replace(base, region_source="point"),
    }

    def parse_all() -> float:
        digest = 0.0
        for batch in batches:
            parsed = parse_many(completions[batch])
            digest += float(np.nansum(parsed.lat)) + float(parsed.format_ok.sum())
        return digest

    def score_all(cfg: RewardConfig) -> Callable[[], float]:
        def run() -> float:
            return sum(
                float(score_completions(completions[batch], every_truth[batch], cfg)["combined"].sum())
                for batch in batches
            )

        return run

    works = {"parse": parse_all, **{name: score_all(cfg) for name, cfg in configs.items()}}
    names = list(works)
    runs: Runs = {name: [] for name in names}
    digests: dict[str, set[float]] = {name: set() for name in names}
    load_before = round(os.getloadavg()[0], 2)
    for repeat in range(args.repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            wall_rate, cpu_rate, digest = per_second(args.n, works[name])
            runs[name].append({"per_s": wall_rate, "cpu_per_s": cpu_rate})
            digests[name].add(round(digest, 6))
    result: dict[str, object] = {
        "n": args.n,
        "batch_size": args.batch_size,
        "group_size": args.group_size,
        "cores": 1,
        "repeats": args.repeats,
        "load_average_1min_before_after": [load_before, round(os.getloadavg()[0], 2)],
    }
    median, spread = median_and_spread(runs, ("per_s", "cpu_per_s"))
    for name in names:  # the medians, under the keys the docs quote
        result[f"{name}_per_s"] = round(median[name]["per_s"])
        result[f"{name}_cpu_per_s"] = round(median[name]["cpu_per_s"])
    result["spread_cpu_per_s"] = {name: [round(v) for v in spread[name]["cpu_per_s"]] for name in names}
    result["same_output_every_repeat"] = {name: len(digests[name]) == 1 for name in names}
    sample = score_completions(completions[:10_000], every_truth[:10_000], configs["text_region"])
    result["mix"] = {
        "parse_failed": float(sample["parse_failed"].mean()),
        "format": float(sample["format"].mean()),
        "chain": float(sample["chain"].mean()),
        "mean_text_region": float(sample["region"].mean()),
    }
    return result


def same_scores(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    """Every component equal, NaN where NaN."""
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)


def timed_calls(score: Callable[[slice], object], batch_size: int, calls: int, n: int) -> dict[str, float]:
    """Back-to-back calls of ``score`` on consecutive batches: completions/s and latency p50/p95."""
    latencies = []
    for call in range(calls):
        start = (call * batch_size) % (n - batch_size + 1)
        began = time.perf_counter()
        score(slice(start, start + batch_size))
        latencies.append(time.perf_counter() - began)
    ms = np.array(latencies) * 1000.0
    return {
        "per_s": round(batch_size * calls / sum(latencies)),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "calls": calls,
    }


def measure_pool(
    pool: Any,
    batch_args: Callable[[slice], list[object]],
    batch_sizes: tuple[int, ...],
    calls_for: Callable[[int], int],
    n: int,
    cfg: RewardConfig,
) -> dict[str, Any]:
    """One run of a started-here reward pool: its start, a check against the in-process scores of
    1,024 completions, then completions/s and latency per batch size; the pool is closed after."""
    began = time.perf_counter()
    pool.start()
    run: dict[str, Any] = {"start_s": time.perf_counter() - began}
    try:
        for _ in range(5):  # warm-up: first calls pay for the worker's imports and caches
            pool.score(*batch_args(slice(0, 64)))
        check = slice(0, 1024)
        run["same_scores_as_in_process"] = same_scores(
            pool.score(*batch_args(check)), score_completions(*batch_args(check), cfg=cfg)
        )
        for size in batch_sizes:
            timed = timed_calls(lambda rows: pool.score(*batch_args(rows)), size, calls_for(size), n)
            run[f"batch_{size}_per_s"], run[f"batch_{size}_p95_ms"] = timed["per_s"], timed["p95_ms"]
        run["stats"] = {k: round(v, 3) if isinstance(v, float) else v for k, v in pool.stats().items()}
    finally:
        pool.close()
    return run


def ray_pool(args: argparse.Namespace, cpus: set[int]) -> dict[str, object]:
    """The reward actor pool on a local 2-CPU Ray cluster against score_completions in process."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)  # Ray's processes inherit the driver's pinning
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray

    from tasks.reward_actors import RewardActorPool

    texts, truth = build_batch(args.ray_completions, args.group_size, args.seed + 1)
    completions = [[{"role": "assistant", "content": text}] for text in texts]  # as TRL sends them
    cfg = RewardConfig()
    every_truth = Truth.from_columns(truth)

    def batch_args(rows: slice) -> list[object]:
        return [completions[rows], every_truth[rows]]

    def calls_for(batch_size: int) -> int:
        return max(30, min(500, args.ray_completions // batch_size))

    batch_sizes = (16, 64, 1024)
    n = len(completions)
    result: dict[str, object] = {
        "reward_config": asdict(cfg),
        "completions": n,
        "load_average_1min_before": round(os.getloadavg()[0], 2),
        "in_process": {
            f"batch_{size}": timed_calls(
                lambda rows: score_completions(*batch_args(rows), cfg=cfg), size, calls_for(size), n
            )
            for size in batch_sizes
        },
    }
    pools = [(1, 0.25), (1, 0.5), (2, 0.25), (2, 0.5)]
    runs: dict[str, list[dict[str, Any]]] = {f"actors_{a}_cpu_{c}": [] for a, c in pools}
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    try:
        for repeat in range(args.repeats):  # the pools in an order rotated every repeat
            for num_actors, cpus_per_actor in pools[repeat % len(pools) :] + pools[: repeat % len(pools)]:
                pool = RewardActorPool(cfg, num_actors, cpus_per_actor)
                runs[f"actors_{num_actors}_cpu_{cpus_per_actor}"].append(
                    measure_pool(pool, batch_args, batch_sizes, calls_for, n, cfg)
                )
    finally:
        ray.shutdown()
    keys = ("start_s", *(f"batch_{size}_{figure}" for size in batch_sizes for figure in ("per_s", "p95_ms")))
    median, spread = median_and_spread(runs, keys)
    for name, measured in runs.items():
        wait = median[name]["batch_64_p95_ms"] / 1000.0 / args.grpo_step_s
        result[name] = {
            "median": {k: round(v, 2) for k, v in median[name].items()},
            "spread": spread[name],
            "reward_wait_share": round(wait, 4),  # the median 64-completion p95 over a GRPO step
            "same_scores_as_in_process": all(run["same_scores_as_in_process"] for run in measured),
            "stats_last_repeat": measured[-1]["stats"],
        }
    result["grpo_step_s"] = args.grpo_step_s
    result["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--group-size", type=int, default=4, help="completions per truth row (GRPO's G)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each configuration (both sections)")
    parser.add_argument("--section", choices=("all", "single_core", "ray_pool"), default="all")
    parser.add_argument("--ray-completions", type=int, default=65_536, help="distinct completions (ray_pool)")
    parser.add_argument("--grpo-step-s", type=float, default=0.5, help="GRPO step time to compare with")
    args = parser.parse_args()
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    result: dict[str, object] = {}
    if args.section in ("all", "single_core"):
        result["single_core"] = single_core(args)
    if args.section in ("all", "ray_pool"):
        result["ray_pool"] = ray_pool(args, cpus)
    print(json.dumps(result, indent=2))
    differ = [
        name
        for name, same in result.get("single_core", {}).get("same_output_every_repeat", {}).items()
        if not same
    ]
    differ += [
        pool
        for pool, timings in result.get("ray_pool", {}).items()
        if isinstance(timings, dict) and timings.get("same_scores_as_in_process") is False
    ]
    if differ:
        print(f"outputs differ: {differ}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
