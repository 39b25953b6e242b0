"""The photos `geor predict` geolocates: a folder of images, or a manifest that lists them.

- A folder (local or ``s3://``): every file under it (recursively) whose name ends in an image
  suffix, sorted; names starting with ``.`` or ``_`` are skipped. The id is the path relative to
  the folder.
- A file: a manifest (CSV/TSV/Parquet/JSONL, geor_core.data.manifest) with an image column and
  optionally an id column (without one, the image reference is the id). References are relative
  to the manifest's folder unless absolute. Coordinates, if present, are ignored.
Image references follow `geor prepare`'s reference rule (geor_core/data/image_refs.py, with
``prepare.allowed_schemes``): a local one must lie, after symlinks, inside the manifest's folder
(the searched folder) or ``prepare.images_root``, and a scheme must be allowed; nothing that
breaks the rule is opened, and every photo that breaks it is listed in one error.
An empty reference is kept (the photo then fails to load and its row says why); an id twice, a
line that is not a row or a missing image column is an error naming what is wrong.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from geor_core import uris
from geor_core.config import PrepareConfig
from geor_core.data.image_refs import ReferenceRule, reference_rule, resolve_references
from geor_core.data.manifest import iter_batches, list_manifest_files
from geor_core.errors import UserFacingError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
PHOTOS_SCHEMA = pa.schema([pa.field("id", pa.string()), pa.field("image", pa.string())])
_BATCH_ROWS = 100_000
_SHOWN = 5


def list_photos(
    uri: str,
    *,
    id_col: str = "id",
    image_col: str = "image",
    allowed_schemes: Sequence[str] | None = None,
    images_root: str = "",
) -> pa.Table:
    """(id, image URI) for every photo of a folder or manifest, in a fixed order.

    ``allowed_schemes`` (default: ``prepare.allowed_schemes``'s) and ``images_root`` are the
    reference rule's settings."""
    try:
        fs, path = uris.filesystem(uri)
    except ValueError as exc:
        raise UserFacingError(f"--images {uri!r}: {exc}") from exc
    schemes = PrepareConfig().allowed_schemes if allowed_schemes is None else allowed_schemes
    if fs.isdir(path):
        folder = uri if uris.is_s3(uri) else path
        table = _folder_photos(uri, fs, path)
        return _apply_rule(table, reference_rule(schemes, folder, (folder, images_root)), f"--images {uri}")
    if fs.isfile(path):
        return _manifest_photos(uri, id_col, image_col, schemes, images_root)
    raise UserFacingError(f"--images {uri} does not exist (expected a folder of images or a manifest file)")


def _apply_rule(table: pa.Table, rule: ReferenceRule, where: str) -> pa.Table:
    """``table`` with its image references made URIs by ``rule``; UserFacingError listing the
    photos that break it."""
    images, reasons = resolve_references(table.column("image"), rule)
    bad = np.flatnonzero(reasons != "")
    if bad.size:
        references = table.column("image").take(pa.array(bad[:_SHOWN])).to_pylist()
        shown = ", ".join(
            f"row {row} {reference!r} ({reasons[row]})"
            for row, reference in zip(bad, references, strict=True)
        )
        roots = ", ".join(rule.roots) or "none"
        raise UserFacingError(
            f"{where}: {bad.size} image references break the reference rule, e.g. {shown}; local photos "
            f"must lie inside {roots} (prepare.images_root adds a folder) and schemes be one of "
            f"{', '.join(sorted(rule.allowed_schemes))} (prepare.allowed_schemes)"
        )
    return table.set_column(table.schema.get_field_index("image"), "image", images)


def _folder_photos(uri: str, fs: object, path: str) -> pa.Table:
    relative = []
    for entry in sorted(fs.find(path)):
        name = entry[len(path) :].strip("/")
        if any(part.startswith((".", "_")) for part in name.split("/")):
            continue
        if name.lower().endswith(IMAGE_SUFFIXES):
            relative.append(name)
    if not relative:
        raise UserFacingError(f"--images {uri} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    return pa.table({"id": relative, "image": relative}, schema=PHOTOS_SCHEMA)


def _find(columns: list[str], name: str) -> str | None:
    if name in columns:
        return name
    folded = [c for c in columns if c.strip().casefold() == name.strip().casefold()]
    return folded[0] if len(folded) == 1 else None


def _manifest_photos(
    uri: str, id_col: str, image_col: str, allowed_schemes: Sequence[str], images_root: str
) -> pa.Table:
    (file,) = list_manifest_files(uri)
    tables = []
    for batch in iter_batches(file, _BATCH_ROWS):
        if batch.bad_lines:
            first = batch.bad_lines[0]
            raise UserFacingError(
                f"manifest {uri} has lines that are not rows, first: {first.text[:200]!r} ({first.reason})"
            )
        tables.append(batch.table)
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    image_name = _find(table.column_names, image_col)
    if image_name is None:
        raise UserFacingError(
            f"manifest {uri} has no image column {image_col!r} (--image-col); its columns: {', '.join(table.column_names)}"
        )
    references = pc.fill_null(table.column(image_name).combine_chunks(), "")
    id_name = _find(table.column_names, id_col)
    ids = (
        pc.utf8_trim_whitespace(pc.fill_null(table.column(id_name).combine_chunks(), ""))
        if id_name
        else references
    )
    id_list = ids.to_pylist()
    repeated = [i for i, count in Counter(id_list).items() if count > 1]
    if repeated:
        raise UserFacingError(
            f"manifest {uri}: {len(repeated)} ids appear more than once, e.g. {', '.join(map(repr, repeated[:_SHOWN]))}; "
            "an id must name one photo"
        )
    empty = [i for i, value in enumerate(id_list) if not value]
    if empty:
        raise UserFacingError(
            f"manifest {uri}: {len(empty)} rows have an empty id, first at data row {empty[0]}"
        )
    rule = reference_rule(allowed_schemes, file.folder, (file.folder, images_root))
    table = pa.table({"id": ids, "image": references}, schema=PHOTOS_SCHEMA)
    return _apply_rule(table, rule, f"manifest {uri}")
