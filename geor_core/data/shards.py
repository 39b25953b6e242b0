"""Sharded inference output that resumes: fixed row ranges, one Parquet file and one marker each.

The input rows, in a fixed order, are cut into shards of ``rows_per_shard`` consecutive rows.
Shard ``k`` is written as ``<dir>/part-0000k.parquet`` (atomically: the whole file or nothing),
then its completion marker ``<dir>/_markers/part-0000k.json`` naming the run's fingerprint (the
model and every setting that changes a prediction) and a digest of the shard's ids. A shard is
finished only when its marker matches the current fingerprint and ids, so a killed run resumes
without redoing finished shards, and a changed model, setting or row selection recomputes the
shards it affects. ``<dir>`` holds nothing else readable as a table: `geor score --predictions
<dir>` reads every shard.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from geor_core import uris

MARKERS_DIR = "_markers"
SCAN_THREADS = 16  # concurrent marker reads when planning a run
_PREFIX = "part-"


@dataclass(frozen=True)
class Shard:
    """Rows ``start`` (inclusive) to ``stop`` (exclusive) of the input, and a digest of their ids."""

    index: int
    start: int
    stop: int
    ids_digest: str

    @property
    def rows(self) -> int:
        return self.stop - self.start


def plan_shards(ids: Sequence[str] | pa.Array | pa.ChunkedArray, rows_per_shard: int) -> list[Shard]:
    """Cut the ids (in input order) into consecutive shards of ``rows_per_shard`` rows. An Arrow
    column is read one shard at a time: no Python list of every id."""
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard!r}")
    shards = []
    for index, start in enumerate(range(0, len(ids), rows_per_shard)):
        stop = min(start + rows_per_shard, len(ids))
        part = (
            ids.slice(start, stop - start).to_pylist()
            if isinstance(ids, pa.Array | pa.ChunkedArray)
            else ids[start:stop]
        )
        digest = hashlib.sha256("\0".join(map(str, part)).encode()).hexdigest()[:16]
        shards.append(Shard(index, start, stop, digest))
    return shards


def shard_uri(directory: str, index: int) -> str:
    """Where shard ``index``'s Parquet file lives."""
    return uris.join(directory, f"{_PREFIX}{index:05d}.parquet")


def _marker_uri(directory: str, index: int) -> str:
    return uris.join(directory, MARKERS_DIR, f"{_PREFIX}{index:05d}.json")


def _marker_payload(shard: Shard, fingerprint: str) -> dict:
    return {"fingerprint": fingerprint, "ids_digest": shard.ids_digest, "rows": shard.rows}


def _marker_matches(directory: str, shard: Shard, fingerprint: str) -> bool:
    try:
        marker = json.loads(uris.read_text(_marker_uri(directory, shard.index)))
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return marker == _marker_payload(shard, fingerprint)


def scan(directory: str, plan: Sequence[Shard], fingerprint: str) -> tuple[set[int], set[int]]:
    """(indices of the finished shards: their file is there and their marker names this fingerprint
    and the same ids; indices of the shards with any marker), from two
    listings and the present markers read concurrently: no storage round trip per shard in
    sequence (an S3 run over millions of rows has thousands of shards)."""
    files, markers = _names(directory), _names(uris.join(directory, MARKERS_DIR))
    marked = [s for s in plan if f"{_PREFIX}{s.index:05d}.json" in markers]
    candidates = [s for s in marked if f"{_PREFIX}{s.index:05d}.parquet" in files]
    with ThreadPoolExecutor(max_workers=SCAN_THREADS) as pool:
        matches = list(pool.map(lambda shard: _marker_matches(directory, shard, fingerprint), candidates))
    done = {shard.index for shard, match in zip(candidates, matches, strict=True) if match}
    return done, {shard.index for shard in marked}


def _names(directory: str) -> set[str]:
    try:
        return {entry.rstrip("/").rsplit("/", 1)[-1] for entry in uris.listdir(directory)}
    except FileNotFoundError:
        return set()


def write_shard(directory: str, shard: Shard, table: pa.Table, fingerprint: str) -> None:
    """Write the shard's rows (all of them: one per input row), then its marker."""
    if table.num_rows != shard.rows:
        raise ValueError(
            f"shard {shard.index} covers {shard.rows} input rows but {table.num_rows} were given"
        )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    uris.write_atomic(shard_uri(directory, shard.index), buffer.getvalue())
    uris.write_text(_marker_uri(directory, shard.index), json.dumps(_marker_payload(shard, fingerprint)))


def invalidate(directory: str, shard: Shard) -> None:
    """Remove a shard's marker before it is recomputed, so a crash never leaves a stale one."""
    uris.remove_tree(_marker_uri(directory, shard.index))


def remove_beyond(directory: str, shard_count: int) -> list[str]:
    """Delete shard files and markers numbered ``shard_count`` or more (left by a run over more
    rows), so the directory holds exactly this run's shards; returns what was deleted."""
    if not uris.exists(directory):
        return []
    stale = []
    for folder in (directory, uris.join(directory, MARKERS_DIR)):
        if not uris.exists(folder):
            continue
        for entry in uris.listdir(folder):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            number = name.removeprefix(_PREFIX).split(".", 1)[0]
            if name.startswith(_PREFIX) and number.isdigit() and int(number) >= shard_count:
                uris.remove_tree(entry)
                stale.append(entry)
    return stale
