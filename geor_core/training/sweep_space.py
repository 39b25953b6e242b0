"""The search space and objective of `geor sweep`, Ray-free: loading and validating the space YAML,
the validation objectives Tune ranks trials by, and each trial's full config.

A space is a YAML mapping of dotted config keys (any key of the one schema, geor_core.config) to:

    grpo.beta: [0.0, 0.02, 0.04]             # a list: one of these (the grid points under search=grid)
    reward.mode: {choice: [product, weighted_sum]}   # the same, spelled out
    reward.tau_km: {loguniform: [100, 2000]}  # a distribution: uniform, loguniform (floats), randint
    grpo.num_generations: {randint: [2, 8]}   #   (randint: integers, both ends included)
    grpo.temperature: 0.9                     # a scalar: the same in every trial

Checked before any trial starts (errors name the space, the key and the value): every key exists
in the schema (an unknown key is rejected by name, with the closest known key), a few keys are
not sweepable (``sweep.*``, ``tracking.*``, ``storage.*``, ``grpo.output``: the sweep owns them),
every listed value and both ends of every range pass the schema's own validation on top of the
base config, distributions suit the key's type (no uniform over an integer key), and grid search
gets lists only. Combinations are not checked up front: a combination the schema rejects (G not
dividing the batch, say) fails its trial, which the sweep reports while the other trials go on.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import typing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from geor_core.config import ConfigError, GeorConfig, SweepConfig, build_config, load_yaml

DISTRIBUTIONS = ("uniform", "loguniform", "randint")
NOT_SWEEPABLE = {
    "sweep": "the sweep's own settings are the same for every trial",
    "tracking": "every trial logs under the sweep's MLflow run",
    "storage": "trials write under the sweep's --output",
    "grpo.output": "each trial writes to <sweep output>/trials/<trial id>",
}


@dataclass(frozen=True)
class Objective:
    """A validation metric Tune ranks trials by, and the GRPO eval log key it is read from."""

    name: str
    eval_key: str
    better: str  # "max" or "min"
    doc: str


# On the fixed val subset (grpo.val_rows rows): `val_geoscore` and `val_greedy_*` are greedy
# completions (geor_core/training/greedy_validation.py, what a shipped model answers); the others are TRL's own
# evaluation, which SAMPLES grpo.num_generations completions per row at grpo.temperature / top_p.
OBJECTIVES = {
    objective.name: objective
    for objective in (
        Objective("val_geoscore", "eval_greedy/geoscore", "max", "greedy GeoScore 5000 exp(-d/1492.7 km), 0 if missing"),
        Objective("val_greedy_acc_200km", "eval_greedy/acc_200km", "max", "greedy: percent within 200 km"),
        Objective("val_sampled_geoscore", "eval_rewards/geoscore/mean", "max", "GeoScore of TRL's sampled eval completions"),
        Objective("val_reward", "eval_reward", "max", "the combined reward GRPO optimises (reward.mode)"),
        Objective("val_acc_25km", "eval_rewards/acc_25km/mean", "max", "share within 25 km"),
        Objective("val_acc_200km", "eval_rewards/acc_200km/mean", "max", "share within 200 km"),
        Objective("val_acc_750km", "eval_rewards/acc_750km/mean", "max", "share within 750 km"),
        Objective("val_distance", "eval_rewards/distance/mean", "max", "the distance reward component"),
        Objective("val_region", "eval_rewards/region/mean", "max", "the region reward component"),
        Objective("val_format", "eval_rewards/format/mean", "max", "share with exactly one in-range pair"),
        Objective("val_chain", "eval_rewards/chain/mean", "max", "share with the four labels in order"),
        Objective("val_parse_failed", "eval_rewards/parse_failed/mean", "min", "share without a prediction"),
    )
}  # fmt: skip


def objective_of(sweep: SweepConfig) -> Objective:
    """The objective ``sweep.metric`` names, checked against ``sweep.mode``."""
    found = OBJECTIVES.get(sweep.metric)
    if found is None:
        raise ConfigError(f"sweep.metric: got {sweep.metric!r}, allowed: {', '.join(OBJECTIVES)}")
    if sweep.mode != found.better:
        raise ConfigError(
            f"sweep.mode: got {sweep.mode!r} for sweep.metric={found.name!r}, which is better when "
            f"{'higher' if found.better == 'max' else 'lower'} (set sweep.mode={found.better})"
        )
    return found


@dataclass(frozen=True)
class Dimension:
    """One dotted key of the space: ``kind`` is choice, constant or a distribution; ``values`` holds
    the options (choice), the value (constant) or the (low, high) ends (distributions)."""

    key: str
    kind: str
    values: tuple

    def to_yaml_value(self) -> Any:
        if self.kind == "constant":
            return self.values[0]
        return {self.kind: list(self.values)}


@dataclass(frozen=True)
class SearchSpace:
    """The dimensions of a sweep, in the order the YAML gives them."""

    source: str
    dimensions: tuple[Dimension, ...]

    def largest(self, key: str, default: Any) -> Any:
        """The largest value ``key`` can take in a trial (``default``, the base value, when not swept)."""
        for dimension in self.dimensions:
            if dimension.key == key:
                return max(dimension.values)
        return default

    def to_dict(self) -> dict[str, Any]:
        """The space as YAML-ready data (logged with the sweep, compared on resume)."""
        return {d.key: d.to_yaml_value() for d in self.dimensions}


def shipped_spaces() -> list[str]:
    """Names of the spaces shipped in ``configs/spaces``."""
    folder = resources.files("configs") / "spaces"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_space(source: str) -> SearchSpace:
    """A YAML path, or the name of a shipped space -> the parsed space (keys checked, values not yet)."""
    path = Path(source)
    if source.endswith((".yaml", ".yml")) or path.exists():
        if not path.is_file():
            raise ConfigError(f"space file {source!r} does not exist")
        text = path.read_text()
    else:
        candidate = resources.files("configs") / "spaces" / f"{source}.yaml"
        if not candidate.is_file():
            raise ConfigError(
                f"unknown space {source!r}; shipped spaces: {', '.join(shipped_spaces())} (or a YAML path)"
            )
        text = candidate.read_text()
    return parse_space(load_yaml(text, f"space {source!r}"), source)


def parse_space(data: Any, source: str) -> SearchSpace:
    """Parsed YAML -> a space; every key must name a sweepable key of the schema."""
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"space {source!r} must be a non-empty mapping of dotted config keys to values")
    dimensions = []
    for key, value in data.items():
        _check_key(str(key), source)
        dimensions.append(_dimension(str(key), value, source))
    return SearchSpace(source, tuple(dimensions))


def _schema_keys(cls: type = GeorConfig, prefix: str = "") -> dict[str, Any]:
    """Every dotted leaf key of the schema -> its type hint."""
    hints = typing.get_type_hints(cls)
    keys: dict[str, Any] = {}
    for spec in dataclasses.fields(cls):
        key = f"{prefix}{spec.name}"
        hint = hints[spec.name]
        if dataclasses.is_dataclass(hint):
            keys |= _schema_keys(hint, f"{key}.")
        else:
            keys[key] = hint
    return keys


def _check_key(key: str, source: str) -> None:
    known = _schema_keys()
    inside = sorted(k for k in known if k.startswith(f"{key}."))
    if inside:
        raise ConfigError(
            f"space {source!r}: {key!r} names a section, not a key; write dotted keys such as {inside[0]!r}"
        )
    if key not in known:
        section = key.rsplit(".", 1)[0] if "." in key else ""
        near = difflib.get_close_matches(key, list(known), n=1)
        siblings = sorted(k for k in known if section and k.startswith(f"{section}."))
        hint = f"; did you mean {near[0]!r}?" if near else ""
        listing = f" Keys of {section!r}: {', '.join(siblings)}" if siblings else ""
        raise ConfigError(f"space {source!r}: unknown key {key!r}{hint}{listing}")
    for prefix, reason in NOT_SWEEPABLE.items():
        if key == prefix or key.startswith(f"{prefix}."):
            raise ConfigError(f"space {source!r}: {key!r} cannot be swept ({reason})")


def _dimension(key: str, value: Any, source: str) -> Dimension:
    where = f"space {source!r}: {key}"
    if isinstance(value, list):
        value = {"choice": value}
    if not isinstance(value, dict):
        return Dimension(key, "constant", (value,))
    if len(value) != 1:
        raise ConfigError(
            f"{where}: got {value!r}; a mapping must be exactly one of choice, {', '.join(DISTRIBUTIONS)}"
        )
    kind, args = next(iter(value.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ConfigError(f"{where}: choice needs a non-empty list, got {args!r}")
        return Dimension(key, "choice", tuple(args))
    if kind not in DISTRIBUTIONS:
        raise ConfigError(
            f"{where}: unknown distribution {kind!r}; allowed: choice, {', '.join(DISTRIBUTIONS)}"
        )
    if not isinstance(args, list) or len(args) != 2:
        raise ConfigError(f"{where}: {kind} needs [low, high], got {args!r}")
    low, high = (_number(a, where) for a in args)
    if low >= high and not (kind == "randint" and low == high):
        raise ConfigError(f"{where}: {kind} needs low < high, got [{low}, {high}]")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform needs low > 0, got {low}")
    if kind == "randint" and not all(isinstance(a, int) for a in (low, high)):
        raise ConfigError(f"{where}: randint needs integer ends, got [{low}, {high}]")
    return Dimension(key, kind, (low, high))


def _number(value: Any, where: str) -> float | int:
    if isinstance(value, str):  # YAML 1.1 reads "1e-6" (no dot) as a string
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: range ends must be numbers, got {value!r}")
    return value


def check_space(space: SearchSpace, base: GeorConfig, search: str) -> None:
    """Every value of every dimension passes the schema on top of ``base``; distributions suit the
    key's type; grid search gets lists only. Raises ConfigError naming the key and value."""
    hints = _schema_keys()
    values = base.to_dict()
    for dimension in space.dimensions:
        where = f"space {space.source!r}: {dimension.key}"
        if search == "grid" and dimension.kind in DISTRIBUTIONS:
            raise ConfigError(
                f"{where}: sweep.search=grid needs a list of values, got a {dimension.kind} range "
                "(list the grid points, or use sweep.search=random or optuna)"
            )
        hint = hints[dimension.key]
        if dimension.kind in ("uniform", "loguniform") and hint is not float:
            raise ConfigError(
                f"{where}: {dimension.kind} draws floats but the key holds {hint.__name__} values"
            )
        if dimension.kind == "randint" and hint not in (int, float):
            raise ConfigError(f"{where}: randint draws integers but the key holds {hint.__name__} values")
        for value in dimension.values:
            try:
                trial_config(values, {dimension.key: value})
            except ConfigError as exc:
                raise ConfigError(f"{where}: value {value!r} is not valid here: {exc}") from exc


def trial_config(base: dict[str, Any], params: dict[str, Any]) -> GeorConfig:
    """The base config (a ``GeorConfig.to_dict()``) with a trial's dotted ``params`` set, validated."""
    values = copy.deepcopy(base)
    for key, value in params.items():
        node = values
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value.item() if isinstance(value, np.generic) else value
    return build_config(values)


def validation_metrics(logged: dict[str, Any]) -> dict[str, float]:
    """GRPO's logged metrics (TRL eval keys) -> the objectives present among them, by objective name."""
    return {o.name: float(logged[o.eval_key]) for o in OBJECTIVES.values() if o.eval_key in logged}
