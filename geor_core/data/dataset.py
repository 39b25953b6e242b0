"""A `geor prepare` output: its layout, its statistics, and reading it back (Ray-free).

Layout under the output URI::

    data/          Parquet shards of training rows (schema: ``cor_rows.OUTPUT_SCHEMA``)
    rejects/       Parquet: every rejected row, its manifest columns as strings + reason
    stats.json     rows_in, rows_out, rows_rejected, rejects_by_reason, splits, top_countries, seconds
    _SUCCESS.json  written last: the stats, the config and manifest fingerprints

Downstream stages call ``read_prepared(uri, split)``; it refuses an output without its marker.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from geor_core import uris
from geor_core.data.cor_rows import OUTPUT_SCHEMA
from geor_core.errors import UserFacingError

DATA_DIR = "data"
REJECTS_DIR = "rejects"
STATS_FILE = "stats.json"
OUTPUT_ENTRIES = (DATA_DIR, REJECTS_DIR, STATS_FILE)  # what a run writes besides the marker
TOP_COUNTRIES = 20


def require_prepared(uri: str) -> dict[str, Any]:
    """The completion marker of a `geor prepare` output; UserFacingError when it is not complete."""
    try:
        marker = uris.read_marker(uri)
    except ValueError as exc:
        raise UserFacingError(str(exc)) from exc
    if marker is None:
        raise UserFacingError(
            f"{uri} is not a complete `geor prepare` output (no {uris.MARKER_NAME}); "
            f"run `geor prepare --output {uri}` first"
        )
    return marker


def parquet_files(uri: str) -> tuple[pafs.FileSystem, list[str]]:
    """(pyarrow filesystem, sorted paths of the .parquet files under ``uri``); none if it is absent."""
    fs, path = uris.pyarrow_filesystem(uri)
    selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
    infos = fs.get_file_info(selector)
    names = [info.path for info in infos if info.is_file and info.path.endswith(".parquet")]
    return fs, sorted(name for name in names if not name.rsplit("/", 1)[-1].startswith((".", "_")))


def _dataset(
    uri: str, schema: pa.Schema | None = None, dictionary_columns: tuple[str, ...] = ()
) -> pads.Dataset:
    fs, files = parquet_files(uri)
    file_format = pads.ParquetFileFormat(read_options={"dictionary_columns": list(dictionary_columns)})
    return pads.dataset(files, filesystem=fs, format=file_format, schema=schema)


def read_prepared(
    uri: str, split: str | None = None, columns: list[str] | None = None, groups: list[str] | None = None
) -> pa.Table:
    """The training rows of a complete `geor prepare` output, optionally one split, the rows whose
    ``group`` (``prepare.group_col``) is one of ``groups``, and some columns."""
    require_prepared(uri)
    dataset = _dataset(uris.join(uri, DATA_DIR), OUTPUT_SCHEMA)
    return dataset.to_table(columns=columns, filter=_row_filter(split, groups))


def iter_prepared(
    uri: str, split: str, columns: list[str], groups: list[str] | None = None, batch_rows: int = 4096
) -> Iterator[pa.Table]:
    """``read_prepared``'s rows as tables of at most ``batch_rows`` rows, read as they are needed."""
    require_prepared(uri)
    dataset = _dataset(uris.join(uri, DATA_DIR), OUTPUT_SCHEMA)
    for batch in dataset.to_batches(
        columns=columns, filter=_row_filter(split, groups), batch_size=batch_rows
    ):
        if batch.num_rows:
            yield pa.Table.from_batches([batch])


def head_prepared(uri: str, split: str, columns: list[str], rows: int, batch_rows: int = 4096) -> pa.Table:
    """The first ``rows`` rows of ``read_prepared(uri, split, columns)``, reading batches of at
    most ``batch_rows`` rows one at a time and no further than needed (a val subset of a split
    of millions of rows)."""
    require_prepared(uri)
    dataset = _dataset(uris.join(uri, DATA_DIR), OUTPUT_SCHEMA)
    return dataset.head(
        rows,
        columns=columns,
        filter=_row_filter(split, None),
        batch_size=max(1, min(rows, batch_rows)),
        batch_readahead=1,
        fragment_readahead=1,
    )


def _row_filter(split: str | None, groups: list[str] | None) -> pc.Expression | None:
    row_filter = None if split is None else pc.field("split") == split
    if groups:
        in_groups = pc.field("group").isin(list(groups))
        row_filter = in_groups if row_filter is None else row_filter & in_groups
    return row_filter


def group_counts(uri: str, split: str) -> dict[str | None, int]:
    """Rows of one split of a complete `geor prepare` output by ``group`` (None: no group column)."""
    groups = read_prepared(uri, split, ["group"]).column("group")
    return {item["values"]: item["counts"] for item in pc.value_counts(groups).to_pylist()}


def read_rejects(uri: str) -> pa.Table:
    """Every rejected row of a `geor prepare` output (complete or not), as written."""
    fs, files = parquet_files(uris.join(uri, REJECTS_DIR))
    if not files:
        return pa.table({"reason": pa.array([], pa.string())})
    return pads.dataset(files, filesystem=fs, format="parquet").to_table()


def output_stats(uri: str, rows_in: int, seconds: float) -> dict[str, Any]:
    """Statistics of what an output holds on disk, counted from its files (not from the job)."""
    splits: Counter[str] = Counter()
    countries: Counter[str] = Counter()
    counted = ("split", "country_code")
    schema = pa.schema([pa.field(name, pa.dictionary(pa.int32(), pa.string())) for name in counted])
    data = _dataset(uris.join(uri, DATA_DIR), schema, dictionary_columns=counted)  # dictionaries: fast counts
    for batch in data.to_batches(columns=list(counted)):
        splits.update(_value_counts(batch.column(0)))
        countries.update(_value_counts(batch.column(1)))
    reasons: Counter[str] = Counter()
    rejects_fs, reject_files = parquet_files(uris.join(uri, REJECTS_DIR))
    if reject_files:
        rejects = pads.dataset(reject_files, filesystem=rejects_fs, format="parquet")
        for batch in rejects.to_batches(columns=["reason"]):
            reasons.update(_value_counts(batch.column(0)))
    rows_out, rows_rejected = sum(splits.values()), sum(reasons.values())
    return {
        "rows_in": rows_in,
        "rows_out": rows_out,
        "rows_rejected": rows_rejected,
        "rejects_by_reason": dict(sorted(reasons.items())),
        "splits": dict(sorted(splits.items())),
        "top_countries": dict(countries.most_common(TOP_COUNTRIES)),
        "seconds": round(seconds, 3),
    }


def _value_counts(values: pa.Array) -> dict[str, int]:
    counts = pc.value_counts(values)
    return dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True))
