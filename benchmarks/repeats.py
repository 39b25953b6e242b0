"""Repeated runs of a benchmark's configurations, summarised one way: the median and the [min, max]
of each figure over the repeats."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

Runs = dict[str, list[dict[str, float]]]  # configuration -> one record per repeat


def median_and_spread(runs: Runs, keys: Sequence[str]) -> tuple[dict[str, dict], dict[str, dict]]:
    """({configuration: {key: median}}, {configuration: {key: [min, max]}})."""
    median = {name: {k: statistics.median(r[k] for r in found) for k in keys} for name, found in runs.items()}
    spread = {
        name: {k: [min(r[k] for r in found), max(r[k] for r in found)] for k in keys}
        for name, found in runs.items()
    }
    return median, spread
