"""Chain-of-Region (CoR) target text: a short reasoning chain down the hierarchy, then one answer.

    <think>The scene points to Japan. Within Japan, Hokkaido. The nearest town is Biei.</think>
    <answer>Country: Japan; State: Hokkaido; City: Biei; Coordinates: (43.452002, 142.615358)</answer>

The think part uses one of ``PHRASINGS``, picked by a stable hash of (row id, seed), so a target
is a pure function of its row. Coordinates are the true ones, rounded half-to-even to micro-degrees
and written with 6 decimals. Levels the gazetteer leaves empty (Singapore has no admin1, a few
settlements have no name): the answer falls back (State = the country, City = the state) so it
always names all four levels, and the think part skips the empty level's sentence. ";" and line
breaks inside names become spaces, as they would split the answer's fields.

``cor_target`` builds one row with plain Python; ``cor_targets`` builds many with pyarrow.compute
(about 3x faster than per-row f-strings); the two agree exactly (a test checks).
"""

from __future__ import annotations

import math
import re
import string

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

PHRASINGS = (
    ("The scene points to {country}.", "Within {country}, {state}.", "The nearest town is {city}."),
    ("This looks like {country}.", "The region is {state}.", "The closest settlement is {city}."),
    ("The clues suggest {country}.", "More precisely, {state}.", "The nearest place is {city}."),
    ("Everything here says {country}.", "The state or province is {state}.", "The town nearby is {city}."),
)

_MASK64 = (1 << 64) - 1
_BYTE_WEIGHT = 0x100000001B3  # polynomial hash of the id's UTF-8 bytes, mod 2**64
_LENGTH_MIX = 0x9E3779B97F4A7C15
_SEED_MIX = 0xC2B2AE3D27D4EB4F
_HASH_BLOCK_ROWS = 32_768
_UNSAFE_IN_NAMES = re.compile(r"[;\r\n]+")


def cor_target(
    row_id: str | int, country: str, state: str | None, city: str | None, lat: float, lon: float, seed: int
) -> str:
    """The CoR target for one row; ``country`` is the display name (``countries.country_name``)."""
    if isinstance(row_id, bool) or not isinstance(row_id, str | int):
        raise TypeError(f"row id must be str or int, got {type(row_id).__name__} {row_id!r}")
    country = _clean(country or "")
    if not country:
        raise ValueError(f"row {row_id!r}: country is empty")
    _check_coordinate(lat, lon, row_id)
    state, city = _clean(state or ""), _clean(city or "")
    state_answer = state or country
    city_answer = city or state_answer
    fields = {"country": country, "state": state, "city": city}
    first, second, third = PHRASINGS[_phrasing_index(str(row_id), seed)]
    think = first.format(**fields)
    think += " " + second.format(**fields) if state else ""
    think += " " + third.format(**fields) if city else ""
    coordinates = f"({_micro_degrees_text(lat)}, {_micro_degrees_text(lon)})"
    return (
        f"<think>{think}</think>\n<answer>Country: {country}; State: {state_answer}; "
        f"City: {city_answer}; Coordinates: {coordinates}</answer>"
    )


def cor_targets(
    ids: pa.Array, country: pa.Array, state: pa.Array, city: pa.Array, lat: pa.Array, lon: pa.Array, seed: int
) -> pa.Array:
    """CoR targets for many rows (pyarrow or numpy arrays, equal length; ids str or int): a string array.

    Null state/city count as empty; a null or empty country, or an invalid coordinate, raises
    ValueError naming the first offending row.
    """
    ids = _combined(ids)
    if pa.types.is_integer(ids.type):
        ids = pc.cast(ids, pa.string())
    if not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)):
        raise TypeError(f"ids must be strings or integers, got {ids.type}")
    n = len(ids)
    country, state, city = (_clean_array(_combined(a).cast(pa.string())) for a in (country, state, city))
    lat_np = np.asarray(_combined(lat).to_numpy(zero_copy_only=False), dtype=np.float64)
    lon_np = np.asarray(_combined(lon).to_numpy(zero_copy_only=False), dtype=np.float64)
    lengths = {len(country), len(state), len(city), len(lat_np), len(lon_np)}
    if lengths != {n}:
        raise ValueError(f"cor_targets needs equal lengths, got ids {n} and columns {sorted(lengths)}")
    _check_arrays(ids, country, lat_np, lon_np)
    state, city = pc.fill_null(state, ""), pc.fill_null(city, "")
    has_state, has_city = pc.not_equal(state, ""), pc.not_equal(city, "")
    state_answer = pc.if_else(has_state, state, country)
    city_answer = pc.if_else(has_city, city, state_answer)
    fields = {"country": country, "state": state, "city": city}
    think = _think_texts(_phrasing_indices(ids, seed), fields, has_state, has_city)
    return pc.binary_join_element_wise(
        "<think>", think, "</think>\n<answer>Country: ", country, "; State: ", state_answer,
        "; City: ", city_answer, "; Coordinates: (", _micro_degrees_texts(lat_np), ", ",
        _micro_degrees_texts(lon_np), ")</answer>", "",
    )  # fmt: skip


def _think_texts(
    phrasing: np.ndarray, fields: dict[str, pa.Array], has_state: pa.Array, has_city: pa.Array
) -> pa.Array:
    """Think sentences: rows grouped by phrasing, built per group, put back in row order."""
    order = np.argsort(phrasing, kind="stable")
    bounds = np.searchsorted(phrasing[order], np.arange(len(PHRASINGS) + 1))
    parts = []
    for k, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        rows = pa.array(order[start:stop])
        group = {name: column.take(rows) for name, column in fields.items()}
        first, second, third = (_render(template, group) for template in PHRASINGS[k])
        second = pc.if_else(has_state.take(rows), pc.binary_join_element_wise(" ", second, ""), "")
        third = pc.if_else(has_city.take(rows), pc.binary_join_element_wise(" ", third, ""), "")
        parts.append(pc.binary_join_element_wise(first, second, third, ""))
    grouped = pa.concat_arrays(parts) if parts else pa.array([], pa.string())
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return grouped.take(pa.array(inverse))


