"""Register a candidate model and apply the champion gate: the last step of `geor pipeline` and of
`geor retrain`, so both promote by exactly the same rule (geor_core/registry/promotion.py).

1. The benchmark: ``registry.benchmark`` when set, else the one recorded on the registered model,
   else the candidate's own prepared dataset (recorded on the registered model from then on), so
   every later candidate and champion are scored on the same rows (its ``test`` split).
2. Scorecards: greedy `geor evaluate` metrics on that split. A scorecard is reused when it was
   computed on the same benchmark (fingerprint) with the same evaluation settings; otherwise
   the model is evaluated again (the champion too).
3. The candidate's HF directory is logged as the artifacts of a ``register`` run and registered
   as a new version with its lineage, scorecard and the gate's decision as tags; the alias
   ``champion`` moves to it only when the gate says so. The decision and both scorecards are
   logged to MLflow and printed whichever way it goes.
4. The move is a compare-and-set under the registry lock (``registry.lock``, held only for the
   check and the move, not while scoring): when the champion changed while the gate was scoring
   (another promotion), the candidate stays registered, its ``geor.gate`` tag says why it was not
   promoted, and the gate stops with an error asking to re-run it against the new champion.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass
from typing import Any

from geor_core import uris
from geor_core.config import GeorConfig
from geor_core.errors import UserFacingError
from geor_core.registry import registry
from geor_core.registry.lineage import data_fingerprint
from geor_core.registry.promotion import GateDecision, decide
from geor_core.registry.stage_state import stage_key
from geor_core.registry.tracking import stage_run, tracking_uri

BENCHMARK_SPLIT = "test"
SCORECARD_KEYS = (
    "n",
    "n_missing",
    "acc_25km",
    "acc_200km",
    "acc_750km",
    "acc_2500km",
    "median_km",
    "geoscore",
    "format_rate",
    "country_match_rate",
    "state_match_rate",
    "sampled_reward",
)


@dataclass
class GateOutcome:
    """A registered candidate and what the gate decided about it."""

    model_name: str
    version: str
    promoted: bool
    decision: GateDecision
    benchmark: str
    champion_version: str | None  # the champion the candidate was compared with


def scorecard_settings(cfg: GeorConfig, benchmark: str) -> dict[str, Any]:
    """What a scorecard depends on besides the model: the benchmark rows and the greedy settings."""
    evaluation = dataclasses.asdict(cfg.eval)
    evaluation["splits"] = [BENCHMARK_SPLIT]
    return {
        "benchmark": benchmark,
        "benchmark_fingerprint": data_fingerprint(benchmark),
        "eval_key": stage_key("scorecard", evaluation, {}),
    }


def scorecard_from_metrics(metrics: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    card = {key: metrics.get(key) for key in SCORECARD_KEYS if metrics.get(key) is not None}
    return {**card, **settings}


def _same_rows(card: dict[str, Any], settings: dict[str, Any]) -> bool:
    return all(card.get(key) == value for key, value in settings.items() if key != "benchmark")


def evaluate_scorecard(
    cfg: GeorConfig, model_uri: str, label: str, settings: dict[str, Any], output_uri: str
) -> dict[str, Any]:
    """Greedy evaluation of ``model_uri`` on the benchmark's test split."""
    from tasks.evaluate import run_evaluate

    eval_cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, splits=[BENCHMARK_SPLIT]))
    result = run_evaluate(eval_cfg, settings["benchmark"], [f"{label}={model_uri}"], output_uri)
    return scorecard_from_metrics(result.models[0].report.metrics, settings)


def resolve_benchmark(cfg: GeorConfig, client: Any, fallback: str) -> str:
    if cfg.registry.benchmark:
        return cfg.registry.benchmark
    recorded = (registry.registered_tags(client, cfg.registry.model_name) or {}).get(registry.BENCHMARK_TAG)
    return recorded or fallback


def _champion_scorecard(
    cfg: GeorConfig, client: Any, champion: registry.Version, settings: dict[str, Any], work_uri: str
) -> dict[str, Any]:
    card = champion.scorecard
    if card and _same_rows(card, settings):
        return card
    print(
        f"geor gate: scoring champion v{champion.version} on {settings['benchmark']} (its scorecard is stale)"
    )
    uri = f"models:/{cfg.registry.model_name}/{champion.version}"
    card = evaluate_scorecard(
        cfg, uri, "champion", settings, uris.join(work_uri, f"champion-v{champion.version}")
    )
    client.set_model_version_tag(
        cfg.registry.model_name, champion.version, registry.SCORECARD_TAG, json.dumps(card)
    )
    return card


def _log_model_dir(export_uri: str) -> None:
    import mlflow

    if uris.is_s3(export_uri):
        with tempfile.TemporaryDirectory(prefix="geor-register-") as local:
            mlflow.log_artifacts(str(uris.copy_to_local(export_uri, local)), "model")
    else:
        mlflow.log_artifacts(uris.filesystem(export_uri)[1], "model")


