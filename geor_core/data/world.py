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

Cross-country ambiguity (``shared_looks``, ``shared_look_share``; needs ``country_codes``, the
world's countries named instead of drawn): a look is a flat colour of its own (no stripes, no
marker) shared by several countries with mixing weights. A share of photos is drawn from the
looks: a look uniformly, its country by weight, then state and settlement as for any photo. The
pixels then say only "one of these countries, with these odds", and the distance-optimal answer
can lie in a compact minority country rather than the majority one (docs/design.md).

Render shift (``shifted_rows``): that many more photos, drawn like the others, rendered with more
noise, a lighter marker and other stripe periods, written to ``shifted/manifest.csv`` (same
columns, images under ``shifted/images/``): an out-of-distribution evaluation set, never part of
the main manifest, prepared on its own (``geor prepare --manifest <world>/shifted/manifest.csv``).

Output, in the project's manifest columns: ``manifest.csv`` with ``id,image,lat,lon`` (image
relative to the manifest's folder, JPEGs under ``images/``) plus two hint columns that
``geor prepare`` ignores: ``world_split`` (train/val/test drawn per settlement, so test places
are unseen in training), ``world_ambiguity`` (none/no_marker/faint_state/shared_look),
``world_look`` (the shared look's countries, e.g. ``CA+SE``, else empty) and ``world_group``
(clean, ambiguous or shifted). A photo's
coordinates are its settlement's own, so the gazetteer reads back exactly the labels drawn in it.
Then the completion marker. Deterministic for a seed: the same files, byte for byte.
"""

from __future__ import annotations

import colorsys
import io
import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from geor_core import uris
from geor_core.config import DataConfig
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
LOOK_SATURATION = 0.25  # shared looks are greyish; countries have saturation 0.6
SHIFT_NOISE_SIGMA = 24.0
SHIFT_MARKER_RGB = (70.0, 70.0, 70.0)
SHIFT_STRIPE_PERIODS_PX = (7.0, 15.0)
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
    country_codes: tuple[str, ...] = ()  # the countries by ISO alpha-2 code; empty: drawn by seed
    shared_looks: tuple[tuple[tuple[str, float], ...], ...] = ()  # per look: (code, weight) pairs
    shared_look_share: float = 0.0
    shifted_rows: int = 0

    def __post_init__(self) -> None:
        if self.rows < 1:
            raise ValueError(f"world rows must be >= 1, got {self.rows}")
        if self.countries < 1:
            raise ValueError(f"world countries must be >= 1, got {self.countries}")
        if self.image_size < 28:
            raise ValueError(f"world image_size must be >= 28 px, got {self.image_size}")
        if not 0.0 <= self.ambiguous_share <= 1.0:
            raise ValueError(f"world ambiguous_share must be within [0, 1], got {self.ambiguous_share}")
        if self.shifted_rows < 0:
            raise ValueError(f"world shifted_rows must be >= 0, got {self.shifted_rows}")
        self._check_countries_and_looks()

    def _check_countries_and_looks(self) -> None:
        codes = self.country_codes
        if codes and (len(codes) != self.countries or len(set(codes)) != len(codes)):
            raise ValueError(
                f"world country_codes must be {self.countries} distinct codes, got {list(codes)}"
            )
        if not 0.0 <= self.shared_look_share <= 1.0:
            raise ValueError(f"world shared_look_share must be within [0, 1], got {self.shared_look_share}")
        if bool(self.shared_looks) != (self.shared_look_share > 0):
            raise ValueError("world shared_looks and shared_look_share > 0 go together: set both or neither")
        seen: set[str] = set()
        for look in self.shared_looks:
            members = [code for code, _ in look]
            if len(members) < 2 or any(weight <= 0 for _, weight in look):
                raise ValueError(f"a shared look needs 2+ countries with positive weights, got {look}")
            if abs(sum(weight for _, weight in look) - 1.0) > 1e-6:
                raise ValueError(f"a shared look's weights must sum to 1, got {look}")
            if not set(members) <= set(codes):
                raise ValueError(
                    f"shared look {look}: every country must be one of country_codes {list(codes)}"
                )
            if seen & set(members):
                raise ValueError(f"a country can share one look only: {sorted(seen & set(members))}")
            seen |= set(members)

    @classmethod
    def from_config(cls, data: DataConfig) -> WorldSpec:
        """The world the config's ``data.world_*`` keys describe; a ValueError names a bad key's value."""
        codes = tuple(str(code).upper() for code in data.world_country_codes)
        return cls(
            rows=data.world_rows,
            countries=len(codes) or data.world_countries,
            image_size=data.world_image_size,
            seed=data.world_seed,
            ambiguous_share=data.world_ambiguous_share,
            country_codes=codes,
            shared_looks=tuple(parse_look(str(text)) for text in data.world_shared_looks),
            shared_look_share=data.world_shared_look_share,
            shifted_rows=data.world_shifted_rows,
        )

    def look_names(self) -> list[str]:
        """Each shared look's name: its countries joined by '+' (``CA+SE``)."""
        return ["+".join(code for code, _ in look) for look in self.shared_looks]


def parse_look(text: str) -> tuple[tuple[str, float], ...]:
    """``"CA:0.6,SE:0.4"`` -> ``(("CA", 0.6), ("SE", 0.4))``; a ValueError says what is wrong."""
    members = []
    for part in text.split(","):
        code, _, weight = part.partition(":")
        try:
            members.append((code.strip().upper(), float(weight)))
        except ValueError:
            raise ValueError(f'data.world_shared_looks: {text!r} is not like "CA:0.6,SE:0.4"') from None
    return tuple(members)


def _eligible_settlements() -> pd.DataFrame:
    """Settlements that read back as themselves and sit in a state with enough of them."""
    table = settlements()
    table["settlement_index"] = np.arange(len(table))
    readback = lookup(table["lat"].to_numpy(), table["lon"].to_numpy())["settlement_index"]
    table = table[(readback == table["settlement_index"].to_numpy()) & (table["admin1"] != "")]
    per_state = table.groupby(["cc", "admin1"])["name"].transform("size")
    return table[per_state >= MIN_PLACES_PER_STATE]


def choose_places(countries: int, seed: int, country_codes: tuple[str, ...] = ()) -> pd.DataFrame:
    """The world's settlements: one row each, with country/state indices, split and country box.
    ``country_codes`` names the countries (in that order); empty: ``countries`` drawn by ``seed``.

    Columns: name, admin1, cc, lat, lon, country_idx, state_idx, world_split, and the country's
    lat_min, lat_max, lon_min, lon_max (over the world's settlements of that country).
    """
    rng = np.random.default_rng(seed)
    table = _eligible_settlements()
    states_per_country = table.groupby("cc")["admin1"].nunique()
    eligible = sorted(states_per_country[states_per_country >= STATES_PER_COUNTRY].index)
    if countries > len(eligible):
        raise ValueError(f"the world can have at most {len(eligible)} countries, asked for {countries}")
    unusable = sorted(set(country_codes) - set(eligible))
    if unusable:
        raise ValueError(
            f"countries {unusable} cannot be in a world: each needs {STATES_PER_COUNTRY} states with "
            f"{MIN_PLACES_PER_STATE}+ settlements; usable: {', '.join(eligible)}"
        )
    codes = list(country_codes) or sorted(rng.choice(eligible, countries, replace=False))
    chosen = []
    for country_idx, cc in enumerate(codes):
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
    """``spec.rows`` photos: country, then state, then settlement uniformly; ambiguity per photo.
    A ``shared_look_share`` of them come from a shared look (its country drawn by the look's
    weights; their own random stream, so a world without looks is unchanged)."""
    rng = np.random.default_rng([spec.seed, 1])
    country = rng.integers(spec.countries, size=spec.rows)
    state = rng.integers(STATES_PER_COUNTRY, size=spec.rows)
    pick = rng.random(spec.rows)
    ambiguous = rng.random(spec.rows) < spec.ambiguous_share
    kind = np.where(rng.random(spec.rows) < 0.5, "no_marker", "faint_state")
    look = np.full(spec.rows, -1)
    if spec.shared_looks:
        look_rng = np.random.default_rng([spec.seed, 3])
        shared = look_rng.random(spec.rows) < spec.shared_look_share
        look[shared] = look_rng.integers(len(spec.shared_looks), size=int(shared.sum()))
        index_of = {cc: i for i, cc in enumerate(spec.country_codes)}
        for k, members in enumerate(spec.shared_looks):
            rows_k = np.flatnonzero(look == k)
            weights = np.array([weight for _, weight in members])
            drawn = look_rng.choice(len(members), size=rows_k.size, p=weights / weights.sum())
            country[rows_k] = [index_of[members[m][0]] for m in drawn]
    rows = _settlement_rows(places, country, state, pick)
    rows["world_ambiguity"] = np.where(look >= 0, "shared_look", np.where(ambiguous, kind, "none"))
    rows["world_look"] = np.array(["", *spec.look_names()], dtype=object)[look + 1]
    rows["world_group"] = np.where(rows["world_ambiguity"] == "none", "clean", "ambiguous")
    rows["look_idx"] = look
    rows["id"] = [f"world-s{spec.seed}-{i:06d}" for i in range(spec.rows)]
    rows["image"] = "images/" + rows["id"] + ".jpg"
    return rows


def draw_shifted_rows(places: pd.DataFrame, spec: WorldSpec) -> pd.DataFrame:
    """``spec.shifted_rows`` clean photos drawn like the others (their own stream), to be rendered shifted."""
    rng = np.random.default_rng([spec.seed, 4])
    n = spec.shifted_rows
    country, state = rng.integers(spec.countries, size=n), rng.integers(STATES_PER_COUNTRY, size=n)
    rows = _settlement_rows(places, country, state, rng.random(n))
    rows["world_ambiguity"], rows["world_look"], rows["world_group"], rows["look_idx"] = (
        "none",
        "",
        "shifted",
        -1,
    )
    rows["id"] = [f"world-s{spec.seed}-shifted-{i:06d}" for i in range(n)]
    rows["image"] = "shifted/images/" + rows["id"].astype(str) + ".jpg"  # relative to the world's folder
    return rows


def _settlement_rows(
    places: pd.DataFrame, country: np.ndarray, state: np.ndarray, pick: np.ndarray
) -> pd.DataFrame:
    groups = places.groupby(["country_idx", "state_idx"]).indices
    index = np.array(
        [groups[(c, s)][int(u * len(groups[(c, s)]))] for c, s, u in zip(country, state, pick, strict=True)],
        dtype=np.int64,
    )
    return places.iloc[index].reset_index(drop=True)


def _country_rgb(country_idx: int, countries: int) -> np.ndarray:
    hue = country_idx / countries
    value = 0.85 if country_idx % 2 == 0 else 0.7  # neighbours in hue differ in brightness too
    return np.array(colorsys.hsv_to_rgb(hue, 0.6, value)) * 255.0


def _look_rgb(look_idx: int, looks: int) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((look_idx + 0.5) / looks, LOOK_SATURATION, 0.8)) * 255.0


