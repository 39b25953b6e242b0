"""`geor score`'s result as sums that add up across batches of rows, so a report over many files
is computed batch by batch (in Ray Data workers) and merged, never holding every row at once.

``ScoredRows`` is every truth row joined to its prediction (geor_core.scoring.scoring builds it);
``ScoredRows.tally(rows)`` reduces a selection of its rows to a ``ScoreTally``; tallies merge;
``ScoreTally.result(median_km)`` is what ``score_tables`` returns for those rows. The median is
the one statistic that is not a sum: a single pass takes it from the rows' errors, a merged
report locates it with ``MetricSums.median_ranks`` and reads the errors of those bins again.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geor_core.scoring.metrics import MetricSums, metric_sums

MAX_IDS_SHOWN = 10
NO_PREDICTION_ROW = "no_prediction_row"


@dataclass
class ScoreTally:
    """A selection of scored rows as sums; ``merge`` adds two disjoint selections."""

    sums: MetricSums
    mode: str
    n_truth_rows: int = 0
    truth_invalid_reasons: Counter = field(default_factory=Counter)
    n_prediction_rows: int = 0
    missing_reasons: Counter = field(default_factory=Counter)
    unmatched_ids: list[str] = field(default_factory=list)  # the first MAX_IDS_SHOWN
    n_unmatched_predictions: int = 0

    def merge(self, other: ScoreTally) -> ScoreTally:
        return ScoreTally(
            self.sums.merge(other.sums),
            self.mode,
            self.n_truth_rows + other.n_truth_rows,
            self.truth_invalid_reasons + other.truth_invalid_reasons,
            self.n_prediction_rows + other.n_prediction_rows,
            self.missing_reasons + other.missing_reasons,
            (self.unmatched_ids + other.unmatched_ids)[:MAX_IDS_SHOWN],
            self.n_unmatched_predictions + other.n_unmatched_predictions,
        )

    def result(self, median_km: float | None) -> dict[str, Any]:
        """``score_tables``'s result for the rows tallied, given the median of their errors."""
        invalid = self.truth_invalid_reasons
        return {
            **self.sums.metrics(median_km),
            "mode": self.mode,
            "n_truth_rows": self.n_truth_rows,
            "n_truth_invalid": sum(invalid.values()),
            "truth_invalid_reasons": dict(sorted(invalid.items())),
            "n_prediction_rows": self.n_prediction_rows,
            "missing_reasons": dict(sorted(self.missing_reasons.items())),
            "n_unmatched_predictions": self.n_unmatched_predictions,
            "unmatched_prediction_ids": self.unmatched_ids,
        }


@dataclass
class ScoredRows:
    """Every truth row joined to its prediction: what scoring needs, per row, before any sum.

    Arrays named ``truth_*`` / ``has_prediction`` run over all truth rows; the others over the
    valid truth rows only (``valid``), in the same order."""

    mode: str
    truth_reason: np.ndarray  # per truth row: why its coordinate is invalid, "" when valid
    has_prediction: np.ndarray  # per truth row: a prediction row has its id
    pred_lat: np.ndarray
    pred_lon: np.ndarray
    true_lat: np.ndarray
    true_lon: np.ndarray
    reason: np.ndarray  # per valid row: why its prediction is missing ("" when it has a usable one)
    format_ok: np.ndarray | None
    levels: dict[str, Any]  # pred_<level> and truth_* lists over valid rows; empty: no levels named
    unmatched_ids: np.ndarray  # prediction ids that are not in the truth

    @property
    def valid(self) -> np.ndarray:
        return self.truth_reason == ""

    def tally(self, rows: np.ndarray | None = None) -> tuple[ScoreTally, np.ndarray]:
        """(the tally of the truth rows selected by the mask ``rows``, all when None; the error in km
        of each selected valid row, NaN where missing). Unmatched predictions count only in the
        tally of all rows."""
        everything = rows is None
        rows = np.ones(self.truth_reason.size, dtype=bool) if everything else np.asarray(rows, dtype=bool)
        keep = rows[self.valid]

        def pick(values: Any) -> Any:
            return None if values is None else np.asarray(values, dtype=object)[keep].tolist()

        sums, distance = metric_sums(
            self.pred_lat[keep],
            self.pred_lon[keep],
            self.true_lat[keep],
            self.true_lon[keep],
            format_ok=None if self.format_ok is None else self.format_ok[keep],
            **{name: pick(values) for name, values in self.levels.items()},
        )
        reasons = self.reason[keep]
        tally = ScoreTally(
            sums,
            self.mode,
            n_truth_rows=int(rows.sum()),
            truth_invalid_reasons=Counter(self.truth_reason[rows & ~self.valid].tolist()),
            n_prediction_rows=int(self.has_prediction[rows].sum())
            + (self.unmatched_ids.size if everything else 0),
            missing_reasons=Counter(reasons[reasons != ""].tolist()),
        )
        if everything:
            tally.n_unmatched_predictions = int(self.unmatched_ids.size)
            tally.unmatched_ids = self.unmatched_ids[:MAX_IDS_SHOWN].tolist()
        return tally, distance
