"""The photos `geor predict` geolocates: a folder of images, or a manifest that lists them.

- A folder (local or ``s3://``): every file under it (recursively) whose name ends in an image
  suffix, sorted; names starting with ``.`` or ``_`` are skipped. The id is the path relative to
  the folder.
- A file: a manifest (CSV/TSV/Parquet/JSONL, geor_core.manifest) with an image column and
  optionally an id column (without one, the image reference is the id). References are relative
  to the manifest's folder unless absolute. Coordinates, if present, are ignored.
An empty reference is kept (the photo then fails to load and its row says why); an id twice, a
malformed manifest line or a missing image column is an error naming what is wrong.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from geor_core import uris
from geor_core.cor_rows import image_uris
from geor_core.errors import UserFacingError
from geor_core.manifest import iter_batches, list_manifest_files

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
PHOTOS_SCHEMA = pa.schema([pa.field("id", pa.string()), pa.field("image", pa.string())])
_BATCH_ROWS = 100_000
_SHOWN = 5


def list_photos(uri: str, *, id_col: str = "id", image_col: str = "image") -> pa.Table:
    """(id, image URI) for every photo of a folder or manifest, in a fixed order."""
    try:
        fs, path = uris.filesystem(uri)
    except ValueError as exc:
        raise UserFacingError(f"--images {uri!r}: {exc}") from exc
    if fs.isdir(path):
        return _folder_photos(uri, fs, path)
    if fs.isfile(path):
        return _manifest_photos(uri, id_col, image_col)
    raise UserFacingError(f"--images {uri} does not exist (expected a folder of images or a manifest file)")


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
    images = [uris.join(uri if uris.is_s3(uri) else path, name) for name in relative]
    return pa.table({"id": relative, "image": images}, schema=PHOTOS_SCHEMA)


def _find(columns: list[str], name: str) -> str | None:
    if name in columns:
        return name
    folded = [c for c in columns if c.strip().casefold() == name.strip().casefold()]
    return folded[0] if len(folded) == 1 else None


def _manifest_photos(uri: str, id_col: str, image_col: str) -> pa.Table:
    (file,) = list_manifest_files(uri)
    tables = []
    for batch in iter_batches(file, _BATCH_ROWS):
        if batch.malformed:
            raise UserFacingError(
                f"manifest {uri} has malformed lines (wrong number of fields), first: {batch.malformed[0][:200]!r}"
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
    base = file.folder if uris.is_s3(file.folder) else uris.filesystem(file.folder)[1]
    return pa.table({"id": ids, "image": image_uris(references, base)}, schema=PHOTOS_SCHEMA)
