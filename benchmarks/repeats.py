"""Repeated runs of a benchmark's configurations, summarised one way: the median and the [min, max]
of each figure over the repeats.

Every benchmark imports this module, which also lets Python cache bytecode for the benchmark and
every process it starts (Ray workers included), as `make` does: on a machine that sets
PYTHONDONTWRITEBYTECODE with an install that compiled nothing, each process would otherwise
compile torch, transformers and Ray from source (measured: 7.7 s against 3.6 s to import them),
and the side with more processes would be charged for it."""

from __future__ import annotations

import os
import statistics
import sys
from collections.abc import Sequence

os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

Runs = dict[str, list[dict[str, float]]]  # configuration -> one record per repeat


def median_and_spread(runs: Runs, keys: Sequence[str]) -> tuple[dict[str, dict], dict[str, dict]]:
    """({configuration: {key: median}}, {configuration: {key: [min, max]}})."""
    median = {name: {k: statistics.median(r[k] for r in found) for k in keys} for name, found in runs.items()}
    spread = {
        name: {k: [min(r[k] for r in found), max(r[k] for r in found)] for k in keys}
        for name, found in runs.items()
    }
    return median, spread
