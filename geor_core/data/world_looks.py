"""The posterior a shared look leaves: where a photo of a look shared by several countries can be.

A shared look (``geor make-world``'s ``data.world_shared_looks``) hides a photo's country behind
one flat colour. The world's draw rule then gives every settlement of the look's countries a
probability; geor_core.scoring.look_gap compares the reward's optimum under it with what greedy
imitation of the targets answers (benchmarks/world_looks.py prints both per look).
"""

from __future__ import annotations

import pandas as pd

from geor_core.data.world import STATES_PER_COUNTRY
from geor_core.geo.cor import cor_target
from geor_core.geo.countries import country_name


def look_posterior(places: pd.DataFrame, look: tuple[tuple[str, float], ...]) -> pd.DataFrame:
    """Where a photo of ``look`` can be: the look's settlements (``choose_places`` rows) with the
    probability ``draw_rows`` gives each (the country's weight, 1/6 for its state, uniform within
    the state) in ``prob``, and the answer its CoR target names (``answer``)."""
    weight = dict(look)
    rows = places[places["cc"].isin(list(weight))].copy()
    per_state = rows.groupby(["cc", "state_idx"])["name"].transform("size")
    rows["prob"] = rows["cc"].map(weight) / STATES_PER_COUNTRY / per_state
    rows["answer"] = [
        _answer(cor_target("look", country_name(r.cc), r.admin1, r.name, r.lat, r.lon, seed=0))
        for r in rows.itertuples()
    ]
    return rows.reset_index(drop=True)


def _answer(target: str) -> str:
    return target[target.index("<answer>") + len("<answer>") : target.index("</answer>")]
