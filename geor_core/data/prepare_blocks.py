"""The per-block work of `geor prepare`, free of Ray: manifest file -> raw blocks -> training rows.

``read_raw_blocks`` turns one manifest file into *raw blocks*: all-string tables of the file's
rows plus bookkeeping columns: ``__file`` (file index), ``__row`` (the row's index in its file;
for a bad line -1, -2, ... in order), ``__line`` and ``__reason`` (the text and reason code of a
bad line: malformed, not UTF-8, too large; else null) and ``__duplicate`` (the id appeared
earlier in the manifest). A bad line is a row of its own, every manifest column null.

``transform_block`` turns a raw block (or any slice of one: Ray Data may split blocks) into
training rows (``cor_rows.OUTPUT_SCHEMA``) and writes the slice's rejects itself, to
``<rejects>/part-<file>-<first row>.parquet``: every manifest column of the job (as strings; a
manifest column that clashes with a name below is kept as ``manifest_<name>``) plus ``reason``,
``line`` (bad lines), ``source_file`` and ``source_row``. Slices never share a first row,
so no two slices write the same file, and a retried task overwrites rather than duplicates.

The Ray Data pipeline (tasks/prepare.py) and the single-process baseline (benchmarks/prepare.py)
both run exactly these two functions.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from geor_core import uris
from geor_core.data.cor_rows import OUTPUT_SCHEMA, RowRules, prepare_batch
from geor_core.data.image_refs import ReferenceRule
from geor_core.data.manifest import ColumnRoles, ManifestFile, iter_batches
from geor_core.data.manifest_formats import BadLine

REJECT_EXTRA_COLUMNS = ("reason", "line", "source_file", "source_row")


@dataclass(frozen=True)
class FileContext:
    """What the transform needs to know about one manifest file."""

    uri: str
    roles: ColumnRoles | None  # None: the file has no columns at all (an empty file)
    images: ReferenceRule  # where its image references may point, and what they are relative to


@dataclass(frozen=True)
class PrepareJob:
    """Everything a worker needs for ``transform_block``; small enough to ship with every task."""

    files: tuple[FileContext, ...]  # by file index
    rules: RowRules
    rejects_uri: str
    manifest_columns: tuple[str, ...]  # the union of every file's columns, in first-seen order

    def reject_schema(self) -> pa.Schema:
        names = [reject_column_name(name) for name in self.manifest_columns]
        fields = [pa.field(name, pa.string()) for name in names]
        fields += [pa.field("reason", pa.string()), pa.field("line", pa.string())]
        fields += [pa.field("source_file", pa.string()), pa.field("source_row", pa.int64())]
        return pa.schema(fields)


def reject_column_name(manifest_column: str) -> str:
    """A manifest column's name in the rejects table (renamed only when it clashes with ours)."""
    return f"manifest_{manifest_column}" if manifest_column in REJECT_EXTRA_COLUMNS else manifest_column


def read_raw_blocks(file: ManifestFile, batch_rows: int, duplicate_rows: np.ndarray) -> Iterator[pa.Table]:
    """One manifest file as raw blocks of about ``batch_rows`` rows (see the module docstring).

    ``duplicate_rows``: the sorted row indices of this file whose id appeared earlier."""
    malformed_seen = 0
    for block_index, batch in enumerate(iter_batches(file, batch_rows)):
        n = batch.table.num_rows
        rows = np.arange(batch.first_row, batch.first_row + n, dtype=np.int64)
        block = batch.table.append_column("__file", pa.array(np.full(n, file.index, np.int32)))
        block = block.append_column("__row", pa.array(rows))
        block = block.append_column("__line", pa.nulls(n, pa.string()))
        block = block.append_column("__reason", pa.nulls(n, pa.string()))
        block = block.append_column(
            "__duplicate", pa.array(np.isin(rows, duplicate_rows, assume_unique=True))
        )
        if batch.bad_lines:
            lines = _malformed_block(file.index, malformed_seen, batch.bad_lines)
            malformed_seen += len(batch.bad_lines)
            block = pa.concat_tables([block, lines], promote_options="permissive")
        if block.num_rows or block_index == 0:
            yield block


