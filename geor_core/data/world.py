"""A synthetic but learnable world made of real places: what the demo and the tests train on.

Places are real settlements from the gazetteer's own cities table: ``countries`` countries, 6
states (admin1) each, up to 40 settlements per state, chosen by ``seed`` among the countries that
have enough of them. Each photo is rendered so its place can be read from the pixels:

- background colour = the country (hues spread evenly around the colour wheel);
- stripe orientation and period = the state (6 of 8 textures);
- a 5x5 dark marker's position = the settlement's position inside the bounding box of the
  world's settlements of that country (north up, east right; a plain lat/lon box, so a country
  straddling the antimeridian would get a wide box and a coarser, still consistent, marker);
- Gaussian noise on every pixel, then JPEG.

Graded ambiguity (``ambiguous_share``): a share of photos where the pixels leave the place
uncertain, half without the marker (position unknown: the best guess is central) and half with
a faint state texture (state uncertain). Then imitating one exact answer is not the
distance-optimal guess, which is where GRPO's distance reward can have an edge (docs/design.md).

Output, in the project's manifest columns: ``manifest.csv`` with ``id,image,lat,lon`` (image
relative to the manifest's folder, JPEGs under ``images/``) plus two hint columns that
``geor prepare`` ignores: ``world_split`` (train/val/test drawn per settlement, so test places
are unseen in training) and ``world_ambiguity`` (none/no_marker/faint_state). A photo's
coordinates are its settlement's own, so the gazetteer reads back exactly the labels drawn in it.
Then the completion marker. Deterministic for a seed: the same files, byte for byte.
"""

from __future__ import annotations

import colorsys
import io
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from geor_core import uris
from geor_core.geo.gazetteer import lookup, settlements
from geor_core.ownership import claim_output

STATES_PER_COUNTRY = 6
MIN_PLACES_PER_STATE = 10
MAX_PLACES_PER_STATE = 40
SPLIT_SHARES = {"train": 0.8, "val": 0.1, "test": 0.1}  # of settlements
STRIPE_ANGLES_DEG = (0.0, 90.0, 45.0, 135.0)
STRIPE_PERIODS_PX = (5.0, 11.0)
STRIPE_AMPLITUDE = 40.0
FAINT_STRIPE_AMPLITUDE = 6.0
MARKER_PX = 5
MARKER_MARGIN_PX = 2
MARKER_RGB = (15.0, 15.0, 15.0)
NOISE_SIGMA = 12.0
JPEG_QUALITY = 90
WRITE_BATCH = 1000  # images per filesystem batch (one round of PUTs on S3)


@dataclass(frozen=True)
class WorldSpec:
    """What a world is made from; equal specs give identical worlds."""

    rows: int
    countries: int = 12
    image_size: int = 56
    seed: int = 0
    ambiguous_share: float = 0.0

    def __post_init__(self) -> None:
        if self.rows < 1:
            raise ValueError(f"world rows must be >= 1, got {self.rows}")
        if self.countries < 1:
            raise ValueError(f"world countries must be >= 1, got {self.countries}")
        if self.image_size < 28:
            raise ValueError(f"world image_size must be >= 28 px, got {self.image_size}")
        if not 0.0 <= self.ambiguous_share <= 1.0:
            raise ValueError(f"world ambiguous_share must be within [0, 1], got {self.ambiguous_share}")


def _eligible_settlements() -> pd.DataFrame:
    """Settlements that read back as themselves and sit in a state with enough of them."""
    table = settlements()
    table["settlement_index"] = np.arange(len(table))
    readback = lookup(table["lat"].to_numpy(), table["lon"].to_numpy())["settlement_index"]
    table = table[(readback == table["settlement_index"].to_numpy()) & (table["admin1"] != "")]
    per_state = table.groupby(["cc", "admin1"])["name"].transform("size")
    return table[per_state >= MIN_PLACES_PER_STATE]


def choose_places(countries: int, seed: int) -> pd.DataFrame:
    """The world's settlements: one row each, with country/state indices, split and country box.

    Columns: name, admin1, cc, lat, lon, country_idx, state_idx, world_split, and the country's
    lat_min, lat_max, lon_min, lon_max (over the world's settlements of that country).
    """
    rng = np.random.default_rng(seed)
    table = _eligible_settlements()
    states_per_country = table.groupby("cc")["admin1"].nunique()
    eligible = sorted(states_per_country[states_per_country >= STATES_PER_COUNTRY].index)
    if countries > len(eligible):
        raise ValueError(f"the world can have at most {len(eligible)} countries, asked for {countries}")
    chosen = []
    for country_idx, cc in enumerate(sorted(rng.choice(eligible, countries, replace=False))):
        in_country = table[table["cc"] == cc]
        states = sorted(rng.choice(sorted(in_country["admin1"].unique()), STATES_PER_COUNTRY, replace=False))
        for state_idx, admin1 in enumerate(states):
            in_state = in_country[in_country["admin1"] == admin1]
            take = min(MAX_PLACES_PER_STATE, len(in_state))
            rows = in_state.iloc[np.sort(rng.choice(len(in_state), take, replace=False))]
            chosen.append(rows.assign(country_idx=country_idx, state_idx=state_idx))
    places = pd.concat(chosen, ignore_index=True)
    split_names = list(SPLIT_SHARES)
    places["world_split"] = np.array(split_names)[
        rng.choice(len(split_names), len(places), p=list(SPLIT_SHARES.values()))
    ]
    bounds = places.groupby("country_idx").agg(
        lat_min=("lat", "min"), lat_max=("lat", "max"), lon_min=("lon", "min"), lon_max=("lon", "max")
    )
    return places.join(bounds, on="country_idx")


