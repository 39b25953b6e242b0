"""`geor make-world --output URI --rows N [--seed S] [--countries K]`: render the synthetic world.

Real settlements, photos whose colours, stripes and marker encode country, state and position
(see geor_core/data/world.py), written as JPEGs plus ``manifest.csv`` (id,image,lat,lon; the input of
``geor prepare``) and a completion marker, to a local directory or an s3:// prefix. Sizes default
to the config's ``data.world_*`` keys; flags win over them. A complete world with the same
settings is kept; ``--overwrite`` replaces another one.
"""

from __future__ import annotations

import argparse
import json
import time

from flows.commands.config_args import add_config_arguments, config_from_args
from geor_core.data.world import WorldSpec, build_world
from geor_core.errors import UserFacingError

EXAMPLES = """examples:
  geor make-world --output runs/world
  geor make-world --output runs/world-small --rows 600 --countries 4
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output", required=True, help="local directory or s3:// prefix to write the world to"
    )
    parser.add_argument("--rows", type=int, default=None, help="number of photos (data.world_rows)")
    parser.add_argument("--seed", type=int, default=None, help="world seed (data.world_seed)")
    parser.add_argument(
        "--countries", type=int, default=None, help="number of countries (data.world_countries)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a complete world with other settings"
    )
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(
        args, {"rows": "data.world_rows", "seed": "data.world_seed", "countries": "data.world_countries"}
    )
    started = time.perf_counter()
    try:  # a bad spec or an output holding another world: one line for the user
        payload = build_world(args.output, WorldSpec.from_config(cfg.data), overwrite=args.overwrite)
    except ValueError as exc:
        raise UserFacingError(str(exc)) from exc
    print(json.dumps({**payload, "seconds": round(time.perf_counter() - started, 2)}))
    return 0
