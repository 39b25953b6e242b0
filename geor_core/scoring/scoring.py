"""`geor score`: join a predictions table to a truth table by id and compute the standard metrics.

Tables are CSV (UTF-8, a BOM allowed, quoted fields; ``.csv``, ``.csv.gz``, ``.tsv``) or Parquet
(``.parquet``, ``.pq``), local or ``s3://`` (fsspec; an S3-compatible endpoint from
``AWS_ENDPOINT_URL``), or a directory of such files (e.g. sharded inference output). Ids are
compared as text with surrounding spaces removed; an empty id, or an id twice in either table,
is an error that names the offending ids. Ids are never normalised: an id column of
floating-point numbers (a Parquet ``double``, e.g. integer ids that went through a pandas column
with a missing value) is an error naming the table, the column and its type, since ``1.0``
would never match the text ``"1"``; write ids as text or integers.

A CSV line with more or fewer fields than the header is a malformed row: it is left out of its
table (never shifted into other columns) and ``score_files`` reports it in ``n_malformed_rows``
(per table) and ``malformed_rows`` (a sample: table, file, line, reason ``extra_fields`` or
``missing_fields``); `geor score` then ends with exit code 3. A malformed truth row is not in
``n_truth_rows``; the truth row of a malformed prediction row counts as ``no_prediction_row``.
``read_table`` without a ``malformed`` list refuses such a file instead.

Predictions are either numeric columns (``pred_lat_col``/``pred_lon_col``) or a text column
parsed with the one rule of geor_core.geo.parse. Every truth row is scored once:

- a truth row without a valid coordinate (empty, non-numeric, out of range, or (0, 0)) cannot be
  scored: it is left out of n and counted in ``n_truth_invalid`` (with its reasons), so scoring a
  benchmark against itself gives 100% at every threshold (IM2GPS3K: n 2997, n_truth_invalid 3);
- a valid truth row whose prediction is missing (no prediction row, an empty or invalid cell, or
  a completion without an in-range pair) is a miss at every threshold and counted in
  ``n_missing``; ``missing_reasons`` says why (``no_prediction_row``, ``missing_lat``,
  ``non_numeric_lon``, ``lat_out_of_range``, ``no_pair``, ...), its counts adding up to n_missing.
  A predicted (0, 0) is scored like any other guess;
- a prediction row whose id is not in the truth is not scored; it is counted in
  ``n_unmatched_predictions`` (a sample of the ids in ``unmatched_prediction_ids``).
Predictions that name country / state / city (parsed text, or columns ``country``, ``state``,
``city``) also get level match rates against the gazetteer row of the true coordinates.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from geor_core import uris
from geor_core.errors import UserFacingError
from geor_core.geo import gazetteer
from geor_core.geo.geo import validate_coordinates
from geor_core.geo.parse import parse_many
from geor_core.scoring.metrics import THRESHOLDS_KM
from geor_core.scoring.score_tally import MAX_IDS_SHOWN, NO_PREDICTION_ROW, ScoredRows

LEVEL_COLUMNS = ("country", "state", "city")
ACCURACY_COLUMNS = tuple(f"acc_{t}km" for t in THRESHOLDS_KM)
# The headline metrics, in the order every table shows them (`geor score`, `geor evaluate`).
METRIC_COLUMNS = (
    *ACCURACY_COLUMNS,
    "median_km",
    "mean_km",
    "geoscore",
    "format_rate",
    "country_match_rate",
    "state_match_rate",
    "city_match_rate",
)
_CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv")
_PARQUET_SUFFIXES = (".parquet", ".pq")


def score_files(
    predictions_uri: str,
    truth_uri: str,
    *,
    id_col: str = "id",
    pred_lat_col: str = "lat",
    pred_lon_col: str = "lon",
    text_col: str | None = None,
    lat_col: str = "lat",
    lon_col: str = "lon",
) -> dict[str, Any]:
    """Read both tables and score them (see ``score_tables``); the result names both URIs and
    counts the malformed CSV rows left out of each table."""
    malformed: dict[str, list[dict[str, Any]]] = {"predictions": [], "truth": []}
    result = score_tables(
        read_table(predictions_uri, malformed["predictions"]),
        read_table(truth_uri, malformed["truth"]),
        id_col=id_col,
        pred_lat_col=pred_lat_col,
        pred_lon_col=pred_lon_col,
        text_col=text_col,
        lat_col=lat_col,
        lon_col=lon_col,
    )
    sample = [{"table": table, **row} for table, rows in malformed.items() for row in rows]
    return {
        **result,
        "predictions": predictions_uri,
        "truth": truth_uri,
        "n_malformed_rows": {table: len(rows) for table, rows in malformed.items()},
        "malformed_rows": sample[:MAX_IDS_SHOWN],
    }


def read_table(uri: str, malformed: list[dict[str, Any]] | None = None) -> pd.DataFrame:
    """A CSV or Parquet file, or a directory of them, as a DataFrame (CSV cells as str).

    A CSV line whose field count differs from the header's is left out and described in
    ``malformed`` (file, line, reason, fields, expected) when a list is given; else it is an error."""
    try:
        fs, path = uris.filesystem(uri)
        if fs.isdir(path):
            files = [
                f for f in sorted(fs.ls(path, detail=False)) if f.endswith(_CSV_SUFFIXES + _PARQUET_SUFFIXES)
            ]
            if not files:
                raise UserFacingError(f"{uri} is a directory without .csv or .parquet files")
            tables = [_read_file(fs, f, uris.join(uri, f.rsplit("/", 1)[-1]), malformed) for f in files]
            return pd.concat(tables, ignore_index=True)
        if not fs.exists(path):
            raise UserFacingError(f"{uri} does not exist")
        return _read_file(fs, path, uri, malformed)
    except UserFacingError:
        raise
    except (OSError, ValueError, csv.Error) as exc:
        raise UserFacingError(f"cannot read {uri}: {exc}") from exc


def _read_file(fs: Any, path: str, uri: str, malformed: list[dict[str, Any]] | None) -> pd.DataFrame:
    lower = path.lower()
    if lower.endswith(_PARQUET_SUFFIXES):
        with fs.open(path, "rb") as handle:
            return pd.read_parquet(handle)
    if lower.endswith(_CSV_SUFFIXES):
        with fs.open(path, "rb", compression="infer") as handle:
            # a BOM must not end up in the first column's name; newline="" lets csv read quoted newlines
            text = io.TextIOWrapper(handle, encoding="utf-8-sig", newline="")
            return _read_csv(text, "\t" if lower.endswith(".tsv") else ",", uri, malformed)
    raise UserFacingError(f"{uri}: unknown table format, expected .csv, .csv.gz, .tsv, .parquet or .pq")


def _read_csv(
    text: io.TextIOBase, delimiter: str, file: str, malformed: list[dict[str, Any]] | None
) -> pd.DataFrame:
    """Every cell as text, as written ("NA" stays text, an empty cell stays ""); blank lines are
    skipped and a line with the wrong number of fields is malformed (see ``read_table``)."""
    reader = csv.reader(text, delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        raise UserFacingError(f"{file} is empty: no header line")
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise UserFacingError(f"{file}: column {duplicated[0]!r} appears more than once in the header")
    rows = []
    for row in reader:
        if len(row) == len(header):
            rows.append(row)
        elif row and any(cell.strip() for cell in row):  # a blank line is no row
            bad = {
                "file": file,
                "line": reader.line_num,
                "reason": "extra_fields" if len(row) > len(header) else "missing_fields",
                "fields": len(row),
                "expected": len(header),
            }
            if malformed is None:
                raise UserFacingError(
                    f"{file} line {bad['line']}: {bad['fields']} fields where the header has {bad['expected']}"
                )
            malformed.append(bad)
    return pd.DataFrame(rows, columns=header, dtype=str)


def score_tables(predictions: pd.DataFrame, truth: pd.DataFrame, **columns: str | None) -> dict[str, Any]:
    """Join predictions to truth by id and compute the metrics plus every count of the join
    (``columns``: ``join_rows``'s column names)."""
    tally, distance = join_rows(predictions, truth, **columns).tally()
    found = distance[~np.isnan(distance)]
    return tally.result(float(np.median(found)) if found.size else None)


def join_rows(
    predictions: pd.DataFrame,
    truth: pd.DataFrame,
    *,
    id_col: str = "id",
    pred_lat_col: str = "lat",
    pred_lon_col: str = "lon",
    text_col: str | None = None,
    lat_col: str = "lat",
    lon_col: str = "lon",
) -> ScoredRows:
    """Every truth row joined by id to its prediction (parsed from ``text_col``, or the numeric
    columns), with the truth's gazetteer levels where the predictions name levels."""
    _require_columns(truth, "truth", [id_col, lat_col, lon_col])
    pred_columns = [text_col] if text_col else [pred_lat_col, pred_lon_col]
    _require_columns(predictions, "predictions", [id_col, *pred_columns])
    truth_ids = _unique_ids(truth[id_col], "truth", id_col)
    pred_ids = _unique_ids(predictions[id_col], "predictions", id_col)

    true_lat, true_lon, truth_reason = validate_coordinates(
        truth[lat_col].to_numpy(), truth[lon_col].to_numpy()
    )
    truth_valid = truth_reason == ""
    row_of_id = pd.Series(np.arange(len(pred_ids)), index=pred_ids)
    pred_row_of_truth = row_of_id.reindex(truth_ids).to_numpy()  # NaN: no prediction row
    pred_row = pred_row_of_truth[truth_valid]
    has_row = ~np.isnan(pred_row)
    rows = pred_row[has_row].astype(np.int64)
    n = int(truth_valid.sum())

    prediction = _predictions(predictions, text_col, pred_lat_col, pred_lon_col)
    plat = np.full(n, np.nan)
    plon = np.full(n, np.nan)
    plat[has_row], plon[has_row] = prediction["lat"][rows], prediction["lon"][rows]
    reason = np.full(n, NO_PREDICTION_ROW, dtype=object)
    reason[has_row] = prediction["reason"][rows]
    format_ok = None
    if prediction["format_ok"] is not None:
        format_ok = np.zeros(n, dtype=bool)
        format_ok[has_row] = prediction["format_ok"][rows]
    levels = _predicted_levels(prediction["levels"], has_row, rows, n)
    truth_levels = _truth_levels(true_lat[truth_valid], true_lon[truth_valid]) if levels else {}
    return ScoredRows(
        mode="text" if text_col else "numeric",
        truth_reason=truth_reason,
        has_prediction=~np.isnan(pred_row_of_truth),
        pred_lat=plat,
        pred_lon=plon,
        true_lat=true_lat[truth_valid],
        true_lon=true_lon[truth_valid],
        reason=reason,
        format_ok=format_ok,
        levels={**levels, **truth_levels},
        unmatched_ids=pred_ids[pd.Index(truth_ids).get_indexer(pred_ids) < 0],  # hashed: O(n)
    )


def _require_columns(table: pd.DataFrame, which: str, columns: list[str]) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise UserFacingError(
            f"the {which} table has no column {', '.join(map(repr, missing))}; "
            f"its columns are: {', '.join(map(str, table.columns))}"
        )


def _unique_ids(values: pd.Series, which: str, id_col: str) -> np.ndarray:
    floats = [v for v in values if isinstance(v, float | np.floating) and not np.isnan(v)]
    if pd.api.types.is_float_dtype(values.dtype) or floats:
        example = f", e.g. {floats[0]!r}" if floats else ""
        raise UserFacingError(
            f"the {which} table's {id_col!r} column holds floating-point numbers "
            f"(type {values.dtype}{example}); ids are compared as text, so 1.0 would never match "
            "'1': write the ids as text or integers"
        )
    ids = np.array([_id_text(v) for v in values], dtype=object)
    empty = np.flatnonzero(ids == "")
    if empty.size:
        rows = ", ".join(str(i) for i in empty[:MAX_IDS_SHOWN])
        raise UserFacingError(
            f"the {which} table has {empty.size} rows with an empty {id_col!r} (0-based data rows {rows})"
        )
    counts = Counter(ids.tolist())
    duplicated = [i for i, count in counts.items() if count > 1]
    if duplicated:
        shown = ", ".join(repr(i) for i in duplicated[:MAX_IDS_SHOWN])
        more = f" and {len(duplicated) - MAX_IDS_SHOWN} more" if len(duplicated) > MAX_IDS_SHOWN else ""
        raise UserFacingError(
            f"the {which} table has {len(duplicated)} ids more than once in {id_col!r}: {shown}{more}; "
            "an id must name one row"
        )
    return ids


def _id_text(value: object) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return ""
    return str(value).strip()


def _predictions(table: pd.DataFrame, text_col: str | None, lat_col: str, lon_col: str) -> dict[str, Any]:
    """Per prediction row: lat, lon (NaN where missing), the reason when missing, format_ok, named levels."""
    if text_col:
        parsed = parse_many(table[text_col].tolist())
        return {
            "lat": parsed.lat,
            "lon": parsed.lon,
            "reason": np.array(parsed.error, dtype=object),
            "format_ok": parsed.format_ok,
            "levels": {"country": parsed.country, "state": parsed.state, "city": parsed.city},
        }
    lat, lon, reason = validate_coordinates(table[lat_col].to_numpy(), table[lon_col].to_numpy())
    reason[reason == "null_island"] = ""  # (0, 0) is a poor guess, but a guess: it is scored
    usable = reason == ""
    levels = {level: table[level].tolist() for level in LEVEL_COLUMNS if level in table.columns}
    return {
        "lat": np.where(usable, lat, np.nan),
        "lon": np.where(usable, lon, np.nan),
        "reason": reason,
        "format_ok": None,
        "levels": levels,
    }


def _predicted_levels(
    levels: dict[str, list], has_row: np.ndarray, rows: np.ndarray, n: int
) -> dict[str, list | None]:
    if not levels:
        return {}
    out: dict[str, list | None] = {}
    for level in LEVEL_COLUMNS:
        values = levels.get(level)
        if values is None:
            out[f"pred_{level}"] = None
            continue
        column = np.full(n, None, dtype=object)
        column[has_row] = np.asarray(values, dtype=object)[rows]
        out[f"pred_{level}"] = column.tolist()
    return out


def _truth_levels(lat: np.ndarray, lon: np.ndarray) -> dict[str, Any]:
    place = gazetteer.lookup(lat, lon)
    return {
        "truth_country_code": place["country_code"],
        "truth_state": place["admin1"],
        "truth_city": place["city"],
    }


def format_table(result: dict[str, Any]) -> str:
    """The result as a small aligned text table (rates in percent, distances in km)."""
    rows: list[tuple[str, object]] = [
        ("n (scored truth rows)", result["n"]),
        ("n_missing", result["n_missing"]),
    ]
    rows += [(f"  {reason}", count) for reason, count in result["missing_reasons"].items()]
    for key in METRIC_COLUMNS:
        if key in ACCURACY_COLUMNS:  # always shown; the others only when computed
            rows.append((f"{key} (%)", _show(result[key])))
        elif result.get(key) is not None:
            rows.append((key, _show(result[key])))
    rows.append(("n_truth_invalid", result["n_truth_invalid"]))
    rows += [(f"  {reason}", count) for reason, count in result["truth_invalid_reasons"].items()]
    rows.append(("n_unmatched_predictions", result["n_unmatched_predictions"]))
    if "n_malformed_rows" in result:  # `geor score` (read from files) only
        rows.append(("n_malformed_rows", sum(result["n_malformed_rows"].values())))
        rows += [(f"  {table}", count) for table, count in result["n_malformed_rows"].items() if count]
    return "\n".join(f"{name:<26}{value}" for name, value in rows)


def _show(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
