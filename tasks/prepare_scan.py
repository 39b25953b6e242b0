"""Pass 1 of `geor prepare`, on Ray: count every manifest file's rows and settle duplicate ids.

One task per manifest file reads it with the same reader as the main pass (so row numbers
agree), resolves its column roles, counts rows and bad lines and hashes its ids. The
driver keeps 9 bytes per row (33 at the peak, while sorting) to find repeated hashes; a second,
small round of tasks fetches the ids of only those rows, so duplicates are decided on the
strings (geor_core/data/dedupe.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import ray

from geor_core.config import PrepareConfig
from geor_core.data.cor_rows import row_ids
from geor_core.data.dedupe import candidate_rows, duplicate_rows, hash_ids
from geor_core.data.manifest import ColumnRoles, ManifestFile, iter_batches, resolve_columns
from geor_core.errors import UserFacingError


@dataclass
class FileScan:
    """What pass 1 learned about one manifest file."""

    rows: int = 0
    malformed: int = 0
    columns: list[str] = field(default_factory=list)
    roles: ColumnRoles | None = None  # None: the file has no columns (empty)
    error: str = ""  # a user-facing problem with the file, e.g. a missing column
    hashes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    present: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))


@dataclass
class ManifestScan:
    """Pass 1's result for the whole manifest."""

    files: list[ManifestFile]
    roles: list[ColumnRoles | None]  # by file index
    rows_in: int  # well-formed rows + bad lines (malformed, not UTF-8, too large)
    columns: tuple[str, ...]  # every file's columns, in first-seen order
    duplicate_rows: dict[int, np.ndarray]  # file index -> sorted row indices of repeated ids


def _scan_file(file: ManifestFile, prepare: PrepareConfig) -> FileScan:
    scan = FileScan()
    hashes, present = [], []
    try:
        for batch in iter_batches(file, prepare.batch_size):
            scan.malformed += len(batch.malformed)
            for name in batch.table.column_names:
                if name not in scan.columns:
                    scan.columns.append(name)
            if batch.table.num_rows == 0:
                continue
            if scan.roles is None:
                scan.roles = _roles(scan.columns, prepare, file.uri)
            scan.rows += batch.table.num_rows
            if prepare.dedupe:
                batch_hashes, batch_present = hash_ids(row_ids(batch.table, scan.roles))
                hashes.append(batch_hashes)
                present.append(batch_present)
        if scan.roles is None and scan.columns:
            scan.roles = _roles(scan.columns, prepare, file.uri)
    except UserFacingError as exc:
        scan.error = str(exc)
    if hashes:
        scan.hashes, scan.present = np.concatenate(hashes), np.concatenate(present)
    return scan


def _roles(columns: list[str], prepare: PrepareConfig, where: str) -> ColumnRoles:
    return resolve_columns(
        columns, prepare.id_col, prepare.image_col, prepare.lat_col, prepare.lon_col, where, prepare.group_col
    )


def _collect_ids(file: ManifestFile, roles: ColumnRoles, rows: np.ndarray, batch_rows: int) -> list[str]:
    """The ids at ``rows`` (sorted row indices) of one file."""
    ids: list[str] = []
    for batch in iter_batches(file, batch_rows):
        end = batch.first_row + batch.table.num_rows
        wanted = rows[(rows >= batch.first_row) & (rows < end)] - batch.first_row
        if wanted.size:
            ids += row_ids(batch.table, roles).take(wanted).to_pylist()
    return ids


def scan_manifest(files: list[ManifestFile], prepare: PrepareConfig) -> ManifestScan:
    """Run pass 1 over ``files`` (Ray must be initialised); UserFacingError for a bad file."""
    scan_task = ray.remote(_scan_file).options(num_cpus=prepare.cpus_per_task, name="prepare_scan")
    scans: list[FileScan] = ray.get([scan_task.remote(file, prepare) for file in files])
    for scan in scans:
        if scan.error:
            raise UserFacingError(scan.error)
    columns: list[str] = []
    for scan in scans:
        columns += [name for name in scan.columns if name not in columns]
    duplicates: dict[int, np.ndarray] = {}
    if prepare.dedupe:
        candidates = candidate_rows([s.hashes for s in scans], [s.present for s in scans])
        for scan in scans:
            scan.hashes = scan.present = None  # type: ignore[assignment]  # free ~9 bytes per row
        collect_task = ray.remote(_collect_ids).options(num_cpus=prepare.cpus_per_task, name="prepare_dedupe")
        refs = {
            index: collect_task.remote(files[index], scans[index].roles, rows, prepare.batch_size)
            for index, rows in candidates.items()
        }
        duplicates = duplicate_rows({index: (candidates[index], ray.get(ref)) for index, ref in refs.items()})
    return ManifestScan(
        files=files,
        roles=[scan.roles for scan in scans],
        rows_in=sum(scan.rows + scan.malformed for scan in scans),
        columns=tuple(columns),
        duplicate_rows=duplicates,
    )
