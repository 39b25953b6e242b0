"""The seeded bottom-K sample of a row stream: uniform, the same whatever the stream's order and
batching, bounded, and every row when there are fewer than K."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

from geor_core.data.row_sample import sample_rows

ROWS = 5000


def table(indices: list[int]) -> pa.Table:
    return pa.table({"id": [f"photo-{i:05d}" for i in indices], "index": indices})


def batches(indices: list[int], size: int) -> list[pa.Table]:
    return [table(indices[start : start + size]) for start in range(0, len(indices), size)]


def test_the_sample_does_not_depend_on_the_streams_order_or_batching():
    ordered = list(range(ROWS))
    shuffled = ordered.copy()
    random.Random(7).shuffle(shuffled)
    first = sample_rows(batches(ordered, 1024), 200, seed=3)
    again = sample_rows(batches(shuffled, 97), 200, seed=3)
    assert first.num_rows == 200
    assert first.column("id").to_pylist() == again.column("id").to_pylist()  # same rows, same order
    other_seed = sample_rows(batches(ordered, 1024), 200, seed=4)
    assert set(other_seed.column("id").to_pylist()) != set(first.column("id").to_pylist())


def test_a_stream_sorted_in_blocks_is_sampled_uniformly():
    """A stream's first K rows are one corner of it; the sample spreads over every tenth of it."""
    picked = np.array(sample_rows(batches(list(range(ROWS)), 500), 500, seed=0).column("index"))
    per_tenth = np.bincount(picked * 10 // ROWS, minlength=10)
    assert per_tenth.min() >= 25 and per_tenth.max() <= 75, per_tenth  # 50 expected in each
    assert not np.array_equal(np.sort(picked), np.arange(500))
    assert not np.all(np.diff(picked) > 0)  # key order: a shuffled order, not the stream's


def test_fewer_rows_than_k_are_all_kept_and_repeated_ids_are_ordered_by_id():
    rows = table([3, 1, 2, 1])
    sample = sample_rows([rows.slice(0, 2), rows.slice(2)], 10, seed=0)
    assert sorted(sample.column("index").to_pylist()) == [1, 1, 2, 3]
    with pytest.raises(ValueError, match="k >= 1"):
        sample_rows([rows], 0, seed=0)
    with pytest.raises(ValueError, match="no rows"):
        sample_rows([], 5, seed=0)