def draw_rows(places: pd.DataFrame, spec: WorldSpec) -> pd.DataFrame:
    """``spec.rows`` photos: country, then state, then settlement uniformly; ambiguity per photo."""
    rng = np.random.default_rng([spec.seed, 1])
    country = rng.integers(spec.countries, size=spec.rows)
    state = rng.integers(STATES_PER_COUNTRY, size=spec.rows)
    groups = places.groupby(["country_idx", "state_idx"]).indices
    pick = rng.random(spec.rows)
    index = np.array(
        [groups[(c, s)][int(u * len(groups[(c, s)]))] for c, s, u in zip(country, state, pick, strict=True)],
        dtype=np.int64,
    )
    rows = places.iloc[index].reset_index(drop=True)
    ambiguous = rng.random(spec.rows) < spec.ambiguous_share
    kind = np.where(rng.random(spec.rows) < 0.5, "no_marker", "faint_state")
    rows["world_ambiguity"] = np.where(ambiguous, kind, "none")
    rows["id"] = [f"world-s{spec.seed}-{i:06d}" for i in range(spec.rows)]
    rows["image"] = "images/" + rows["id"] + ".jpg"
    return rows


def _country_rgb(country_idx: int, countries: int) -> np.ndarray:
    hue = country_idx / countries
    value = 0.85 if country_idx % 2 == 0 else 0.7  # neighbours in hue differ in brightness too
    return np.array(colorsys.hsv_to_rgb(hue, 0.6, value)) * 255.0


def render_photo(row: Any, spec: WorldSpec, row_number: int) -> np.ndarray:
    """One photo (H x W x 3 uint8) for one drawn row (a ``draw_rows`` row); noise seeded by (seed, row number)."""
    size = spec.image_size
    rng = np.random.default_rng([spec.seed, 2, row_number])
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    angle = np.deg2rad(STRIPE_ANGLES_DEG[row.state_idx % len(STRIPE_ANGLES_DEG)])
    period = STRIPE_PERIODS_PX[row.state_idx // len(STRIPE_ANGLES_DEG)]
    amplitude = FAINT_STRIPE_AMPLITUDE if row.world_ambiguity == "faint_state" else STRIPE_AMPLITUDE
    stripes = amplitude * np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period)
    pixels = _country_rgb(row.country_idx, spec.countries)[None, None, :] + stripes[:, :, None]
    if row.world_ambiguity != "no_marker":
        span = size - 2 * MARKER_MARGIN_PX - MARKER_PX
        fx = (row.lon - row.lon_min) / max(row.lon_max - row.lon_min, 1e-9)
        fy = (row.lat_max - row.lat) / max(row.lat_max - row.lat_min, 1e-9)
        left, top = MARKER_MARGIN_PX + round(fx * span), MARKER_MARGIN_PX + round(fy * span)
        pixels[top : top + MARKER_PX, left : left + MARKER_PX] = MARKER_RGB
    pixels += rng.normal(0.0, NOISE_SIGMA, pixels.shape)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


MANIFEST_COLUMNS = ["id", "image", "lat", "lon", "world_split", "world_ambiguity"]


def build_world(output: str, spec: WorldSpec, overwrite: bool = False) -> dict:
    """Write the world's JPEGs, ``manifest.csv`` and completion marker under ``output`` (local or s3://).

    A complete world with the same spec is kept as it is (returned with ``"skipped": True``); a
    complete world with another spec needs ``overwrite``. The output is claimed first
    (geor_core/ownership.py: a non-empty folder geor did not write is refused), and only the
    world's own entries (marker, ``manifest.csv``, ``images/``) are replaced. Returns the marker's payload.
    """
    payload = {"kind": "geor-world", **asdict(spec)}
    marker = uris.read_marker(output)
    if marker is not None and not overwrite:
        if {k: marker.get(k) for k in payload} == payload:
            return {**marker, "skipped": True}
        raise ValueError(
            f"{output} already holds another world ({ {k: marker.get(k) for k in asdict(spec)} }); "
            "choose another output or overwrite it (geor make-world --overwrite)"
        )
    claim_output(output, "make-world").remove(uris.MARKER_NAME, "manifest.csv", "images")
    places = choose_places(spec.countries, spec.seed)
    rows = draw_rows(places, spec)
    fs, root = uris.filesystem(output)
    fs.makedirs(f"{root}/images", exist_ok=True)
    for start in range(0, len(rows), WRITE_BATCH):
        batch = rows.iloc[start : start + WRITE_BATCH]
        fs.pipe(
            {
                f"{root}/{r.image}": _jpeg(render_photo(r, spec, start + k))
                for k, r in enumerate(batch.itertuples())
            }
        )
    uris.write_text(uris.join(output, "manifest.csv"), rows[MANIFEST_COLUMNS].to_csv(index=False))
    payload.update(
        places=len(places),
        splits={name: int(n) for name, n in rows["world_split"].value_counts().sort_index().items()},
        ambiguity={name: int(n) for name, n in rows["world_ambiguity"].value_counts().sort_index().items()},
        countries_used=sorted(places["cc"].unique().tolist()),
    )
    uris.write_marker(output, payload)
    return payload