def gate_and_register(
    cfg: GeorConfig,
    candidate_uri: str,
    *,
    lineage: dict[str, Any],
    work_uri: str,
    default_benchmark: str,
    candidate_metrics: dict[str, Any] | None = None,
    candidate_metrics_benchmark: str | None = None,
) -> GateOutcome:
    """Score the candidate (reusing ``candidate_metrics`` when they were computed on the benchmark's
    test split with these settings), register it, and promote it when it passes the gate."""
    client = registry.connect(tracking_uri(cfg), "registering a model")
    name = cfg.registry.model_name
    benchmark = resolve_benchmark(cfg, client, default_benchmark)
    settings = scorecard_settings(cfg, benchmark)
    if candidate_metrics is not None and candidate_metrics_benchmark == benchmark:
        candidate = scorecard_from_metrics(candidate_metrics, settings)
    else:
        candidate = evaluate_scorecard(
            cfg, candidate_uri, "candidate", settings, uris.join(work_uri, "candidate")
        )
    current = registry.champion(client, name)
    champion_card = _champion_scorecard(cfg, client, current, settings, work_uri) if current else None
    decision = decide(candidate, champion_card, cfg.registry)
    tags = {
        "geor.lineage_json": json.dumps(lineage, default=str),
        **{f"{registry.LINEAGE_PREFIX}{k}": v for k, v in lineage.items()},
        registry.SCORECARD_TAG: json.dumps(candidate),
        registry.BENCHMARK_TAG: benchmark,
        registry.GATE_TAG: ("promoted: " if decision.promote else "kept champion: ") + decision.reason,
    }
    with stage_run(cfg, "register", tags={"geor.upstream.model": candidate_uri, **tags}) as run:
        _log_model_dir(candidate_uri)
        version = registry.register(client, name, run.info.run_id, tags)
        if registry.registered_tags(client, name).get(registry.BENCHMARK_TAG) is None:
            client.set_registered_model_tag(name, registry.BENCHMARK_TAG, benchmark)
        if decision.promote:
            _promote(cfg, client, version.version, decision.reason, current, candidate_uri)
        _log_decision(decision, version.version, current)
    outcome = GateOutcome(
        name, version.version, decision.promote, decision, benchmark, current.version if current else None
    )
    print(format_decision(outcome))
    return outcome


def _promote(
    cfg: GeorConfig,
    client: Any,
    version: str,
    reason: str,
    compared_with: registry.Version | None,
    candidate_uri: str,
) -> None:
    """Move the alias to ``version`` only if the champion is still the one it was compared with
    (checked under the registry lock); otherwise record on the version that it was not promoted."""
    name = cfg.registry.model_name
    try:
        registry.set_champion(
            client,
            name,
            version,
            reason,
            expected_champion=compared_with.version if compared_with else None,
            lock_uri=registry.lock_uri(cfg),
        )
    except registry.ChampionChanged as exc:
        moved = f"{registry.label(exc.expected)} to {registry.label(exc.found)}"
        client.set_model_version_tag(
            name,
            version,
            registry.GATE_TAG,
            f"not promoted: the champion changed from {moved} during the gate",
        )
        raise UserFacingError(
            f"{exc}. v{version} stays registered, not promoted (model {candidate_uri})"
        ) from exc


def _log_decision(decision: GateDecision, version: str, champion: registry.Version | None) -> None:
    import mlflow

    numeric = {
        f"candidate/{k}": float(v) for k, v in decision.candidate.items() if isinstance(v, int | float)
    }
    if decision.champion:
        numeric |= {
            f"champion/{k}": float(v) for k, v in decision.champion.items() if isinstance(v, int | float)
        }
    mlflow.log_metrics({**numeric, "promoted": float(decision.promote)})
    mlflow.set_tags(
        {
            "geor.decision": "promote" if decision.promote else "keep",
            "geor.decision_reason": decision.reason,
            "geor.registered_version": version,
            "geor.compared_with": champion.version if champion else "none",
        }
    )
    mlflow.log_dict(dataclasses.asdict(decision), "gate_decision.json")


def format_decision(outcome: GateOutcome) -> str:
    """The gate's verdict as a few lines for the terminal."""
    d = outcome.decision
    verdict = "PROMOTED to champion" if outcome.promoted else "NOT promoted (champion kept)"
    lines = [f"{outcome.model_name} v{outcome.version}: {verdict}: {d.reason}"]
    for key in dict.fromkeys([d.metric, *d.deltas]):
        champ = f"  champion v{outcome.champion_version} {d.champion[key]:.4g}" if d.champion else ""
        lines.append(f"  {key}: candidate {d.candidate[key]:.4g}{champ}")
    return "\n".join(lines)
