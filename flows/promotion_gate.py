"""Register candidate models and apply the champion gate: the last step of `geor pipeline` and of
`geor retrain`, so both promote by exactly the same rule (geor_core/registry/promotion.py).

1. The benchmark: ``registry.benchmark`` when set, else the one recorded on the registered model,
   else the candidates' own prepared dataset (recorded on the registered model from then on), so
   every later candidate and champion are scored on the same rows (its ``test`` split).
2. Scorecards: greedy `geor evaluate` metrics on that split. A scorecard is reused when it was
   computed on the same benchmark (fingerprint) with the same evaluation settings; otherwise
   the model is evaluated again (the champion too).
3. Every candidate is registered as a new version with its lineage, scorecard and the gate's
   verdict as tags: from the MLflow model its training run logged when its export's marker
   names one, else from its Hugging Face directory logged as artifacts of the ``register`` run.
4. The best candidate (the gate's rule between them, in the order given:
   ``promotion.best_candidate``) is compared with the champion; the alias ``champion`` moves to
   it only when the gate says so. The decision, every scorecard and which version became champion
   and why (or why none did) are logged to MLflow and printed whichever way it goes.
5. The move is a compare-and-set under the registry lock (``registry.lock``, held only for the
   check and the move, not while scoring): when the champion changed while the gate was scoring
   (another promotion), the candidates stay registered, the best one's ``geor.gate`` tag says why
   it was not promoted, and the gate stops with an error asking to re-run it against the new
   champion.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass, field
from typing import Any

from geor_core import uris
from geor_core.config import GeorConfig
from geor_core.errors import UserFacingError
from geor_core.registry import registry
from geor_core.registry.lineage import data_fingerprint
from geor_core.registry.promotion import GateDecision, best_candidate, decide
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
class Candidate:
    """A model offered to the gate: a short label (``sft``, ``grpo``, ``challenger``), its
    Hugging Face export, its lineage, and the metrics already computed for it, if any, with the
    benchmark they were computed on (reused only when that is the gate's benchmark)."""

    label: str
    uri: str
    lineage: dict[str, Any]
    metrics: dict[str, Any] | None = None
    metrics_benchmark: str | None = None


@dataclass
class RegisteredCandidate:
    """One candidate's registered version and the gate's verdict on it (its ``geor.gate`` tag)."""

    label: str
    uri: str
    version: str
    scorecard: dict[str, Any]
    verdict: str


@dataclass
class GateOutcome:
    """The registered candidates and what the gate decided: ``version`` is the best candidate's,
    the one compared with the champion ``champion_version`` (None: there was none)."""

    model_name: str
    version: str
    promoted: bool
    decision: GateDecision
    benchmark: str
    champion_version: str | None
    registered: list[RegisteredCandidate] = field(default_factory=list)

    @property
    def champion(self) -> str | None:
        """The champion after the gate."""
        return self.version if self.promoted else self.champion_version

    @property
    def label(self) -> str:
        """The best candidate's label."""
        return next((e.label for e in self.registered if e.version == self.version), "candidate")


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


def _log_model_dir(export_uri: str, artifact_path: str) -> None:
    import mlflow

    if uris.is_s3(export_uri):
        with tempfile.TemporaryDirectory(prefix="geor-register-") as local:
            mlflow.log_artifacts(str(uris.copy_to_local(export_uri, local)), artifact_path)
    else:
        mlflow.log_artifacts(uris.filesystem(export_uri)[1], artifact_path)


def _scorecard(
    cfg: GeorConfig, candidate: Candidate, settings: dict[str, Any], work_uri: str
) -> dict[str, Any]:
    if candidate.metrics is not None and candidate.metrics_benchmark == settings["benchmark"]:
        return scorecard_from_metrics(candidate.metrics, settings)
    return evaluate_scorecard(
        cfg, candidate.uri, candidate.label, settings, uris.join(work_uri, candidate.label)
    )


def _description(candidate: Candidate, card: dict[str, Any]) -> str:
    """The registered version's description: its scorecard and where it came from."""
    shown = ("geoscore", "acc_25km", "acc_200km", "acc_750km", "median_km", "format_rate", "n")
    scores = ", ".join(f"{key} {card[key]:.4g}" for key in shown if isinstance(card.get(key), int | float))
    origin = {"model": candidate.uri, **candidate.lineage}
    lineage = "; ".join(f"{key}: {value}" for key, value in origin.items())
    return (
        f"{candidate.label} candidate. Scorecard on {card.get('benchmark')} (test split): {scores}. {lineage}"
    )


def _register(client: Any, name: str, candidate: Candidate, run_id: str, tags: dict[str, str]) -> str:
    """Register ``candidate``: the MLflow model its training run logged, when its export's marker
    names one; else its folder, logged under ``runs:/<register run>/models/<label>``."""
    try:
        logged = (uris.read_marker(candidate.uri) or {}).get(uris.MARKER_MODEL_URI)
    except (OSError, ValueError):  # models:/..., a hub id: no export marker of ours
        logged = None
    description = _description(candidate, json.loads(tags[registry.SCORECARD_TAG]))
    if logged:
        return registry.register_logged_model(client, name, logged, tags, description).version
    path = f"models/{candidate.label}"
    _log_model_dir(candidate.uri, path)
    version = registry.register(client, name, run_id, tags, artifact_path=path).version
    client.update_model_version(name, version, description=description)
    return version


def _tags(candidate: Candidate, card: dict[str, Any], benchmark: str, verdict: str) -> dict[str, str]:
    lineage = {**candidate.lineage, "candidate": candidate.label, "model": candidate.uri}
    return {
        "geor.lineage_json": json.dumps(lineage, default=str),
        **{f"{registry.LINEAGE_PREFIX}{k}": str(v) for k, v in lineage.items()},
        registry.SCORECARD_TAG: json.dumps(card),
        registry.BENCHMARK_TAG: benchmark,
        registry.GATE_TAG: verdict,
    }


def gate_and_register(
    cfg: GeorConfig, candidates: list[Candidate], *, work_uri: str, default_benchmark: str
) -> GateOutcome:
    """Score every candidate (reusing its metrics when they were computed on the benchmark's test
    split with these settings), register each, and promote the best one when it passes the gate
    against the champion (see the module docstring)."""
    if not candidates or len({c.label for c in candidates}) != len(candidates):
        raise ValueError(f"candidates need distinct labels: {[c.label for c in candidates]}")
    client = registry.connect(tracking_uri(cfg), "registering a model")
    name = cfg.registry.model_name
    benchmark = resolve_benchmark(cfg, client, default_benchmark)
    settings = scorecard_settings(cfg, benchmark)
    cards = [_scorecard(cfg, candidate, settings, work_uri) for candidate in candidates]
    best, lost = best_candidate(
        [(c.label, card) for c, card in zip(candidates, cards, strict=True)], cfg.registry
    )
    current = registry.champion(client, name)
    champion_card = _champion_scorecard(cfg, client, current, settings, work_uri) if current else None
    decision = decide(cards[best], champion_card, cfg.registry)
    verdicts = {i: f"not compared with the champion: {reason}" for i, reason in lost.items()}
    verdicts[best] = ("promoted: " if decision.promote else "kept champion: ") + decision.reason
    inputs = {f"model.{c.label}": c.uri for c in candidates}
    with stage_run(cfg, "register", tags={"geor.upstream.model": candidates[best].uri}, inputs=inputs) as run:
        registered = [
            RegisteredCandidate(
                c.label,
                c.uri,
                _register(client, name, c, run.info.run_id, _tags(c, card, benchmark, verdicts[i])),
                card,
                verdicts[i],
            )
            for i, (c, card) in enumerate(zip(candidates, cards, strict=True))
        ]
        version = registered[best].version
        if registry.registered_tags(client, name).get(registry.BENCHMARK_TAG) is None:
            client.set_registered_model_tag(name, registry.BENCHMARK_TAG, benchmark)
        if decision.promote:
            _promote(cfg, client, version, decision.reason, current, candidates[best].uri)
        outcome = GateOutcome(
            name,
            version,
            decision.promote,
            decision,
            benchmark,
            current.version if current else None,
            registered,
        )
        _log_decision(outcome)
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


def _log_decision(outcome: GateOutcome) -> None:
    import mlflow

    decision = outcome.decision
    numeric = {f"candidate/{k}": v for k, v in decision.candidate.items() if isinstance(v, int | float)}
    numeric |= {
        f"champion/{k}": v for k, v in (decision.champion or {}).items() if isinstance(v, int | float)
    }
    for entry in outcome.registered:
        numeric |= {f"{entry.label}/{k}": v for k, v in entry.scorecard.items() if isinstance(v, int | float)}
    mlflow.log_metrics({**{k: float(v) for k, v in numeric.items()}, "promoted": float(outcome.promoted)})
    mlflow.set_tags(
        {
            "geor.decision": "promote" if outcome.promoted else "keep",
            "geor.decision_reason": decision.reason,
            "geor.registered_version": outcome.version,
            "geor.registered_versions": json.dumps({e.label: e.version for e in outcome.registered}),
            "geor.compared_with": outcome.champion_version or "none",
            "geor.champion": outcome.champion or "none",
        }
    )
    mlflow.log_dict(
        {
            "decision": dataclasses.asdict(decision),
            "registered": [dataclasses.asdict(e) for e in outcome.registered],
        },
        "gate_decision.json",
    )


def champion_line(outcome: GateOutcome) -> str:
    """Which version is champion after the gate, and why (one line)."""
    best = outcome.label
    if outcome.promoted:
        return (
            f"champion: {outcome.model_name} v{outcome.version} ({best}): promoted: {outcome.decision.reason}"
        )
    return (
        f"champion: {outcome.model_name} v{outcome.champion_version} kept; no new version became champion: "
        f"the best candidate v{outcome.version} ({best}) was not promoted: {outcome.decision.reason}"
    )


def format_decision(outcome: GateOutcome) -> str:
    """The gate's verdict as a few lines for the terminal: every registered candidate, the best
    one against the champion, and which version is champion now."""
    d = outcome.decision
    verdict = "PROMOTED to champion" if outcome.promoted else "NOT promoted (champion kept)"
    versions = ", ".join(f"v{e.version} ({e.label})" for e in outcome.registered)
    lines = [f"{outcome.model_name}: registered {versions}"]
    for entry in outcome.registered:
        if entry.version != outcome.version:
            score = float(entry.scorecard.get(d.metric, float("nan")))
            lines.append(f"  v{entry.version} ({entry.label}) {d.metric} {score:.4g}: {entry.verdict}")
    lines.append(f"{outcome.model_name} v{outcome.version}: {verdict}: {d.reason}")
    for key in dict.fromkeys([d.metric, *d.deltas]):
        champ = f"  champion v{outcome.champion_version} {d.champion[key]:.4g}" if d.champion else ""
        lines.append(f"  {key}: candidate {d.candidate[key]:.4g}{champ}")
    lines.append(champion_line(outcome))
    return "\n".join(lines)