def _render(template: str, fields: dict[str, pa.Array]) -> pa.Array:
    pieces: list[object] = []
    for literal, field, _, _ in string.Formatter().parse(template):
        pieces += [literal] if literal else []
        pieces += [fields[field]] if field is not None else []
    length = len(next(iter(fields.values())))
    if len(pieces) == 1:  # a template without a field would broadcast a scalar
        return pa.array([pieces[0]] * length, pa.string())
    return pc.binary_join_element_wise(*pieces, "")


def _phrasing_index(row_id: str, seed: int) -> int:
    """Stable phrasing choice for one row (the scalar twin of ``_phrasing_indices``)."""
    data = row_id.encode("utf-8")
    digest, weight = 0, 1
    for byte in data:
        digest = (digest + (byte + 1) * weight) & _MASK64
        weight = (weight * _BYTE_WEIGHT) & _MASK64
    x = (digest + len(data) * _LENGTH_MIX + (seed & _MASK64) * _SEED_MIX) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64  # splitmix64 finaliser
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (x ^ (x >> 31)) % len(PHRASINGS)


def _phrasing_indices(ids: pa.Array, seed: int) -> np.ndarray:
    """``_phrasing_index`` for every id at once, in uint64 arithmetic that wraps like ``& _MASK64``."""
    offsets_type = np.int64 if pa.types.is_large_string(ids.type) else np.int32
    _, offsets_buffer, data_buffer = ids.buffers()
    offsets = np.frombuffer(offsets_buffer, offsets_type)[ids.offset : ids.offset + len(ids) + 1]
    offsets = offsets.astype(np.int64)
    data = np.frombuffer(data_buffer, np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    weights = np.cumprod(np.full(int(lengths.max(initial=0)), _BYTE_WEIGHT, np.uint64))
    weights = np.concatenate([np.ones(1, np.uint64), weights])  # weights[i] = _BYTE_WEIGHT**i
    digest = np.empty(len(ids), np.uint64)
    for first in range(0, len(ids), _HASH_BLOCK_ROWS):  # blocks keep the per-byte arrays in cache
        block = offsets[first : first + _HASH_BLOCK_ROWS + 1]
        block_bytes = data[block[0] : block[-1]].astype(np.uint64)
        position = np.arange(block_bytes.size) - np.repeat(block[:-1] - block[0], np.diff(block))
        prefix = np.zeros(block_bytes.size + 1, np.uint64)
        np.cumsum((block_bytes + np.uint64(1)) * weights[position], out=prefix[1:])
        digest[first : first + len(block) - 1] = prefix[block[1:] - block[0]] - prefix[block[:-1] - block[0]]
    seed_term = np.uint64(((seed & _MASK64) * _SEED_MIX) & _MASK64)
    x = digest + lengths.astype(np.uint64) * np.uint64(_LENGTH_MIX) + seed_term
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return ((x ^ (x >> np.uint64(31))) % np.uint64(len(PHRASINGS))).astype(np.int64)


def _micro_degrees_text(value: float) -> str:
    micro = round(float(value) * 1_000_000)
    sign = "-" if micro < 0 else ""
    return f"{sign}{abs(micro) // 1_000_000}.{abs(micro) % 1_000_000:06d}"


def _micro_degrees_texts(values: np.ndarray) -> pa.Array:
    micro = np.rint(values * 1_000_000).astype(np.int64)
    whole, fraction = np.divmod(np.abs(micro), 1_000_000)
    sign = pa.array(np.where(micro < 0, "-", ""))
    fraction_text = pc.utf8_lpad(pc.cast(pa.array(fraction), pa.string()), width=6, padding="0")
    return pc.binary_join_element_wise(sign, pc.cast(pa.array(whole), pa.string()), ".", fraction_text, "")


def _clean(name: str) -> str:
    return _UNSAFE_IN_NAMES.sub(" ", name)


def _clean_array(names: pa.Array) -> pa.Array:
    if not pc.any(pc.match_substring_regex(names, _UNSAFE_IN_NAMES.pattern)).as_py():
        return names  # the usual case: skip the copy
    return pc.replace_substring_regex(names, _UNSAFE_IN_NAMES.pattern, " ")


def _combined(values: object) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    return values if isinstance(values, pa.Array) else pa.array(values)


def _check_coordinate(lat: float, lon: float, row_id: object) -> None:
    if not (math.isfinite(lat) and math.isfinite(lon) and abs(lat) <= 90.0 and abs(lon) <= 180.0):
        raise ValueError(f"row {row_id!r}: invalid coordinates ({lat!r}, {lon!r})")


def _check_arrays(ids: pa.Array, country: pa.Array, lat: np.ndarray, lon: np.ndarray) -> None:
    bad = ~(np.abs(lat) <= 90.0) | ~(np.abs(lon) <= 180.0)
    bad |= pc.fill_null(pc.equal(country, ""), True).to_numpy(zero_copy_only=False)
    bad |= ids.is_null().to_numpy(zero_copy_only=False)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{int(bad.sum())} rows cannot make a CoR target, first at row {i}: id {ids[i].as_py()!r}, "
            f"country {country[i].as_py()!r}, coordinates ({float(lat[i])!r}, {float(lon[i])!r})"
        )
