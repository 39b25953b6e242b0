"""`geor prepare --manifest URI --output URI [...]`: Chain-of-Region training rows from a photo manifest.

Flags are sugar for ``prepare.*`` config keys (splits, hold-out countries, seed, dedupe, batch
size and compute are config keys too: ``prepare.holdout_countries=[NZ]``). Prints the job's
stats as one JSON line; a complete output with the same inputs is skipped (and says so).
"""

from __future__ import annotations

import argparse
import json
import sys

from flows.commands.config_args import add_config_arguments, config_from_args

FLAG_KEYS = {
    "manifest": "prepare.manifest",
    "output": "prepare.output",
    "id_col": "prepare.id_col",
    "image_col": "prepare.image_col",
    "lat_col": "prepare.lat_col",
    "lon_col": "prepare.lon_col",
    "images_root": "prepare.images_root",
    "allowed_schemes": "prepare.allowed_schemes",
    "check_images": "prepare.check_images",
    "overwrite": "prepare.overwrite",
}


EXAMPLES = """examples:
  geor prepare --manifest runs/world/manifest.csv --output runs/prepared
  geor prepare --manifest s3://bucket/photos.parquet --output s3://bucket/prepared --check-images
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", help="CSV / Parquet / JSONL file, or a folder or s3:// prefix of them")
    parser.add_argument("--output", help="local folder or s3:// prefix for data/, rejects/, stats.json")
    parser.add_argument("--id-col", dest="id_col", help="id column (absent: the image reference is the id)")
    parser.add_argument("--image-col", dest="image_col", help="image reference column (absent: the id)")
    parser.add_argument("--lat-col", dest="lat_col", help="latitude column")
    parser.add_argument("--lon-col", dest="lon_col", help="longitude column")
    parser.add_argument(
        "--images-root",
        dest="images_root",
        help="base of relative image references; local ones must lie in it or the manifest's folder",
    )
    parser.add_argument(
        "--allowed-schemes",
        dest="allowed_schemes",
        type=_scheme_list,
        help="image reference schemes, comma-separated (default file,s3; e.g. file,s3,https)",
    )
    parser.add_argument("--check-images", dest="check_images", action="store_true",
                        help="open every image; reject missing, unreadable and undecodable ones")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace a complete output")
    add_config_arguments(parser)


def _scheme_list(text: str) -> list[str]:
    return [scheme.strip() for scheme in text.split(",") if scheme.strip()]


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args, FLAG_KEYS)
    from tasks.prepare import run_prepare  # imported here: Ray only when the command runs

    outcome = run_prepare(cfg)
    if outcome.skipped:
        print(
            f"geor prepare: {cfg.prepare.output} is already complete for this manifest and these "
            "settings; skipped (pass --overwrite to redo it)",
            file=sys.stderr,
        )
    print(json.dumps({"output": cfg.prepare.output, "skipped": outcome.skipped, **outcome.stats}))
    return 0
