"""Reading photo manifests: CSV/TSV, Parquet or JSONL, local or ``s3://``, one file or a prefix of many.

Every cell comes back as a string (so ``abc`` in a latitude column is a non-numeric value for the
validator to reject, not a read failure), with the original column names. CSV lines with the
wrong number of fields and JSONL lines that are not JSON objects come back as *bad lines* (their
raw text and a reason code: ``malformed_line``), never as a crash; so do rows with a value that is
not UTF-8 (``not_utf8``) and CSV lines over ``manifest_formats.MAX_LINE_BYTES``
(``field_too_large``). A header that names a column twice is a UserFacingError. A UTF-8 BOM is
skipped; quoted commas and quoted line breaks are ordinary values; ``.gz`` / ``.bz2`` / ``.zst``
files are decompressed on the fly.

Manifest order, which decides which of two rows with the same id is kept, is: files sorted by
URI, then rows in file order. A file is read as a stream of batches, so memory is bounded by the
batch size, not the file size. The format readers are in manifest_formats.py.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa

from geor_core import uris
from geor_core.data.manifest_formats import MAX_LINE_BYTES, BadLine, read_pieces
from geor_core.errors import UserFacingError

FORMATS_BY_SUFFIX = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".zst")


@dataclass(frozen=True)
class ManifestFile:
    """One file of a manifest: where it is, its place in manifest order and how to parse it."""

    uri: str
    index: int
    format: str  # csv, tsv, parquet or jsonl
    folder: str  # the file's folder: image references are relative to it unless images_root is set


@dataclass
class ManifestBatch:
    """A slice of one manifest file: rows as an all-string table, plus the bad lines met."""

    table: pa.Table
    first_row: int  # index within the file (among well-formed rows) of the table's first row
    bad_lines: list[BadLine] = field(default_factory=list)

    @property
    def malformed(self) -> list[str]:
        """The text of every bad line (each is one rejected row, whatever its reason)."""
        return [line.text for line in self.bad_lines]


@dataclass(frozen=True)
class ColumnRoles:
    """Which manifest column plays which part. ``id`` None: the image reference is the id;
    ``image`` None: the id is the image reference."""

    id: str | None
    image: str | None
    lat: str
    lon: str
    group: str | None = None  # copied into each row's ``group``; None: no group column


def manifest_format(uri: str) -> str | None:
    """csv, tsv, parquet or jsonl from the file name (a compression suffix is looked through)."""
    name = uri.rsplit("/", 1)[-1].lower()
    for suffix in COMPRESSION_SUFFIXES:
        name = name.removesuffix(suffix)
    for suffix, kind in FORMATS_BY_SUFFIX.items():
        if name.endswith(suffix):
            return kind
    return None


def list_manifest_files(uri: str) -> list[ManifestFile]:
    """The files of a manifest URI (one file, or every supported file under a folder / prefix).

    Files and folders whose names start with ``.`` or ``_`` are skipped (markers, temp files)."""
    try:
        fs, path = uris.filesystem(uri)
    except ValueError as exc:
        raise UserFacingError(f"manifest {uri!r}: {exc}") from exc
    if fs.isfile(path):
        if manifest_format(uri) is None:
            raise UserFacingError(f"manifest {uri} is not a {_supported()} file")
        found = [uri]
    elif fs.isdir(path):
        base = uri.rstrip("/")
        found = []
        for entry in sorted(fs.find(path)):
            relative = entry[len(path) :].strip("/")
            if any(part.startswith((".", "_")) for part in relative.split("/")):
                continue
            if manifest_format(relative) is not None:
                found.append(uris.join(base, relative))
        if not found:
            raise UserFacingError(f"manifest folder {uri} has no {_supported()} files")
    else:
        raise UserFacingError(f"manifest {uri} does not exist")
    return [
        ManifestFile(uri=file_uri, index=i, format=manifest_format(file_uri) or "", folder=_folder(file_uri))
        for i, file_uri in enumerate(found)
    ]


def manifest_folder(uri: str) -> str:
    """The folder of a manifest: the URI itself when it names a folder, else the file's folder.
    Local image references must stay inside it (or ``prepare.images_root``)."""
    fs, path = uris.filesystem(uri)
    if uris.is_s3(uri):
        return uri.rstrip("/") if fs.isdir(path) else _folder(uri)
    return path if fs.isdir(path) else _folder(uri)


def manifest_fingerprint(files: list[ManifestFile]) -> str:
    """A 16-hex-digit hash of the manifest's files: URI, size and version (S3 ETag, else the
    modification time), so editing a file in place changes it. No data is read."""
    entries = []
    for file in files:
        fs, path = uris.filesystem(file.uri)
        info = fs.info(path)
        version = info.get("ETag") or info.get("mtime") or info.get("LastModified")
        entries.append([file.uri, info.get("size"), str(version)])
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def _supported() -> str:
    return "/".join(sorted(set(FORMATS_BY_SUFFIX.values())))


def _folder(file_uri: str) -> str:
    if uris.is_s3(file_uri):
        return file_uri.rsplit("/", 1)[0]
    return uris.filesystem(file_uri)[1].rsplit("/", 1)[0] or "/"


def resolve_columns(
    columns: list[str],
    id_col: str,
    image_col: str,
    lat_col: str,
    lon_col: str,
    where: str,
    group_col: str = "",
) -> ColumnRoles:
    """Match configured column names to a file's columns: exactly, else case-insensitively if
    unique. An absent id column means the image reference is the id, and vice versa; missing
    coordinates, neither an id nor an image column, or a ``group_col`` that is set but absent,
    raise UserFacingError naming ``where``."""

    def find(name: str) -> str | None:
        if not name:
            return None
        if name in columns:
            return name
        folded = [c for c in columns if c.strip().casefold() == name.strip().casefold()]
        return folded[0] if len(folded) == 1 else None

    roles = ColumnRoles(
        id=find(id_col),
        image=find(image_col),
        lat=find(lat_col) or "",
        lon=find(lon_col) or "",
        group=find(group_col),
    )
    missing = [f"{flag} {name!r}" for flag, name, got in (
        ("--lat-col", lat_col, roles.lat), ("--lon-col", lon_col, roles.lon)) if not got]  # fmt: skip
    if group_col and roles.group is None:
        missing.append(f"prepare.group_col {group_col!r}")
    if roles.id is None and roles.image is None:
        missing.append(f"--id-col {id_col!r} or --image-col {image_col!r}")
    if missing:
        raise UserFacingError(
            f"manifest {where} has no column {' / '.join(missing)}; its columns: {', '.join(columns)}"
        )
    return roles


def iter_batches(file: ManifestFile, batch_rows: int) -> Iterator[ManifestBatch]:
    """Stream one manifest file as all-string batches of about ``batch_rows`` rows.

    Every well-formed row appears in exactly
    one batch, in file order; every bad line in exactly one batch's ``bad_lines`` list. The
    last batch may have no rows (it then carries the remaining bad lines)."""
    try:
        yield from _rebatch(read_pieces(file.uri, file.format, batch_rows), batch_rows)
    except (pa.ArrowInvalid, UnicodeDecodeError, OSError) as exc:
        if "straddling" in str(exc):  # pyarrow's block size: no setting of ours changes it
            raise UserFacingError(
                f"manifest file {file.uri} has a row longer than {MAX_LINE_BYTES} bytes spread over "
                "several lines (a quoted value with line breaks); such rows cannot be read"
            ) from exc
        raise UserFacingError(f"manifest file {file.uri} cannot be read as {file.format}: {exc}") from exc


def _rebatch(parts: Iterator[tuple[pa.Table, list[BadLine]]], batch_rows: int) -> Iterator[ManifestBatch]:
    """Cut reader pieces into batches of ``batch_rows`` rows (the last may be smaller)."""
    pending = pa.table({})
    template = pa.table({})  # an empty table that still has the column names
    malformed: list[BadLine] = []
    next_row = 0
    for table, bad_lines in parts:
        if table.num_rows:
            pending = _concat([pending, table]) if pending.num_rows else table
        elif table.num_columns:
            template = table
        malformed += bad_lines
        while pending.num_rows >= batch_rows:
            yield ManifestBatch(pending.slice(0, batch_rows), next_row, malformed)
            next_row += batch_rows
            pending, malformed = pending.slice(batch_rows), []
    if pending.num_rows or malformed or next_row == 0:
        yield ManifestBatch(pending if pending.num_rows else template, next_row, malformed)


def _concat(tables: list[pa.Table]) -> pa.Table:
    if not tables:
        return pa.table({})
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables, promote_options="permissive")
