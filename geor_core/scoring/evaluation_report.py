"""The comparison table of several models' evaluation reports (Ray-free).

Each model's report (geor_core.scoring.report_tally) comes from `geor score`'s own code over the
predictions table in text mode (the ``completion`` column parsed by the one rule, the truth from
``truth_lat`` / ``truth_lon``), so `geor evaluate` and `geor score --predictions <predictions dir>
--truth <predictions dir> --text-col completion --lat-col truth_lat --lon-col truth_lon` agree,
overall and per split (and per group: the prepared rows' ``group``, from ``prepare.group_col``,
with the mean combined reward beside). Every row is scored: a completion without a pair is a
miss, never a dropped row.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from geor_core.scoring.published import published_rows
from geor_core.scoring.scoring import METRIC_COLUMNS

# sampled_reward: the mean combined reward of sampled completions (eval.sampled_rows; "-" when off)
COMPARISON_COLUMNS = ("model", "source", "n", "n_missing", *METRIC_COLUMNS, "sampled_reward")
# then, where the rows have groups, ``reward_<group>``: the mean combined reward of the greedy
# completions on that group's rows (``ModelReport.groups``), e.g. reward_ambiguous, reward_clean
GROUP_REWARD_PREFIX = "reward_"
# Scalars of a score result logged as MLflow metrics (the rest is counts by reason and id samples).
METRIC_KEYS = ("n", "n_missing", *METRIC_COLUMNS, "missing_rate")


def group_rewards(groups: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``reward_<group>`` -> the group's mean combined reward, for the comparison table (rows with
    no group: ``reward_ungrouped``)."""
    return {f"{GROUP_REWARD_PREFIX}{name or 'ungrouped'}": group["reward"] for name, group in groups.items()}


def comparison_rows(
    models: Iterable[tuple[str, str, dict[str, Any]]], benchmark: str | None = None
) -> list[dict[str, Any]]:
    """One row per (label, source, metrics: a score result, plus ``sampled_reward`` where measured
    and ``reward_<group>`` per group), then the benchmark's published rows if any."""
    rows = [
        {
            "model": label,
            "source": source,
            **{key: metrics.get(key) for key in COMPARISON_COLUMNS[2:]},
            **{key: value for key, value in metrics.items() if key.startswith(GROUP_REWARD_PREFIX)},
        }
        for label, source, metrics in models
    ]
    if benchmark:
        rows += [{key: row.get(key) for key in COMPARISON_COLUMNS} for row in published_rows(benchmark)]
    return rows


def group_reward_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Every ``reward_<group>`` key the rows carry, by name."""
    return sorted({key for row in rows for key in row if key.startswith(GROUP_REWARD_PREFIX)})


def comparison_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The comparison table's columns: ``COMPARISON_COLUMNS``, then each row's ``reward_<group>``."""
    return [*COMPARISON_COLUMNS, *group_reward_columns(rows)]


def group_reward_change(rows: Sequence[dict[str, Any]], before: str, after: str) -> str | None:
    """In words, per group, how the mean greedy reward moved from model ``before`` to ``after`` (e.g.
    ``sft`` -> ``grpo``); None unless both rows are in the table with group rewards."""
    by_model = {row["model"]: row for row in rows}
    if before not in by_model or after not in by_model:
        return None
    old, new = by_model[before], by_model[after]
    changes = [
        f"{column.removeprefix(GROUP_REWARD_PREFIX)} {old[column]:.3f} -> {new[column]:.3f} "
        f"({new[column] - old[column]:+.3f})"
        for column in group_reward_columns(rows)
        if old.get(column) is not None and new.get(column) is not None
    ]
    if not changes:
        return None
    return f"{after} against {before}, mean reward of greedy answers per group: " + ", ".join(changes)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub-flavoured markdown table; floats with 2 decimals, None as "-"."""

    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and value != value):
            return "-"
        if isinstance(value, float):
            return f"{value:.2f}"
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"
