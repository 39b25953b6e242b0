"""A model's evaluation report computed in Ray Data: its prediction shards are read by Ray Data
workers, each block becomes a small tally (geor_core.scoring.report_tally), and the driver merges
the tallies one by one. The driver never holds the predictions: its memory is the report's (counts
per slice, an error histogram per reported slice, the worst rows, the map's sample), whatever
the number of rows. Two passes over the shards: the tallies, then the errors in the histogram
bins that hold each reported median (exact medians without sorting every error).

Up to ``eval.report_in_driver_rows`` rows (default 20,000, about 40 MB of pandas: 1.9 KB a row
measured) the driver reads the table once and runs the same code in one pass: Ray Data's fixed
seconds per pass (a few on 2 cores) would cost more than the work.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd

from geor_core.data.dataset import parquet_files
from geor_core.scoring.report_tally import ModelReport, ReportTally, medians, report_of_table, selected_errors
from geor_core.scoring.scoring import read_table
from tasks.parquet_read import read_files
from tasks.ray_session import connect_ray

TALLY_COLUMN = "tally"


def tally_report(
    predictions_uri: str,
    rows: int,
    *,
    splits: list[str],
    worst_n: int,
    top_countries: int,
    in_driver_rows: int,
) -> ModelReport:
    """The report of the ``rows`` predictions under ``predictions_uri``: read whole and reported in
    this process when ``rows <= in_driver_rows`` (a small table: Ray Data's fixed seconds would
    dominate), else tallied in Ray Data (connects to Ray: call it inside ``ray_scope()``)."""
    if rows <= in_driver_rows:
        return report_of_table(
            read_table(predictions_uri), splits=splits, worst_n=worst_n, top_countries=top_countries
        )
    connect_ray()
    fs, files = parquet_files(predictions_uri)
    if not files:
        raise RuntimeError(f"{predictions_uri} holds no prediction shard")
    dataset = read_files(files, fs, num_cpus=1)  # a block per shard: a worker holds one at a time
    tally: ReportTally | None = None
    for part in _per_block(dataset, ReportTally.of, worst_n=worst_n):
        tally = part if tally is None else tally.merge(part)
    assert tally is not None
    requests = tally.median_requests(top_countries)
    selections = list(_per_block(dataset, selected_errors, requests=requests))
    return tally.report(medians(tally, requests, selections), splits, top_countries)


def _per_block(dataset: Any, fn: Callable[..., Any], **kwargs: Any) -> Iterator[Any]:
    """``fn(block as a DataFrame, **kwargs)`` on every block in the workers, its results here."""
    parts = dataset.map_batches(
        _pickled(fn), batch_format="pandas", batch_size=None, fn_kwargs=kwargs, zero_copy_batch=True
    )
    for batch in parts.iter_batches(batch_size=None, batch_format="pyarrow"):
        for payload in batch.column(TALLY_COLUMN).to_pylist():
            yield pickle.loads(payload)


def _pickled(fn: Callable[..., Any]) -> Callable[..., dict[str, list[bytes]]]:
    def apply(block: pd.DataFrame, **kwargs: Any) -> dict[str, list[bytes]]:
        return {TALLY_COLUMN: [pickle.dumps(fn(block, **kwargs))]}

    return apply
