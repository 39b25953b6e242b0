"""The manifest file formats, each read as a stream of (all-string table, bad lines) pieces.

CSV / TSV: pyarrow's streaming reader with quoted line breaks allowed and an invalid-row handler
that keeps the raw text of a line with the wrong number of fields. A line longer than
``MAX_LINE_BYTES`` (a field of megabytes) is cut out of the stream before pyarrow sees it, so it
is one bad line (``field_too_large``, its start as text) instead of a failed read. Parquet:
record batches, every column cast to string (nested values as JSON text). JSONL: one JSON object
per line, values as text exactly as written (``1e400``, ``1.0`` and big integers keep their
digits); a line that is not an object is malformed. A row with a value that is not valid UTF-8
(CSV, a Parquet binary column, JSONL) is a bad line of its own (``not_utf8``, shown with U+FFFD),
and the other rows keep their text. A file whose header names a column twice is a
UserFacingError naming it. A leading UTF-8 BOM is skipped; ``.gz`` / ``.bz2`` / ``.zst`` are
decompressed. Pieces have no fixed size: ``manifest.iter_batches`` cuts them into batches.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from geor_core import uris
from geor_core.errors import UserFacingError

MALFORMED_LINE = "malformed_line"
NOT_UTF8 = "not_utf8"
FIELD_TOO_LARGE = "field_too_large"
MAX_LINE_BYTES = 1 << 20  # well under the CSV block size, so pyarrow never meets a larger row
_CSV_BLOCK_BYTES = 8 << 20
_HEADER_BLOCK_BYTES = 1 << 20
_SHOWN_BYTES = 1000  # how much of a too-large line its reject keeps


class BadLine(NamedTuple):
    """A line (or Parquet row) that is not a manifest row: its text and why (a reason code)."""

    text: str
    reason: str


Piece = tuple[pa.Table, list[BadLine]]


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


def _check_unique(names: list[str], uri: str) -> None:
    twice = [name for name, count in Counter(names).items() if count > 1]
    if twice:
        raise UserFacingError(
            f"manifest file {uri} has the column {twice[0]!r} more than once; its columns: {', '.join(names)}"
        )


def _iter_csv(uri: str, delimiter: str) -> Iterator[Piece]:
    names = _csv_header(uri, delimiter)
    if names is None:
        return  # an empty file
    _check_unique(names, uri)
    read_options = pacsv.ReadOptions(block_size=_CSV_BLOCK_BYTES, use_threads=False)
    bad_lines: deque[BadLine] = deque()  # filled by the reader, possibly on its read-ahead thread

    def keep_malformed(row: Any) -> str:
        bad_lines.append(BadLine(row.text, MALFORMED_LINE))
        return "skip"

    parse_options = pacsv.ParseOptions(
        delimiter=delimiter, newlines_in_values=True, invalid_row_handler=keep_malformed
    )
    convert_options = pacsv.ConvertOptions(
        column_types={name: pa.binary() for name in names},  # checked for UTF-8 row by row below
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    with _open_stream(uri) as stream:
        lines = _LongLineFilter(stream, bad_lines, uri)
        reader = pacsv.open_csv(
            lines, read_options=read_options, parse_options=parse_options, convert_options=convert_options
        )
        for record_batch in reader:
            table, not_utf8 = _utf8_rows(pa.Table.from_batches([record_batch]), delimiter)
            yield table, _drain(bad_lines) + not_utf8
    yield pa.table({name: pa.array([], pa.string()) for name in names}), _drain(bad_lines)


def _drain(queue: deque[BadLine]) -> list[BadLine]:
    out = []
    while queue:
        out.append(queue.popleft())
    return out


class _LongLineFilter:
    """A read-only file over a text stream that leaves out every line longer than
    ``MAX_LINE_BYTES`` (``\n`` and ``\r`` end lines) and reports each as a ``field_too_large``
    bad line. The header line is never left out: a header that long is a UserFacingError."""

    def __init__(self, stream: Any, dropped: deque[BadLine], uri: str) -> None:
        self._stream = stream
        self._uri = uri
        self._dropped = dropped
        self._buffer = bytearray()  # filtered bytes not read yet
        self._partial = b""  # the start of the current line (at most MAX_LINE_BYTES)
        self._skipping: tuple[bytes, int] | None = None  # (start, length so far) of a line being left out
        self._header = True  # the first line has not ended yet
        self._eof = False
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        while not self._eof and (size < 0 or len(self._buffer) < size):
            chunk = self._stream.read(_CSV_BLOCK_BYTES)
            if chunk:
                self._buffer += self._filter(bytes(chunk))
            else:
                self._eof = True
                self._finish()
        size = len(self._buffer) if size < 0 else min(size, len(self._buffer))
        out = bytes(self._buffer[:size])
        del self._buffer[:size]
        return out

    def close(self) -> None:
        self.closed = True

    def _filter(self, chunk: bytes) -> bytes:
        if self._skipping is not None:
            end = _line_end(chunk, 0)
            start, length = self._skipping
            if end < 0:
                self._skipping = (start, length + len(chunk))
                return b""
            self._drop(start, length + end)
            self._skipping = None
            chunk = chunk[end:]  # the line end stays: the reader sees an empty line
        data = self._partial + chunk
        kept, start = [], 0
        line = 0  # where the current line starts
        while True:
            newline = max(data.rfind(b"\n", line, line + MAX_LINE_BYTES + 1),
                          data.rfind(b"\r", line, line + MAX_LINE_BYTES + 1))  # fmt: skip
            if newline >= 0:
                self._header = False
                line = newline + 1
                continue
            if len(data) - line <= MAX_LINE_BYTES:
                break
            if self._header:
                raise UserFacingError(
                    f"manifest file {self._uri}: its header line is longer than {MAX_LINE_BYTES} bytes"
                )
            kept.append(data[start:line])
            end = _line_end(data, line)
            if end < 0:
                self._skipping = (data[line : line + _SHOWN_BYTES], len(data) - line)
                self._partial = b""
                return b"".join(kept)
            self._drop(data[line : line + _SHOWN_BYTES], end - line)
            start = line = end
        kept.append(data[start:line])
        self._partial = data[line:]
        return b"".join(kept)

    def _finish(self) -> None:
        if self._skipping is not None:
            self._drop(*self._skipping)
            self._skipping = None
        self._buffer += self._partial
        self._partial = b""

    def _drop(self, start: bytes, length: int) -> None:
        text = start.decode("utf-8", "replace")
        self._dropped.append(BadLine(f"{text}... [{length} bytes in all]", FIELD_TOO_LARGE))


def _line_end(data: bytes, start: int) -> int:
    """The index of the first line end (``\n`` or ``\r``) at or after ``start``; -1 when none."""
    ends = [i for i in (data.find(b"\n", start), data.find(b"\r", start)) if i >= 0]
    return min(ends) if ends else -1


def _utf8_rows(table: pa.Table, delimiter: str) -> tuple[pa.Table, list[BadLine]]:
    """Binary CSV columns -> strings; a row with a value that is not UTF-8 becomes a bad line."""
    columns, bad = _as_utf8(table)
    if not bad.any():
        return pa.table(columns, names=table.column_names), []
    rows = [
        delimiter.join(_show(value) for value in values)
        for values in zip(*(table.column(i).to_pylist() for i in range(table.num_columns)), strict=True)
    ]
    return _without(columns, table.column_names, bad), [BadLine(rows[i], NOT_UTF8) for i in bad.nonzero()[0]]


def _as_utf8(table: pa.Table) -> tuple[list[pa.ChunkedArray], np.ndarray]:
    """Every binary column cast to string (invalid values null), and which rows had one."""
    bad = np.zeros(table.num_rows, bool)
    out = []
    for column in table.columns:
        if not _is_binary(column.type):
            out.append(column)
            continue
        try:
            out.append(column.cast(pa.string()))
        except pa.ArrowInvalid:
            values = column.to_pylist()
            for i, value in enumerate(values):
                try:
                    values[i] = None if value is None else value.decode("utf-8")
                except UnicodeDecodeError:
                    values[i], bad[i] = None, True
            out.append(pa.array(values, pa.string()))
    return out, bad


def _without(columns: list[pa.ChunkedArray], names: list[str], bad: np.ndarray) -> pa.Table:
    keep = pa.array((~bad).nonzero()[0])
    return pa.table([column.take(keep) for column in columns], names=names)


def _is_binary(data_type: pa.DataType) -> bool:
    return (
        pa.types.is_binary(data_type)
        or pa.types.is_large_binary(data_type)
        or pa.types.is_fixed_size_binary(data_type)
    )


def _show(value: Any) -> str:
    """A cell as text for a bad line (bytes decoded, invalid UTF-8 as U+FFFD)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _iter_parquet(uri: str, batch_rows: int) -> Iterator[Piece]:
    fs, path = uris.pyarrow_filesystem(uri)
    with fs.open_input_file(path) as handle:
        parquet = pq.ParquetFile(handle)
        _check_unique(parquet.schema_arrow.names, uri)
        if parquet.metadata.num_rows == 0:
            yield pa.table({name: pa.array([], pa.string()) for name in parquet.schema_arrow.names}), []
            return
        for record_batch in parquet.iter_batches(batch_size=batch_rows):
            yield _all_strings(pa.Table.from_batches([record_batch]))


