"""Geo math: vectorised Haversine distance and coordinate validation with reason codes.

Validation never guesses: a value is a coordinate only if it parses as a plain number
(surrounding spaces allowed); "43.5N", "1,5" or "43°" are ``non_numeric``. Each row gets one
reason ("" when valid), the first that applies in this order: missing_lat, non_numeric_lat,
nan_lat, missing_lon, non_numeric_lon, nan_lon, lat_out_of_range, lon_out_of_range, null_island.
Missing means None, pandas NA or an empty/blank string; NaN means a float NaN or the text "nan".
A float array cannot tell a missing cell from NaN (pandas reads both as NaN): pass the CSV cells
as strings (``dtype=str, keep_default_na=False``) to keep that distinction.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

EARTH_RADIUS_KM = 6371.0088  # mean Earth radius (IUGG), as in docs/design.md

MISSING_LAT = "missing_lat"
MISSING_LON = "missing_lon"
NON_NUMERIC_LAT = "non_numeric_lat"
NON_NUMERIC_LON = "non_numeric_lon"
NAN_LAT = "nan_lat"
NAN_LON = "nan_lon"
LAT_OUT_OF_RANGE = "lat_out_of_range"
LON_OUT_OF_RANGE = "lon_out_of_range"
NULL_ISLAND = "null_island"
REASON_CODES = (
    MISSING_LAT,
    NON_NUMERIC_LAT,
    NAN_LAT,
    MISSING_LON,
    NON_NUMERIC_LON,
    NAN_LON,
    LAT_OUT_OF_RANGE,
    LON_OUT_OF_RANGE,
    NULL_ISLAND,
)


def haversine_km(lat1: ArrayLike, lon1: ArrayLike, lat2: ArrayLike, lon2: ArrayLike) -> np.ndarray:
    """Great-circle distance in km between points given in degrees; broadcasts; NaN in gives NaN out."""
    phi1 = np.radians(np.asarray(lat1, dtype=np.float64))
    phi2 = np.radians(np.asarray(lat2, dtype=np.float64))
    dphi = phi2 - phi1
    dlmb = np.radians(np.asarray(lon2, dtype=np.float64) - np.asarray(lon1, dtype=np.float64))
    a = np.sin(dphi / 2.0) ** 2 + np.cos(phi1) * np.cos(phi2) * np.sin(dlmb / 2.0) ** 2
    # Rounding can push a a hair above 1 at antipodes; clip keeps arcsin defined (NaN stays NaN).
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.minimum(a, 1.0)))


def validate_coordinates(
    lat_values: ArrayLike, lon_values: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse and check coordinates; returns (lat float64, lon float64, reason object array, "" = ok).

    Values that do not parse become NaN in the returned arrays; out-of-range values are kept as
    parsed so a rejects table can show them.
    """
    lat, lat_missing, lat_non_numeric = _parse_numbers(lat_values, "lat_values")
    lon, lon_missing, lon_non_numeric = _parse_numbers(lon_values, "lon_values")
    if lat.shape != lon.shape:
        raise ValueError(f"lat_values has {lat.size} values but lon_values has {lon.size}")
    lat_nan = np.isnan(lat) & ~lat_missing & ~lat_non_numeric
    lon_nan = np.isnan(lon) & ~lon_missing & ~lon_non_numeric
    with np.errstate(invalid="ignore"):
        lat_out = ~np.isnan(lat) & ~(np.abs(lat) <= 90.0)
        lon_out = ~np.isnan(lon) & ~(np.abs(lon) <= 180.0)
    null_island = (lat == 0.0) & (lon == 0.0)
    conditions = [lat_missing, lat_non_numeric, lat_nan, lon_missing, lon_non_numeric, lon_nan]
    conditions += [lat_out, lon_out, null_island]
    reason = np.full(lat.shape, "", dtype=object)
    for condition, code in reversed(list(zip(conditions, REASON_CODES, strict=True))):
        reason[condition] = code  # reversed: the earliest code in REASON_CODES wins
    return lat, lon, reason


def _parse_numbers(values: ArrayLike, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (float64 values, missing mask, non-numeric mask) for a 1-D array of cells."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    no_rows = np.zeros(array.shape, dtype=bool)
    if array.dtype.kind in "fiu":
        return array.astype(np.float64), no_rows, no_rows.copy()
    if array.dtype.kind == "b":
        return np.full(array.shape, np.nan), no_rows, ~no_rows  # True/False are not coordinates
    cells = array.astype(object) if array.dtype.kind in "US" else array
    parsed = pd.to_numeric(pd.Series(cells, dtype=object), errors="coerce")
    parsed = parsed.to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
    maybe_bool = np.flatnonzero((parsed == 0.0) | (parsed == 1.0))
    is_bool = [isinstance(v, bool | np.bool_) for v in cells[maybe_bool]]
    parsed[maybe_bool[is_bool]] = np.nan  # to_numeric reads True as 1; a flag is not a coordinate
    missing = no_rows.copy()
    non_numeric = no_rows.copy()
    for i in np.flatnonzero(np.isnan(parsed)):  # only the failures: a per-cell look is affordable
        kind = _failure_kind(cells[i])
        missing[i] = kind == "missing"
        non_numeric[i] = kind == "non_numeric"
    return parsed, missing, non_numeric


def _failure_kind(cell: object) -> str:
    """Why a cell did not give a number: "missing", "nan" (a NaN value) or "non_numeric"."""
    if cell is None or cell is pd.NA or cell is pd.NaT:
        return "missing"
    if isinstance(cell, float | np.floating):
        return "nan"
    if isinstance(cell, str):
        text = cell.strip().lower()
        if not text:
            return "missing"
        if text in ("nan", "+nan", "-nan"):
            return "nan"
    return "non_numeric"
