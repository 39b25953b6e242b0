"""Which shared looks give RL something to win: per look, the reward's optimum against greedy imitation.

    python benchmarks/world_looks.py --codes CA,SE,BR,NG,JP,DE [--majority 0.6] [--seed 0]
    python benchmarks/world_looks.py --config demo data.world_country_codes='[...]' \
        'data.world_shared_looks=["CA:0.6,SE:0.4"]'

A look shared by several countries (``geor make-world``'s ``data.world_shared_looks``) leaves a
photo's place uncertain; its posterior is the world's own draw rule
(geor_core.data.world_looks.look_posterior). For each look this prints the paper-reward optimum, the
answer that greedy decoding of exactly learned targets gives (it names the country with the most
weight: the names come before the coordinates), the reward of sampling from the posterior (SFT at
temperature 1), and the gap optimum - greedy: the most GRPO can gain on such photos
(geor_core.scoring.look_gap). Choose looks by a large gap.

With ``--codes`` and no looks in the config, every ordered pair of those countries is tried with
weights ``--majority`` / 1 - majority, in a world of exactly those countries. Deterministic (no
timing, so no repeats): one JSON object per look, largest gap first, then a summary line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from geor_core.config import load_config  # noqa: E402
from geor_core.data.world import WorldSpec, choose_places  # noqa: E402
from geor_core.data.world_looks import look_posterior  # noqa: E402
from geor_core.geo.gazetteer import lookup  # noqa: E402
from geor_core.scoring.look_gap import look_gap  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", default="tiny", help="preset or YAML whose data.world_* keys describe the world"
    )
    parser.add_argument(
        "--codes", default="", help="comma-separated ISO codes: try every ordered pair of them"
    )
    parser.add_argument("--majority", type=float, default=0.6, help="the first country's weight in each pair")
    parser.add_argument("--seed", type=int, default=None, help="world seed (default: data.world_seed)")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = parser.parse_args(argv)
    data = load_config(args.config, args.overrides).data
    codes = tuple(c.strip().upper() for c in args.codes.split(",") if c.strip()) or tuple(
        str(c).upper() for c in data.world_country_codes
    )
    if not codes:
        parser.error("name the countries: --codes CA,SE,... or data.world_country_codes")
    if not 0.5 <= args.majority < 1.0:
        parser.error(f"--majority must be within [0.5, 1), got {args.majority}")
    seed = data.world_seed if args.seed is None else args.seed
    if data.world_shared_looks and not args.codes:
        looks = list(WorldSpec.from_config(data).shared_looks)
    else:
        looks = [((a, args.majority), (b, 1.0 - args.majority)) for a, b in itertools.permutations(codes, 2)]
    places = choose_places(len(codes), seed, codes)
    results = []
    for look in looks:
        posterior = look_posterior(places, look)
        gap = look_gap(posterior["lat"], posterior["lon"], posterior["prob"], posterior["answer"])
        optimum = gap["optimum"]
        gap["optimum"]["country"] = str(lookup([optimum["lat"]], [optimum["lon"]])["country_code"][0])
        gap["greedy"]["country"] = str(posterior["cc"].iloc[gap["greedy"].pop("index")])
        results.append({"look": ",".join(f"{c}:{w:g}" for c, w in look), **gap})
    results.sort(key=lambda r: -r["gap"])
    for row in results:
        print(json.dumps(row))
    switched = [r["look"] for r in results if r["optimum"]["country"] != r["greedy"]["country"]]
    print(
        json.dumps(
            {
                "world_seed": seed,
                "codes": list(codes),
                "looks": len(results),
                "optimum_in_another_country": switched,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