def render_photo(row: Any, spec: WorldSpec, row_number: int) -> np.ndarray:
    """One photo (H x W x 3 uint8) for one drawn row (a ``draw_rows`` row); noise seeded by (seed, row number)."""
    size = spec.image_size
    shifted = row.world_group == "shifted"
    rng = np.random.default_rng([spec.seed, 5 if shifted else 2, row_number])
    if row.look_idx >= 0:  # a shared look: its flat colour only
        pixels = np.broadcast_to(_look_rgb(row.look_idx, len(spec.shared_looks)), (size, size, 3)).copy()
    else:
        y, x = np.mgrid[0:size, 0:size].astype(np.float64)
        angle = np.deg2rad(STRIPE_ANGLES_DEG[row.state_idx % len(STRIPE_ANGLES_DEG)])
        periods = SHIFT_STRIPE_PERIODS_PX if shifted else STRIPE_PERIODS_PX
        period = periods[row.state_idx // len(STRIPE_ANGLES_DEG)]
        amplitude = FAINT_STRIPE_AMPLITUDE if row.world_ambiguity == "faint_state" else STRIPE_AMPLITUDE
        stripes = amplitude * np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / period)
        pixels = _country_rgb(row.country_idx, spec.countries)[None, None, :] + stripes[:, :, None]
    if row.world_ambiguity in ("none", "faint_state"):  # no_marker and shared_look photos have none
        span = size - 2 * MARKER_MARGIN_PX - MARKER_PX
        fx = (row.lon - row.lon_min) / max(row.lon_max - row.lon_min, 1e-9)
        fy = (row.lat_max - row.lat) / max(row.lat_max - row.lat_min, 1e-9)
        left, top = MARKER_MARGIN_PX + round(fx * span), MARKER_MARGIN_PX + round(fy * span)
        pixels[top : top + MARKER_PX, left : left + MARKER_PX] = SHIFT_MARKER_RGB if shifted else MARKER_RGB
    pixels += rng.normal(0.0, SHIFT_NOISE_SIGMA if shifted else NOISE_SIGMA, pixels.shape)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


