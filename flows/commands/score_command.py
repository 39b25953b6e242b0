"""`geor score`: score a predictions file against a truth file and print the field's standard table.

    geor score --predictions URI --truth URI [--id-col C]
               [--pred-lat-col C --pred-lon-col C | --text-col C] [--lat-col C --lon-col C]
               [--json OUT]

Prints a table, then the result as one JSON object (also written to ``--json``, a file path,
local or s3://). Bad input (a missing column, an empty or duplicated id, float ids, an
unreadable file, ``--json`` naming a directory) ends with a one-line message and exit code 2.
CSV lines with the wrong number of fields are left out and counted (``n_malformed_rows``): the
table and JSON are still printed and written, a warning goes to stderr, and the exit code is 3.
The rules for joining and counting are in geor_core.scoring.scoring.
"""

from __future__ import annotations

import argparse
import json
import sys

from geor_core import uris
from geor_core.errors import UserFacingError
from geor_core.scoring.scoring import format_table, score_files

EXIT_MALFORMED_ROWS = 3


EXAMPLES = """examples:
  geor score --predictions predictions.csv --truth truth.csv
  geor score --predictions predictions.parquet --truth truth.csv --text-col completion --json score.json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--predictions", required=True, help="predictions table (CSV/Parquet, local or s3://)"
    )
    parser.add_argument(
        "--truth", required=True, help="truth table with id, lat, lon (CSV/Parquet, local or s3://)"
    )
    parser.add_argument("--id-col", default="id", help="id column in both tables (default: id)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--text-col", default=None, help="parse completions in this predictions column")
    source.add_argument(
        "--pred-lat-col", default=None, help="numeric predicted latitude column (default: lat)"
    )
    parser.add_argument(
        "--pred-lon-col", default=None, help="numeric predicted longitude column (default: lon)"
    )
    parser.add_argument("--lat-col", default="lat", help="truth latitude column (default: lat)")
    parser.add_argument("--lon-col", default="lon", help="truth longitude column (default: lon)")
    parser.add_argument("--json", default=None, metavar="OUT", help="also write the JSON result here")


def run(args: argparse.Namespace) -> int:
    if args.text_col and args.pred_lon_col:
        raise UserFacingError("--pred-lon-col cannot be combined with --text-col")
    if args.json:
        _require_file_path(args.json)
    result = score_files(
        args.predictions,
        args.truth,
        id_col=args.id_col,
        pred_lat_col=args.pred_lat_col or "lat",
        pred_lon_col=args.pred_lon_col or "lon",
        text_col=args.text_col,
        lat_col=args.lat_col,
        lon_col=args.lon_col,
    )
    text = json.dumps(result, sort_keys=True)
    print(format_table(result))
    print(text)
    if args.json:
        try:
            uris.write_text(args.json, text + "\n")
        except OSError as exc:
            raise UserFacingError(f"cannot write --json {args.json}: {exc}") from exc
    malformed = sum(result["n_malformed_rows"].values())
    if not malformed:
        return 0
    first = result["malformed_rows"][0]
    counts = ", ".join(f"{table} {n}" for table, n in result["n_malformed_rows"].items())
    print(
        f"geor score: warning: {malformed} malformed CSV rows left out ({counts}), "
        f"e.g. {first['file']} line {first['line']}: {first['fields']} fields where the header has "
        f"{first['expected']}; exit code {EXIT_MALFORMED_ROWS}",
        file=sys.stderr,
    )
    return EXIT_MALFORMED_ROWS


def _require_file_path(uri: str) -> None:
    """``--json`` must name a file: checked before scoring, not after."""
    try:
        fs, path = uris.filesystem(uri)
        is_directory = fs.isdir(path)
    except (OSError, ValueError) as exc:
        raise UserFacingError(f"--json {uri}: {exc}") from exc
    if is_directory:
        raise UserFacingError(
            f"--json {uri} is a directory; give a file path such as {uris.join(uri, 'score.json')}"
        )
