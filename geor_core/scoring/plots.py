"""Evaluation plots as PNG bytes, drawn offline with matplotlib's Agg canvas (no pyplot state, no
map download): error CDF, world map of truth vs prediction, per-country bars.

The world map's background is the gazetteer's own settlements (geor_core.geo.gazetteer), one faint
dot each, which outlines the inhabited world well enough to read where predictions land.
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from geor_core.geo import gazetteer
from geor_core.scoring.metrics import DISTANCE_EDGES_KM, THRESHOLDS_KM, MetricSums

THRESHOLD_NAMES = {1: "street", 25: "city", 200: "region", 750: "country", 2500: "continent"}
MIN_KM, MAX_KM = 0.1, 20038.0  # half the Earth's circumference: no error is larger
MAX_LINES = 2000  # truth-to-prediction lines drawn on the map (all points are drawn)
DPI = 110


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def error_cdf_png(curves: Mapping[str, MetricSums]) -> bytes:
    """Share of the scored rows within d km, against d on a log axis, one curve per model, from
    each model's error histogram (exact at every bin edge); a missing prediction never counts, so
    a curve tops out at 1 - missing rate."""
    figure = Figure(figsize=(7.5, 4.5))
    axes = figure.add_subplot()
    for label, sums in curves.items():
        counts = np.zeros(DISTANCE_EDGES_KM.size + 1)
        for bin_, count in sums.histogram.items():
            counts[bin_] += count
        share = np.cumsum(counts)[:-1] / max(sums.n, 1)  # errors <= each edge
        axes.plot(DISTANCE_EDGES_KM, share * 100.0, label=f"{label} (n={sums.n})", linewidth=1.6)
    for threshold in THRESHOLDS_KM:
        axes.axvline(threshold, color="0.6", linestyle="--", linewidth=0.8)
        axes.text(
            threshold,
            101,
            f"{threshold} km\n{THRESHOLD_NAMES[threshold]}",
            ha="center",
            va="bottom",
            fontsize=7,
        )
    axes.set_xscale("log")
    axes.set_xlim(MIN_KM, MAX_KM)
    axes.set_ylim(0, 100)
    axes.set_xlabel("error (km, log scale)")
    axes.set_ylabel("% of photos within the error")
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    return _png(figure)


def world_map_png(
    pred_lat: ArrayLike,
    pred_lon: ArrayLike,
    truth_lat: ArrayLike | None = None,
    truth_lon: ArrayLike | None = None,
    title: str = "",
) -> bytes:
    """Predicted points (and the true ones, joined by a line) over the gazetteer's settlements."""
    figure = Figure(figsize=(10, 5.2))
    axes = figure.add_subplot()
    places = gazetteer.settlements()
    axes.scatter(places["lon"], places["lat"], s=0.2, c="0.72", marker=".", linewidths=0, rasterized=True)
    plat, plon = np.asarray(pred_lat, np.float64), np.asarray(pred_lon, np.float64)
    found = ~np.isnan(plat) & ~np.isnan(plon)
    if truth_lat is not None and truth_lon is not None:
        tlat, tlon = np.asarray(truth_lat, np.float64), np.asarray(truth_lon, np.float64)
        pairs = np.flatnonzero(found)[:MAX_LINES]
        segments = np.stack(
            [np.column_stack([tlon[pairs], tlat[pairs]]), np.column_stack([plon[pairs], plat[pairs]])], axis=1
        )
        axes.add_collection(LineCollection(segments, colors="0.35", linewidths=0.4, alpha=0.5))
        axes.scatter(tlon, tlat, s=9, c="tab:green", marker="o", linewidths=0, label="truth")
    axes.scatter(plon[found], plat[found], s=12, c="tab:red", marker="x", linewidths=0.8, label="prediction")
    missing = int((~found).sum())
    axes.set_title(f"{title}  ({found.sum()} predicted, {missing} without a prediction)".strip(), fontsize=10)
    axes.set_xlim(-180, 180)
    axes.set_ylim(-90, 90)
    axes.set_aspect("equal")
    axes.set_xlabel("longitude")
    axes.set_ylabel("latitude")
    axes.legend(loc="lower left", fontsize=8, markerscale=1.5)
    figure.tight_layout()
    return _png(figure)


def country_bars_png(per_country: pd.DataFrame, title: str = "") -> bytes:
    """Grouped bars per country (a report's per_country rows): % within 200 / 750 km and
    % naming the right country."""
    bars = (
        ("acc_200km", "within 200 km"),
        ("acc_750km", "within 750 km"),
        ("country_match_rate", "country named"),
    )
    figure = Figure(figsize=(max(6.0, 0.7 * len(per_country) + 2.0), 4.5))
    axes = figure.add_subplot()
    positions = np.arange(len(per_country))
    width = 0.8 / len(bars)
    for i, (column, label) in enumerate(bars):
        values = pd.to_numeric(per_country[column], errors="coerce").fillna(0.0).to_numpy(float)
        axes.bar(positions + (i - 1) * width, values, width, label=label)
    labels = [
        f"{code}\n(n={n})" for code, n in zip(per_country["country_code"], per_country["n"], strict=True)
    ]
    axes.set_xticks(positions, labels, fontsize=8)
    axes.set_ylim(0, 100)
    axes.set_ylabel("%")
    axes.set_title(title or "per country (most frequent true countries)", fontsize=10)
    if per_country.empty:
        axes.text(0.5, 0.5, "no rows", ha="center", va="center", transform=axes.transAxes)
    axes.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    return _png(figure)