def _malformed_block(file_index: int, seen_before: int, lines: list[BadLine]) -> pa.Table:
    n = len(lines)
    return pa.table(
        {
            "__file": pa.array(np.full(n, file_index, np.int32)),
            "__row": pa.array(-np.arange(seen_before + 1, seen_before + n + 1, dtype=np.int64)),
            "__line": pa.array([line.text for line in lines], pa.string()),
            "__reason": pa.array([line.reason for line in lines], pa.string()),
            "__duplicate": pa.array(np.zeros(n, bool)),
        }
    )


def transform_block(block: pa.Table, job: PrepareJob) -> pa.Table:
    """Raw block -> training rows (``OUTPUT_SCHEMA``); the block's rejects are written on the way."""
    if block.num_rows == 0:
        return OUTPUT_SCHEMA.empty_table()
    files = pc.unique(block["__file"]).to_pylist()  # normally one: a raw block comes from one file
    outputs = []
    for file_index in files:
        part = block.filter(pc.equal(block["__file"], file_index)) if len(files) > 1 else block
        outputs.append(_transform_part(part, file_index, job))
    return pa.concat_tables(outputs) if len(outputs) > 1 else outputs[0]


def _transform_part(part: pa.Table, file_index: int, job: PrepareJob) -> pa.Table:
    file = job.files[file_index]
    malformed = part["__line"].is_valid()
    rows = part.filter(pc.invert(malformed))
    lines = part.filter(malformed)
    rejects = []
    kept = OUTPUT_SCHEMA.empty_table()
    if rows.num_rows:
        if file.roles is None:
            raise ValueError(f"manifest file {file.uri} has rows but no column roles")
        duplicate = rows["__duplicate"].combine_chunks().to_numpy(zero_copy_only=False)
        kept, reason = prepare_batch(rows, file.roles, file.images, job.rules, duplicate)
        rejected = np.flatnonzero(reason != "")
        if rejected.size:
            rejects.append(_rejects(rows.take(pa.array(rejected)), reason[rejected], file.uri, job))
    if lines.num_rows:
        reasons = lines["__reason"].to_numpy(zero_copy_only=False)
        rejects.append(_rejects(lines, reasons, file.uri, job))
    if rejects:
        first_row = part["__row"][0].as_py()
        _write_rejects(pa.concat_tables(rejects), file_index, first_row, job.rejects_uri)
    return kept


def _rejects(rows: pa.Table, reasons: np.ndarray, source_uri: str, job: PrepareJob) -> pa.Table:
    schema = job.reject_schema()
    n = rows.num_rows
    columns = []
    for name in job.manifest_columns:
        columns.append(
            rows[name].cast(pa.string()) if name in rows.column_names else pa.nulls(n, pa.string())
        )
    columns.append(pa.array(reasons, pa.string()))
    columns.append(rows["__line"])
    columns.append(pa.array(np.full(n, source_uri, dtype=object), pa.string()))
    source_row = pc.if_else(pc.less(rows["__row"], 0), pa.scalar(None, pa.int64()), rows["__row"])
    columns.append(source_row)
    return pa.Table.from_arrays([pa.chunked_array(c) if isinstance(c, pa.Array) else c for c in columns],
                                schema=schema)  # fmt: skip


def _write_rejects(rejects: pa.Table, file_index: int, first_row: int, rejects_uri: str) -> None:
    fs, path = uris.pyarrow_filesystem(rejects_uri)
    fs.create_dir(path, recursive=True)
    slice_name = f"{first_row:012d}" if first_row >= 0 else f"m{-first_row:012d}"
    pq.write_table(rejects, f"{path}/part-{file_index:05d}-{slice_name}.parquet", filesystem=fs)
