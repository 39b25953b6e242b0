"""The champion gate: one rule, used by the pipeline and by retraining, deciding whether a
candidate model replaces the registered champion.

Promote when there is no champion, or when the candidate beats the champion on
``registry.metric`` by more than ``registry.margin`` without falling more than
``registry.tolerance`` behind it on any of ``registry.guards``. Both scorecards must come from the
same benchmark rows (the caller guarantees it). Metrics are the evaluation report's: percentages
(acc_*, *_rate), GeoScore 0..5000, kilometres (lower is better).

Several candidates at once (the pipeline's SFT and SFT+GRPO models): ``best_candidate`` runs the
same rule between them, in order, a later one taking the lead only when it would have been
promoted over the one leading; the leader is the one compared with the champion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from geor_core.config import RegistryConfig
from geor_core.errors import UserFacingError

LOWER_IS_BETTER = frozenset({"median_km", "mean_km", "n_missing"})


@dataclass
class GateDecision:
    """The gate's verdict and the numbers behind it."""

    promote: bool
    reason: str
    metric: str
    candidate: dict[str, Any]
    champion: dict[str, Any] | None
    deltas: dict[str, float] = field(default_factory=dict)  # candidate better by (sign-adjusted)


def _value(scorecard: dict[str, Any], name: str, who: str) -> float:
    value = scorecard.get(name)
    if value is None:
        raise UserFacingError(
            f"the {who}'s scorecard has no {name!r} (has: {', '.join(sorted(scorecard))}); "
            "set registry.metric / registry.guards to metrics of the evaluation report"
        )
    return float(value)


def gain(name: str, candidate: float, champion: float) -> float:
    """How much better the candidate is on ``name`` (negative: worse), whatever the direction."""
    return champion - candidate if name in LOWER_IS_BETTER else candidate - champion


def decide(
    candidate: dict[str, Any],
    champion: dict[str, Any] | None,
    registry: RegistryConfig,
    rival: str = "the champion",
) -> GateDecision:
    """Apply the gate to two scorecards (``champion`` None: there is no champion yet); ``rival``
    names the other scorecard in the reason."""
    metric = registry.metric
    _value(candidate, metric, "candidate")
    if champion is None:
        return GateDecision(True, "no champion yet", metric, candidate, None)
    deltas = {
        name: gain(name, _value(candidate, name, "candidate"), _value(champion, name, "champion"))
        for name in (metric, *registry.guards)
    }
    for guard in registry.guards:
        if deltas[guard] < -registry.tolerance:
            return GateDecision(
                False,
                f"{guard} fell {-deltas[guard]:.4g} behind {rival} (tolerance {registry.tolerance:g})",
                metric,
                candidate,
                champion,
                deltas,
            )
    if deltas[metric] > registry.margin:
        reason = f"{metric} better by {deltas[metric]:.4g} (margin {registry.margin:g})"
        return GateDecision(True, reason, metric, candidate, champion, deltas)
    reason = f"{metric} better by {deltas[metric]:.4g}, not more than the margin {registry.margin:g}"
    return GateDecision(False, reason, metric, candidate, champion, deltas)


def best_candidate(
    candidates: list[tuple[str, dict[str, Any]]], registry: RegistryConfig
) -> tuple[int, dict[int, str]]:
    """The index of the candidate to compare with the champion, among ``(label, scorecard)`` pairs
    in order, and for each other candidate why it is not that one."""
    if not candidates:
        raise ValueError("no candidates to choose from")
    best, lost = 0, {}
    for index in range(1, len(candidates)):
        label, card = candidates[index]
        leader, leader_card = candidates[best]
        verdict = decide(card, leader_card, registry, rival=leader)
        if verdict.promote:
            lost[best] = f"{label} beat it: {verdict.reason}"
            best = index
        else:
            lost[index] = f"did not beat {leader}: {verdict.reason}"
    return best, lost
