"""One batch of manifest rows -> training rows with Chain-of-Region targets, or a reason code each.

Each row gets the first reason that applies ("" = kept), checked in this order: ``missing_id``,
``duplicate_id`` (decided over the whole manifest beforehand, see ``dedupe``), ``missing_image``
(an empty image reference), the reference rule's reasons (``image_path_invalid``,
``image_scheme_not_allowed``, ``image_outside_root``: geor_core/data/image_refs.py), the coordinate
reasons of ``geo.validate_coordinates``, then with image checks ``image_missing`` /
``image_unreadable`` / ``image_undecodable``. Kept rows are reverse-geocoded with one batched
gazetteer query, get their CoR target (``cor.cor_targets``), a split, and their ``group`` (the
``prepare.group_col`` cell, "" without one).

A row's split depends only on its id and the seed: the keyed siphash-2-4 of the id's UTF-8
bytes (``pandas.util.hash_array`` with a key derived from the seed), mapped to [0, 1) and cut at
the cumulative split shares in config order. Adding rows never moves existing ones. Rows whose
country is a hold-out country go to ``test`` whatever their hash says.

Image references become URIs by the reference rule: remote ones of an allowed scheme as they
are, local ones as absolute paths (relative ones joined to ``prepare.images_root``, else the
folder of the manifest file the row came from).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from geor_core.data.image_check import REASON_CODES as IMAGE_CHECK_REASONS
from geor_core.data.image_check import check_images
from geor_core.data.image_refs import REASON_CODES as REFERENCE_REASONS
from geor_core.data.image_refs import ReferenceRule, resolve_references
from geor_core.data.manifest import ColumnRoles
from geor_core.data.manifest_formats import FIELD_TOO_LARGE, MALFORMED_LINE, NOT_UTF8
from geor_core.geo import gazetteer
from geor_core.geo.cor import cor_targets
from geor_core.geo.countries import country_name
from geor_core.geo.geo import REASON_CODES as COORDINATE_REASONS
from geor_core.geo.geo import validate_coordinates

MISSING_ID = "missing_id"
DUPLICATE_ID = "duplicate_id"
MISSING_IMAGE = "missing_image"
REASON_CODES = (
    MALFORMED_LINE,
    NOT_UTF8,
    FIELD_TOO_LARGE,
    MISSING_ID,
    DUPLICATE_ID,
    MISSING_IMAGE,
    *REFERENCE_REASONS,
    *COORDINATE_REASONS,
    *IMAGE_CHECK_REASONS,
)
TEST_SPLIT = "test"

OUTPUT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("image", pa.string(), nullable=False),
        pa.field("lat", pa.float64(), nullable=False),
        pa.field("lon", pa.float64(), nullable=False),
        pa.field("country_code", pa.string(), nullable=False),
        pa.field("country", pa.string(), nullable=False),
        pa.field("state", pa.string(), nullable=False),
        pa.field("county", pa.string(), nullable=False),
        pa.field("city", pa.string(), nullable=False),
        pa.field("settlement_km", pa.float64(), nullable=False),
        pa.field("target", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field(
            "group", pa.string()
        ),  # prepare.group_col's value, "" without one (null: written before groups)
        pa.field("source_fingerprint", pa.string(), nullable=False),
    ]
)


@dataclass(frozen=True)
class RowRules:
    """The job-wide settings that turn a valid row into a training row."""

    seed: int
    splits: tuple[tuple[str, float], ...]  # (name, share) in config order
    holdout_countries: frozenset[str]
    check_images: bool
    source_fingerprint: str


def row_ids(table: pa.Table, roles: ColumnRoles) -> pa.Array:
    """The id of every row (surrounding whitespace removed; null or "" when missing)."""
    return _trimmed(table[roles.id if roles.id is not None else roles.image])


def image_references(table: pa.Table, roles: ColumnRoles) -> pa.Array:
    """The image reference of every row (the id when the manifest has no image column)."""
    return _trimmed(table[roles.image if roles.image is not None else roles.id])


def _trimmed(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return pc.utf8_trim_whitespace(array.cast(pa.string()))


def prepare_batch(
    table: pa.Table,
    roles: ColumnRoles,
    images: ReferenceRule,
    rules: RowRules,
    duplicate: np.ndarray | None = None,
) -> tuple[pa.Table, np.ndarray]:
    """Validate, geocode and label one batch of all-string manifest rows.

    Returns (the kept rows in ``OUTPUT_SCHEMA``, in input order; a reason per input row as an
    object array, "" for kept rows). ``images`` is the reference rule of the rows' manifest file;
    ``duplicate`` flags rows whose id appeared earlier in the manifest."""
    n = table.num_rows
    ids = row_ids(table, roles)
    references = image_references(table, roles)
    reason = np.full(n, "", dtype=object)
    _mark(reason, _blank(ids), MISSING_ID)
    if duplicate is not None:
        _mark(reason, np.asarray(duplicate, dtype=bool), DUPLICATE_ID)
    _mark(reason, _blank(references), MISSING_IMAGE)
    pending_rows = np.flatnonzero(reason == "")
    uris, reference_reason = resolve_references(references.take(pa.array(pending_rows)), images)
    reason[pending_rows] = reference_reason
    uri_of_row = np.full(n, -1, dtype=np.int64)  # row -> its position in ``uris``
    uri_of_row[pending_rows] = np.arange(pending_rows.size)
    lat, lon, coordinate_reason = validate_coordinates(
        _coordinate_cells(table[roles.lat]), _coordinate_cells(table[roles.lon])
    )
    pending = reason == ""
    reason[pending] = coordinate_reason[pending]
    if rules.check_images:
        pending_rows = np.flatnonzero(reason == "")
        reason[pending_rows] = check_images(uris.take(pa.array(uri_of_row[pending_rows])).to_pylist())
    keep = np.flatnonzero(reason == "")
    kept_images = uris.take(pa.array(uri_of_row[keep]))
    groups = _trimmed(table[roles.group]) if roles.group is not None else pa.nulls(n, pa.string())
    groups = pc.fill_null(groups.take(pa.array(keep)), "")
    kept_rows = _training_rows(ids.take(pa.array(keep)), kept_images, lat[keep], lon[keep], groups, rules)
    return kept_rows, reason


def _mark(reason: np.ndarray, condition: np.ndarray, code: str) -> None:
    reason[condition & (reason == "")] = code


def _blank(values: pa.Array) -> np.ndarray:
    return pc.fill_null(pc.equal(values, ""), True).to_numpy(zero_copy_only=False)


def _coordinate_cells(column: pa.ChunkedArray) -> np.ndarray:
    """A coordinate column as ``validate_coordinates`` takes it: float64 when Arrow reads every
    text cell as a finite number (one cast: about 20x cheaper than parsing object cells), else
    the cells themselves, so that each failure gets its own reason (missing, not a number, NaN)."""
    array = column.combine_chunks()
    if (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)) and not array.null_count:
        try:
            values = pc.cast(array, pa.float64()).to_numpy()
        except pa.ArrowInvalid:
            values = None
        if values is not None and np.isfinite(values).all():
            return values
    return array.to_numpy(zero_copy_only=False)


@functools.cache
def _settlement_columns() -> dict[str, pa.Array]:
    """The gazetteer's settlements as Arrow columns, built once per process: taking rows by
    settlement index is several times cheaper than gathering object arrays and converting them."""
    table = gazetteer.settlements()
    names = {code: country_name(code) for code in table["cc"].unique()}
    return {
        "country_code": pa.array(table["cc"], pa.string()),
        "country": pa.array(table["cc"].map(names), pa.string()),
        "state": pa.array(table["admin1"], pa.string()),
        "county": pa.array(table["admin2"], pa.string()),
        "city": pa.array(table["name"], pa.string()),
    }


def _training_rows(
    ids: pa.Array, images: pa.Array, lat: np.ndarray, lon: np.ndarray, groups: pa.Array, rules: RowRules
) -> pa.Table:
    settlement_index, settlement_km = gazetteer.nearest(lat, lon)
    settlement = pa.array(settlement_index)
    names = {key: column.take(settlement) for key, column in _settlement_columns().items()}
    country, state, city = names["country"], names["state"], names["city"]
    columns = {
        "id": ids,
        "image": images,
        "lat": pa.array(lat, pa.float64()),
        "lon": pa.array(lon, pa.float64()),
        "country_code": names["country_code"],
        "country": country,
        "state": state,
        "county": names["county"],
        "city": city,
        "settlement_km": pa.array(settlement_km, pa.float64()),
        "target": cor_targets(ids, country, state, city, pa.array(lat), pa.array(lon), rules.seed),
        "split": assign_splits(ids, names["country_code"], rules),
        "group": groups,
        "source_fingerprint": pa.array(
            np.full(len(ids), rules.source_fingerprint, dtype=object), pa.string()
        ),
    }
    return pa.table(columns, schema=OUTPUT_SCHEMA)


def split_hash_key(seed: int) -> str:
    """The 16-character siphash key that the split of every row depends on, derived from the seed."""
    return hashlib.sha256(f"geor-split:{seed}".encode()).hexdigest()[:16]


def assign_splits(ids: pa.Array, country_codes: pa.Array | np.ndarray, rules: RowRules) -> pa.Array:
    """The split of each row: stable in (id, seed), hold-out countries in ``test``."""
    names = [name for name, _ in rules.splits]
    shares = np.array([share for _, share in rules.splits], dtype=np.float64)
    edges = np.cumsum(shares) / shares.sum()
    keys = np.asarray(ids.to_numpy(zero_copy_only=False), dtype=object)
    hashes = pd.util.hash_array(keys, hash_key=split_hash_key(rules.seed), categorize=False)
    unit = (hashes >> np.uint64(11)).astype(np.float64) * 2.0**-53  # uniform in [0, 1)
    index = np.searchsorted(edges, unit, side="right")
    index = np.minimum(index, int(np.flatnonzero(shares > 0)[-1]))  # rounding never picks a 0 share
    split = np.asarray(names, dtype=object)[index]
    if rules.holdout_countries:
        codes = (
            pa.array(country_codes, pa.string()) if isinstance(country_codes, np.ndarray) else country_codes
        )
        held_out = pc.is_in(codes, pa.array(sorted(rules.holdout_countries), pa.string()))
        split[pc.fill_null(held_out, False).to_numpy(zero_copy_only=False)] = TEST_SPLIT
    return pa.array(split, pa.string())
