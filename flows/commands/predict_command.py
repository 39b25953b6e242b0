"""`geor predict --model URI --images URI_OR_MANIFEST --output URI`: geolocate photos without truth.

``--images`` is a folder of photos (searched recursively) or a manifest file listing them
(``--image-col``, optional ``--id-col``; references relative to the manifest's folder). Writes the
Chain-of-Region text, parsed levels and coordinates per photo as Parquet and CSV, plus a world
map, under ``--output``; prints one JSON line. The way to apply a registered model:
``--model models:/NAME@ALIAS``.
"""

from __future__ import annotations

import argparse
import json

from flows.commands.config_args import add_config_arguments, config_from_args, local_paths_absolute

FLAG_KEYS = {"model": "model.name_or_path"}


EXAMPLES = """examples:
  geor predict --model models:/geo-r@champion --images photos/ --output runs/predictions
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="local dir, s3://, hub id or models:/NAME@ALIAS")
    parser.add_argument("--images", help="a folder of photos or a manifest file (local or s3://)")
    parser.add_argument("--output", help="where predictions.csv, predictions/ and world_map.png go")
    parser.add_argument("--image-col", default="image", help="manifest column with the image reference")
    parser.add_argument("--id-col", default="id", help="manifest id column (absent: the image reference)")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args, FLAG_KEYS)
    args.output = local_paths_absolute("output", args.output)
    args.images = local_paths_absolute("manifest", args.images)
    from geor_core.errors import UserFacingError
    from tasks.predict import run_predict

    for flag, value in (
        ("--model", cfg.model.name_or_path),
        ("--images", args.images),
        ("--output", args.output),
    ):
        if not value:
            raise UserFacingError(f"{flag} is required")
    result = run_predict(
        cfg, cfg.model.name_or_path, args.images, args.output, id_col=args.id_col, image_col=args.image_col
    )
    print(
        json.dumps(
            {
                "output": result.output,
                "predictions": result.predictions_uri,
                "csv": result.csv_uri,
                "world_map": result.map_uri,
                **result.summary,
                "shards_computed": len(result.inference.shards_computed),
                "shards_skipped": result.inference.shards_skipped,
            }
        )
    )
    return 0
