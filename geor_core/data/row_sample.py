"""A seeded, uniform sample of K rows from a stream of Arrow batches, in bounded memory.

Each row gets a 64-bit key, the siphash of its id under a key derived from the seed; the sample
is the K rows with the smallest keys (bottom-K sampling). That makes it:

- uniform over the rows, whatever the stream's order (a file sorted by country gives no bias);
- the same sample in the same order whatever the order or the batching of the stream, so every
  rank of a data-parallel group that reads the same rows holds the same sample;
- bounded: it never holds more than K rows plus the batch in hand (a batch's rows whose key
  cannot enter are dropped before anything is gathered).

The rows come out sorted by key: a seeded random order. Equal keys (only a repeated id, or a
64-bit collision) are ordered by the id itself, so ties cannot make two ranks differ.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa


def sample_key(seed: int) -> str:
    """The 16-character siphash key of a sample drawn with ``seed`` (unrelated to the splits' key)."""
    return hashlib.sha256(f"geor-sample:{seed}".encode()).hexdigest()[:16]


def _keys(ids: pa.ChunkedArray | pa.Array, seed: int) -> np.ndarray:
    values = np.asarray(ids.to_pylist(), dtype=object)
    return pd.util.hash_array(values, hash_key=sample_key(seed), categorize=False).astype(np.uint64)


def sample_rows(batches: Iterable[pa.Table], k: int, seed: int, id_column: str = "id") -> pa.Table:
    """The ``k`` rows of ``batches`` with the smallest keys (all rows when there are fewer), in key
    order; module docstring."""
    if k < 1:
        raise ValueError(f"a sample needs k >= 1, got {k}")
    held: pa.Table | None = None
    held_keys = np.zeros(0, dtype=np.uint64)
    for batch in batches:
        keys = _keys(batch.column(id_column), seed)
        if held is not None and held.num_rows >= k:
            entering = np.flatnonzero(keys <= held_keys[-1])  # ties may enter: the id decides below
            if not entering.size:
                continue
            batch, keys = batch.take(pa.array(entering)), keys[entering]
        combined = batch if held is None else pa.concat_tables([held, batch.cast(held.schema)])
        combined_keys = np.concatenate([held_keys, keys])
        ids = np.asarray(combined.column(id_column).to_pylist(), dtype=object)
        order = np.lexsort((ids, combined_keys))[:k]
        held, held_keys = combined.take(pa.array(order)).combine_chunks(), combined_keys[order]
    if held is None:
        raise ValueError("no rows to sample from")
    return held
