"""The manifest file formats, each read as a stream of (all-string table, malformed lines) pieces.

CSV / TSV: pyarrow's streaming reader with every column typed as string, quoted line breaks
allowed, and an invalid-row handler that keeps the raw text of a line with the wrong number of
fields. Parquet: record batches, every column cast to string (nested values as JSON text).
JSONL: one JSON object per line, values as text (numbers as JSON writes them); a line that is
not an object is malformed. A leading UTF-8 BOM is skipped; ``.gz`` / ``.bz2`` / ``.zst`` are
decompressed. Pieces have no fixed size: ``manifest.iter_batches`` cuts them into batches.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from geor_core import uris

_CSV_BLOCK_BYTES = 8 << 20
_HEADER_BLOCK_BYTES = 1 << 20
Piece = tuple[pa.Table, list[str]]


def read_pieces(uri: str, file_format: str, batch_rows: int) -> Iterator[Piece]:
    """Stream one manifest file of ``file_format`` (csv, tsv, parquet, jsonl) as pieces."""
    if file_format in ("csv", "tsv"):
        return _iter_csv(uri, "\t" if file_format == "tsv" else ",")
    if file_format == "parquet":
        return _iter_parquet(uri, batch_rows)
    if file_format == "jsonl":
        return _iter_jsonl(uri, batch_rows)
    raise ValueError(f"unknown manifest format {file_format!r}")


def _open_stream(uri: str) -> Any:
    fs, path = uris.pyarrow_filesystem(uri)
    return fs.open_input_stream(path, compression="detect")


def _csv_header(uri: str, delimiter: str) -> list[str] | None:
    """The column names of a CSV file (None when it is empty), parsed by pyarrow from an in-memory
    copy of the file's start. (A reader left unfinished on the open file itself may still be
    reading ahead on a background thread when the file is closed and its descriptor reused by
    the next open: a run lost rows that way once, under heavy load.)"""
    with _open_stream(uri) as stream:
        start = stream.read(_HEADER_BLOCK_BYTES)
    if not start.strip():
        return None
    parse = pacsv.ParseOptions(
        delimiter=delimiter, newlines_in_values=True, invalid_row_handler=lambda row: "skip"
    )
    options = pacsv.ReadOptions(block_size=_HEADER_BLOCK_BYTES, use_threads=False)
    return pacsv.open_csv(pa.BufferReader(start), read_options=options, parse_options=parse).schema.names


def _iter_csv(uri: str, delimiter: str) -> Iterator[Piece]:
    names = _csv_header(uri, delimiter)
    if names is None:
        return  # an empty file
    read_options = pacsv.ReadOptions(block_size=_CSV_BLOCK_BYTES, use_threads=False)
    bad_lines: list[str] = []

    def keep_malformed(row: Any) -> str:
        bad_lines.append(row.text)
        return "skip"

    parse_options = pacsv.ParseOptions(
        delimiter=delimiter, newlines_in_values=True, invalid_row_handler=keep_malformed
    )
    convert_options = pacsv.ConvertOptions(
        column_types={name: pa.string() for name in names},
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    with _open_stream(uri) as stream:
        reader = pacsv.open_csv(
            stream, read_options=read_options, parse_options=parse_options, convert_options=convert_options
        )
        for record_batch in reader:
            lines, bad_lines[:] = list(bad_lines), []
            yield pa.Table.from_batches([record_batch]), lines
    yield pa.table({name: pa.array([], pa.string()) for name in names}), list(bad_lines)


def _iter_parquet(uri: str, batch_rows: int) -> Iterator[Piece]:
    fs, path = uris.pyarrow_filesystem(uri)
    with fs.open_input_file(path) as handle:
        parquet = pq.ParquetFile(handle)
        if parquet.metadata.num_rows == 0:
            yield pa.table({name: pa.array([], pa.string()) for name in parquet.schema_arrow.names}), []
            return
        for record_batch in parquet.iter_batches(batch_size=batch_rows):
            yield _all_strings(pa.Table.from_batches([record_batch])), []


def _all_strings(table: pa.Table) -> pa.Table:
    """Every column as strings: plain casts where Arrow has one, JSON text for nested values."""
    out = []
    for column in table.columns:
        if pa.types.is_string(column.type):
            out.append(column)
        elif pa.types.is_large_string(column.type) or pa.types.is_dictionary(column.type):
            out.append(column.cast(pa.string()))
        else:
            try:
                out.append(column.cast(pa.string()))
            except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
                values = column.to_pylist()
                out.append(
                    pa.array([None if v is None else json.dumps(v, default=str) for v in values], pa.string())
                )
    return pa.table(out, names=table.column_names)


def _iter_jsonl(uri: str, batch_rows: int) -> Iterator[Piece]:
    rows: list[dict[str, Any]] = []
    bad_lines: list[str] = []
    for text in _iter_lines(uri):
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            rows.append(value)
        else:
            bad_lines.append(text)
        if len(rows) >= batch_rows:
            yield _json_rows_table(rows), bad_lines
            rows, bad_lines = [], []
    yield _json_rows_table(rows), bad_lines


def _iter_lines(uri: str) -> Iterator[str]:
    """The lines of a UTF-8 text file without their line ends (a leading BOM dropped)."""
    remainder = b""
    first = True
    with _open_stream(uri) as stream:
        while chunk := stream.read(_CSV_BLOCK_BYTES):
            if first:
                chunk, first = chunk.removeprefix(b"\xef\xbb\xbf"), False
            lines = (remainder + chunk).split(b"\n")
            remainder = lines.pop()
            for line in lines:
                yield line.rstrip(b"\r").decode("utf-8")
    if remainder:
        yield remainder.rstrip(b"\r").decode("utf-8")


def _json_rows_table(rows: list[dict[str, Any]]) -> pa.Table:
    names = list(dict.fromkeys(key for row in rows for key in row))
    return pa.table(
        {name: pa.array([_json_cell(row.get(name)) for row in rows], pa.string()) for name in names}
    )


def _json_cell(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)
