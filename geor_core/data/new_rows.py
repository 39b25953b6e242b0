"""What is new in a manifest: the rows whose ids the champion was not trained on.

The champion's training ids are the ``id`` column of every split of the prepared datasets its
lineage names. New rows are written as one Parquet manifest with fixed columns ``id, image, lat,
lon``: the id as `geor prepare` would have derived it (the id column, else the image reference as
written), and the image reference made absolute against its own file's folder (or
``prepare.images_root``), so the rows prepare exactly as they would have from the original files.
Malformed lines are not rows: they are counted and reported, as `geor prepare` would reject them.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from geor_core import uris
from geor_core.config import PrepareConfig
from geor_core.data.dataset import read_prepared
from geor_core.data.manifest import iter_batches, list_manifest_files, resolve_columns

NEW_ROWS_FILE = "new_rows.parquet"
_SCHEMES = ("s3://", "http://", "https://", "file://", "/")


@dataclass
class NewRows:
    """The manifest's rows split into known and new."""

    manifest: str  # where the new rows were written (a Parquet manifest), "" when none are new
    rows_total: int
    rows_new: int
    malformed_lines: int


def known_ids(datasets: list[str]) -> set[str]:
    """Every id in every split of the given prepared datasets."""
    ids: set[str] = set()
    for uri in datasets:
        ids.update(read_prepared(uri, None, ["id"]).column("id").to_pylist())
    return ids


def _absolute(reference: str, base: str) -> str:
    if reference.startswith(_SCHEMES):
        return reference
    return uris.join(base, reference)


def write_new_rows(manifest_uri: str, prepare: PrepareConfig, known: set[str], output_dir: str) -> NewRows:
    """Write the rows of ``manifest_uri`` whose id is not in ``known`` to ``output_dir``."""
    parts: list[pa.Table] = []
    total = malformed = 0
    for file in list_manifest_files(manifest_uri):
        base = prepare.images_root or file.folder
        for batch in iter_batches(file, prepare.batch_size):
            malformed += len(batch.malformed)
            if batch.table.num_rows == 0:
                continue
            roles = resolve_columns(
                batch.table.column_names,
                prepare.id_col,
                prepare.image_col,
                prepare.lat_col,
                prepare.lon_col,
                file.uri,
                prepare.group_col,
            )
            table = batch.table
            total += table.num_rows
            ids = table.column(roles.id or roles.image).to_pylist()
            images = table.column(roles.image or roles.id).to_pylist()
            keep = [i for i, row_id in enumerate(ids) if row_id not in known]
            if keep:
                parts.append(
                    pa.table(
                        {
                            "id": [ids[i] for i in keep],
                            "image": [_absolute(images[i] or "", base) for i in keep],
                            "lat": table.column(roles.lat).take(keep).to_pylist(),
                            "lon": table.column(roles.lon).take(keep).to_pylist(),
                            # kept under the configured name, so preparing the new rows finds it
                            **(
                                {prepare.group_col: table.column(roles.group).take(keep)}
                                if roles.group
                                else {}
                            ),
                        }
                    )
                )
    new = sum(p.num_rows for p in parts)
    if not new:
        return NewRows("", total, 0, malformed)
    sink = io.BytesIO()
    pq.write_table(pa.concat_tables(parts), sink)
    target = uris.join(output_dir, NEW_ROWS_FILE)
    uris.write_atomic(target, sink.getvalue())
    return NewRows(target, total, new, malformed)
