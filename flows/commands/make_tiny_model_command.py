"""`geor make-tiny-model --output URI`: build the tiny random-weight Qwen2.5-VL model and its processor.

Seconds on a CPU, nothing downloaded (see geor_core/training/tiny_model.py). The output (a local directory
or an s3:// prefix) holds what ``save_pretrained`` writes, then a completion marker listing those
files. An output that is already complete with the same settings is kept; ``--overwrite`` rebuilds
it, replacing only the files a build writes (the output is claimed first: a non-empty folder geor
did not write is refused, see geor_core/ownership.py). The image
resolution comes from the config's ``model.min_pixels`` / ``model.max_pixels``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from flows.commands.config_args import add_config_arguments, config_from_args
from geor_core import uris
from geor_core.errors import UserFacingError
from geor_core.ownership import claim_output

MARKER_KIND = "geor-tiny-model"


EXAMPLES = """examples:
  geor make-tiny-model --output runs/tiny-model
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output", required=True, help="local directory or s3:// prefix to write the model to"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the tokenizer corpus")
    parser.add_argument("--overwrite", action="store_true", help="rebuild even if the output is complete")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    wanted = {
        "kind": MARKER_KIND,
        "seed": args.seed,
        "min_pixels": cfg.model.min_pixels,
        "max_pixels": cfg.model.max_pixels,
    }
    marker = uris.read_marker(args.output)
    if marker is not None and not args.overwrite:
        if {key: marker.get(key) for key in wanted} != wanted:
            raise UserFacingError(
                f"{args.output} already holds another build ({marker}); pass --overwrite or choose another --output"
            )
        print(json.dumps({**marker, "skipped": True}))
        return 0

    from geor_core.training.tiny_model import save_tiny_model

    started = time.perf_counter()
    owned = claim_output(args.output, "make-tiny-model")
    with tempfile.TemporaryDirectory(prefix="geor-tiny-model-") as staging:
        sizes = save_tiny_model(staging, cfg.model.min_pixels, cfg.model.max_pixels, seed=args.seed)
        files = sorted(os.listdir(staging))
        # the marker first; then what this build writes and what the previous build listed
        owned.remove(uris.MARKER_NAME, *sorted({*files, *(marker or {}).get("files", [])}))
        fs, root = uris.filesystem(args.output)
        fs.put(staging.rstrip("/") + "/", root, recursive=True)
    payload = {**wanted, **sizes, "files": files, "build_seconds": round(time.perf_counter() - started, 2)}
    uris.write_marker(args.output, payload)
    print(json.dumps(payload))
    return 0
