"""Published results on the standard benchmarks (docs/design.md), shown beside ours for reference.

Percent of photos within 1 / 25 / 200 / 750 / 2500 km, as the papers report them (Geo-R, AAAI
2026, Table 1 and its YFCC4K table). A benchmark is named explicitly (``--benchmark``) or found
in the names of the data (``im2gps3k``, ``yfcc4k``; case, ``-``, ``_`` and spaces ignored).
"""

from __future__ import annotations

import re

from geor_core.scoring.metrics import THRESHOLDS_KM

SOURCE = "published (Geo-R paper, AAAI 2026)"
PUBLISHED: dict[str, tuple[tuple[str, tuple[float, ...]], ...]] = {
    "im2gps3k": (
        ("Geo-R", (18.10, 41.53, 58.31, 75.33, 86.42)),
        ("GeoCLIP", (14.11, 34.47, 50.65, 69.67, 83.82)),
        ("PIGEON", (11.3, 36.7, 53.8, 72.4, 85.3)),
        ("G3", (16.65, 40.94, 55.56, 71.24, 84.68)),
    ),
    "yfcc4k": (("Geo-R", (10.5, 22.7, 40.0, 60.8, 75.8)),),
}
BENCHMARKS = tuple(PUBLISHED)
_SEPARATORS = re.compile(r"[\s_\-]+")


def published_rows(benchmark: str) -> list[dict[str, object]]:
    """The published rows for ``benchmark``: model, source and ``acc_<t>km`` per threshold."""
    if benchmark not in PUBLISHED:
        raise ValueError(f"unknown benchmark {benchmark!r}; known: {', '.join(BENCHMARKS)}")
    return [
        {
            "model": model,
            "source": SOURCE,
            **{f"acc_{t}km": value for t, value in zip(THRESHOLDS_KM, values, strict=True)},
        }
        for model, values in PUBLISHED[benchmark]
    ]


def detect_benchmark(*names: str) -> str | None:
    """The benchmark whose name appears in any of ``names`` (URIs, manifest paths), else None."""
    for name in names:
        folded = _SEPARATORS.sub("", str(name).casefold())
        for benchmark in BENCHMARKS:
            if benchmark in folded:
                return benchmark
    return None
