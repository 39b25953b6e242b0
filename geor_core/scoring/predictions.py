"""The predictions table: one row per photo, built from the model's completions (and the truth).

Every completion is parsed by the one rule (geor_core.geo.parse); nothing is dropped: a completion
without an in-range pair is a row with NaN ``lat``/``lon`` and its ``parse_error``, and a photo
that could not be loaded is a row with an empty completion and its ``inference_error``.

Columns of every table (``PHOTO_SCHEMA``): the photo's ``id`` and ``image``, the ``completion``
text, the parsed ``country``/``state``/``city``/``lat``/``lon``, ``format_ok``, ``chain_ok``,
``parse_error``; ``point_country_code``/``point_state``/``point_city``, the gazetteer's reading
of the predicted point; and Chain-of-Region consistency: ``cor_country_consistent`` (the named
country is the one the gazetteer places the point in) and ``cor_state_consistent`` (country and
state both). With the truth (``EVALUATION_SCHEMA``) also: ``split``, ``group`` (the prepared row's, "" when
none), the truth columns
(``truth_lat`` ... ``truth_city``), ``error_km`` (Haversine, NaN when missing), the level
matches of the named levels against the truth (the ``text`` comparison of the metrics) and the
reward components of geor_core.scoring.rewards whose table entry keeps a column (``reward_distance``
... ``reward_combined``; ``evaluation_schema()`` reads the table).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from geor_core.config import RewardConfig
from geor_core.geo import gazetteer
from geor_core.geo.parse import parse_many
from geor_core.scoring import rewards
from geor_core.scoring.metrics import level_matches

_PARSED_FIELDS = [
    pa.field("completion", pa.string()),
    pa.field("inference_error", pa.string()),
    pa.field("country", pa.string()),
    pa.field("state", pa.string()),
    pa.field("city", pa.string()),
    pa.field("lat", pa.float64()),
    pa.field("lon", pa.float64()),
    pa.field("format_ok", pa.bool_()),
    pa.field("chain_ok", pa.bool_()),
    pa.field("parse_error", pa.string()),
    pa.field("point_country_code", pa.string()),
    pa.field("point_state", pa.string()),
    pa.field("point_city", pa.string()),
    pa.field("cor_country_consistent", pa.bool_()),
    pa.field("cor_state_consistent", pa.bool_()),
]
PHOTO_SCHEMA = pa.schema([pa.field("id", pa.string()), pa.field("image", pa.string()), *_PARSED_FIELDS])
TRUTH_COLUMNS = ("truth_lat", "truth_lon", "truth_country_code", "truth_country", "truth_state", "truth_city")
# truth column -> the column of a `geor prepare` output it comes from
PREPARED_TRUTH = {
    "truth_lat": "lat",
    "truth_lon": "lon",
    "truth_country_code": "country_code",
    "truth_country": "country",
    "truth_state": "state",
    "truth_city": "city",
}


def reward_columns() -> tuple[str, ...]:
    """The reward components kept as ``reward_<name>`` columns: those the table marks, and combined."""
    return (*(c.name for c in rewards.COMPONENTS if c.column), rewards.COMBINED)


def evaluation_schema() -> pa.Schema:
    """The schema of predictions scored against the truth, its reward columns read from the table."""
    return pa.schema(
        [
            pa.field("id", pa.string()),
            pa.field("split", pa.string()),
            pa.field("group", pa.string()),
            pa.field("image", pa.string()),
            *(
                pa.field(name, pa.float64() if name in ("truth_lat", "truth_lon") else pa.string())
                for name in TRUTH_COLUMNS
            ),
            *_PARSED_FIELDS,
            pa.field("error_km", pa.float64()),
            pa.field("country_match", pa.bool_()),
            pa.field("state_match", pa.bool_()),
            pa.field("city_match", pa.bool_()),
            *(pa.field(f"reward_{name}", pa.float64()) for name in reward_columns()),
        ]
    )


EVALUATION_SCHEMA = evaluation_schema()  # with the shipped reward table


def _parsed_columns(completions: Sequence[str], inference_errors: Sequence[str]) -> dict[str, Any]:
    """The parsed prediction of each completion, and what the gazetteer says about its point."""
    parsed = parse_many(completions)
    n = len(completions)
    found = np.flatnonzero(~parsed.missing)
    point = {key: np.full(n, None, dtype=object) for key in ("country_code", "admin1", "city")}
    if found.size:
        place = gazetteer.lookup(parsed.lat[found], parsed.lon[found])
        for key in point:
            point[key][found] = place[key]
    country_ok, state_ok, _ = level_matches(
        parsed.country, parsed.state, parsed.city, point["country_code"], point["admin1"], point["city"]
    )
    return {
        "completion": list(completions),
        "inference_error": list(inference_errors),
        "country": parsed.country,
        "state": parsed.state,
        "city": parsed.city,
        "lat": parsed.lat,
        "lon": parsed.lon,
        "format_ok": parsed.format_ok,
        "chain_ok": parsed.chain_ok,
        "parse_error": parsed.error,
        "point_country_code": point["country_code"],
        "point_state": point["admin1"],
        "point_city": point["city"],
        "cor_country_consistent": np.asarray(country_ok, dtype=bool),
        "cor_state_consistent": np.asarray(state_ok, dtype=bool),
    }


def _check_lengths(n: int, **columns: Sequence[Any]) -> None:
    for name, values in columns.items():
        if len(values) != n:
            raise ValueError(f"{name} has {len(values)} values but there are {n} rows")


def photo_predictions(
    ids: Sequence[str], images: Sequence[str], completions: Sequence[str], inference_errors: Sequence[str]
) -> pa.Table:
    """Predictions for photos without truth (`geor predict`), one row per photo (``PHOTO_SCHEMA``)."""
    _check_lengths(len(ids), images=images, completions=completions, inference_errors=inference_errors)
    columns = {"id": list(ids), "image": list(images), **_parsed_columns(completions, inference_errors)}
    return pa.table(columns, schema=PHOTO_SCHEMA)


def evaluation_predictions(
    truth: pa.Table,
    completions: Sequence[str],
    inference_errors: Sequence[str],
    reward: RewardConfig | None = None,
) -> pa.Table:
    """Predictions scored against the truth (``EVALUATION_SCHEMA``), one row per truth row.

    ``truth`` has the columns of a `geor prepare` output: id, split, image, lat, lon,
    country_code, country, state, city, and optionally group ("" where absent or null)."""
    n = truth.num_rows
    _check_lengths(n, completions=completions, inference_errors=inference_errors)
    known = {name: truth.column(source).to_pylist() for name, source in PREPARED_TRUTH.items()}
    columns = _parsed_columns(completions, inference_errors)
    facts = rewards.Truth(*(known[f"truth_{name}"] for name in rewards.TRUTH_COLUMNS))
    scores = rewards.score_completions(list(completions), facts, reward or RewardConfig())
    matches = level_matches(
        columns["country"], columns["state"], columns["city"], facts.country_code, facts.state, facts.city
    )
    table = {
        "id": truth.column("id").to_pylist(),
        "split": truth.column("split").to_pylist(),
        "group": pc.fill_null(truth.column("group"), "").to_pylist()
        if "group" in truth.column_names
        else [""] * n,
        "image": truth.column("image").to_pylist(),
        **known,
        **columns,
        "error_km": scores["distance_km"],
        **{
            f"{level}_match": np.asarray(m, dtype=bool)
            for level, m in zip(("country", "state", "city"), matches, strict=True)
        },
        **{f"reward_{name}": scores[name] for name in reward_columns()},
    }
    return pa.table(table, schema=evaluation_schema())