def _all_strings(table: pa.Table) -> Piece:
    """Every column as strings: plain casts where Arrow has one, JSON text for nested values; a
    row with a binary value that is not UTF-8 becomes a bad line (its values as JSON)."""
    columns, bad = _as_utf8(table)
    out = []
    for column in columns:
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
    if not bad.any():
        return pa.table(out, names=table.column_names), []
    names = table.column_names
    rows = table.filter(pa.array(bad)).to_pylist()
    lines = [json.dumps({name: _show(row[name]) for name in names}, ensure_ascii=False) for row in rows]
    return _without(out, names, bad), [BadLine(line, NOT_UTF8) for line in lines]


def _iter_jsonl(uri: str, batch_rows: int) -> Iterator[Piece]:
    rows: list[dict[str, Any]] = []
    bad_lines: list[BadLine] = []
    for raw in _iter_lines(uri):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            bad_lines.append(BadLine(raw.decode("utf-8", "replace"), NOT_UTF8))
            continue
        if not text.strip():
            continue
        try:
            value = json.loads(text, parse_int=_Number, parse_float=_Number, parse_constant=_Number)
        except (json.JSONDecodeError, RecursionError):
            value = None
        if isinstance(value, dict):
            rows.append(value)
        else:
            bad_lines.append(BadLine(text, MALFORMED_LINE))
        if len(rows) >= batch_rows:
            yield _json_rows_table(rows), bad_lines
            rows, bad_lines = [], []
    yield _json_rows_table(rows), bad_lines


class _Number(str):
    """A JSON number (or NaN / Infinity) as its text in the file."""


def _iter_lines(uri: str) -> Iterator[bytes]:
    """The lines of a text file without their line ends (a leading BOM dropped), undecoded."""
    remainder = b""
    first = True
    with _open_stream(uri) as stream:
        while chunk := stream.read(_CSV_BLOCK_BYTES):
            if first:
                chunk, first = chunk.removeprefix(b"\xef\xbb\xbf"), False
            lines = (remainder + chunk).split(b"\n")
            remainder = lines.pop()
            for line in lines:
                yield line.rstrip(b"\r")
    if remainder:
        yield remainder.rstrip(b"\r")


def _json_rows_table(rows: list[dict[str, Any]]) -> pa.Table:
    names = list(dict.fromkeys(key for row in rows for key in row))
    return pa.table(
        {name: pa.array([_json_cell(row.get(name)) for row in rows], pa.string()) for name in names}
    )


def _json_cell(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return str(value)  # numbers too, as written
    return json.dumps(_plain(value))


def _plain(value: Any) -> Any:
    """A nested JSON value with its numbers as numbers again (to write it back as JSON)."""
    if isinstance(value, _Number):
        return json.loads(value)
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value