MANIFEST_COLUMNS = [
    "id",
    "image",
    "lat",
    "lon",
    "world_split",
    "world_ambiguity",
    "world_look",
    "world_group",
]
SHIFTED_MANIFEST = "shifted/manifest.csv"


def build_world(output: str, spec: WorldSpec, overwrite: bool = False) -> dict:
    """Write the world's JPEGs, ``manifest.csv`` (and ``shifted/manifest.csv`` when
    ``spec.shifted_rows``) and completion marker under ``output`` (local or s3://).

    A complete world with the same spec is kept as it is (returned with ``"skipped": True``); a
    complete world with another spec needs ``overwrite``. The output is claimed first
    (geor_core/ownership.py: a non-empty folder geor did not write is refused), and only the
    world's own entries (marker, manifests, ``images/``) are replaced. Returns the marker's payload.
    """
    payload = json.loads(json.dumps({"kind": "geor-world", **asdict(spec)}))  # tuples as JSON lists
    marker = uris.read_marker(output)
    if marker is not None and not overwrite:
        defaults = json.loads(json.dumps(asdict(WorldSpec(rows=1))))  # keys older worlds did not record
        recorded = {k: marker.get(k, defaults.get(k)) for k in payload}
        if recorded == payload:
            return {**marker, "skipped": True}
        raise ValueError(
            f"{output} already holds another world ({ {k: v for k, v in recorded.items() if k != 'kind'} }); "
            "choose another output or overwrite it (geor make-world --overwrite)"
        )
    claim_output(output, "make-world").remove(uris.MARKER_NAME, "manifest.csv", "images", "shifted")
    places = choose_places(spec.countries, spec.seed, spec.country_codes)
    rows = draw_rows(places, spec)
    shifted = draw_shifted_rows(places, spec)
    fs, root = uris.filesystem(output)
    fs.makedirs(f"{root}/images", exist_ok=True)
    if len(shifted):
        fs.makedirs(f"{root}/shifted/images", exist_ok=True)
    for drawn in (rows, shifted):
        for start in range(0, len(drawn), WRITE_BATCH):
            batch = drawn.iloc[start : start + WRITE_BATCH]
            fs.pipe(
                {
                    f"{root}/{r.image}": _jpeg(render_photo(r, spec, start + k))
                    for k, r in enumerate(batch.itertuples())
                }
            )
    uris.write_text(uris.join(output, "manifest.csv"), rows[MANIFEST_COLUMNS].to_csv(index=False))
    if len(shifted):  # image references relative to shifted/, like the main manifest's to the world
        shifted_manifest = shifted[MANIFEST_COLUMNS].assign(
            image=shifted["image"].str.removeprefix("shifted/")
        )
        uris.write_text(uris.join(output, SHIFTED_MANIFEST), shifted_manifest.to_csv(index=False))
    payload.update(
        places=len(places),
        splits={name: int(n) for name, n in rows["world_split"].value_counts().sort_index().items()},
        ambiguity={name: int(n) for name, n in rows["world_ambiguity"].value_counts().sort_index().items()},
        countries_used=sorted(places["cc"].unique().tolist()),
    )
    if spec.shared_looks:
        payload["looks"] = {
            name: int(n) for name, n in rows["world_look"].value_counts().sort_index().items() if name
        }
    uris.write_marker(output, payload)
    return payload
