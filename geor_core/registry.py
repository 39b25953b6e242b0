"""The MLflow model registry as this project uses it: versions carry their lineage and their
scorecard as tags; the alias ``champion`` names the production model; every move of that alias
is appended to the registered model's ``geor.champion_history`` tag, which is what rollback reads.

MLflow keeps one version per alias, so there is never more than one champion, whatever crashes.
A registered version's source is ``runs:/<run_id>/model``: the Hugging Face directory logged as
that run's artifacts, which ``models:/NAME@champion`` downloads (geor_core.models).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from geor_core.errors import UserFacingError

CHAMPION = "champion"
HISTORY_TAG = "geor.champion_history"
SCORECARD_TAG = "geor.scorecard"
BENCHMARK_TAG = "geor.benchmark"
LINEAGE_PREFIX = "geor.lineage."
MAX_HISTORY = 50


def client(tracking_uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


@dataclass
class Version:
    """One registered version as the CLI and the gate see it."""

    version: str
    run_id: str
    source: str
    created: float
    aliases: list[str]
    tags: dict[str, str]

    @property
    def scorecard(self) -> dict[str, Any]:
        return json.loads(self.tags.get(SCORECARD_TAG, "{}"))

    @property
    def lineage(self) -> dict[str, str]:
        return {k[len(LINEAGE_PREFIX) :]: v for k, v in self.tags.items() if k.startswith(LINEAGE_PREFIX)}


def _version(mv: Any) -> Version:
    return Version(
        str(mv.version),
        mv.run_id or "",
        mv.source,
        (mv.creation_timestamp or 0) / 1000,
        list(getattr(mv, "aliases", []) or []),
        dict(mv.tags or {}),
    )


def _not_found(exc: Exception) -> bool:
    return "RESOURCE_DOES_NOT_EXIST" in str(getattr(exc, "error_code", "")) or "not found" in str(exc).lower()


def _registered_model(mlflow_client: Any, name: str) -> Any:
    """The registered model (tags, aliases), or None when no model of that name is registered."""
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_registered_model(name)
    except MlflowException as exc:
        if _not_found(exc):
            return None
        raise


def registered_tags(mlflow_client: Any, name: str) -> dict[str, str] | None:
    """The registered model's tags, or None when no model of that name is registered."""
    model = _registered_model(mlflow_client, name)
    return None if model is None else dict(model.tags or {})


def champion(mlflow_client: Any, name: str) -> Version | None:
    """The version the ``champion`` alias names, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return _version(mlflow_client.get_model_version_by_alias(name, CHAMPION))
    except MlflowException as exc:
        if _not_found(exc):
            return None
        raise


def versions(mlflow_client: Any, name: str) -> list[Version]:
    """Every version of ``name``, newest first, with its aliases (empty when nothing is registered)."""
    found = [_version(mv) for mv in mlflow_client.search_model_versions(f"name = '{name}'")]
    model = _registered_model(mlflow_client, name) if found else None
    for alias, version in dict(getattr(model, "aliases", None) or {}).items():
        for listed in found:  # search results carry no aliases: the registered model has them all
            if listed.version == str(version) and alias not in listed.aliases:
                listed.aliases.append(alias)
    return sorted(found, key=lambda v: int(v.version), reverse=True)


def get_version(mlflow_client: Any, name: str, version: str) -> Version:
    from mlflow.exceptions import MlflowException

    try:
        return _version(mlflow_client.get_model_version(name, str(version)))
    except MlflowException as exc:
        known = ", ".join(v.version for v in versions(mlflow_client, name)) or "none"
        raise UserFacingError(f"model {name!r} has no version {version!r} (versions: {known})") from exc


def register(
    mlflow_client: Any, name: str, run_id: str, tags: dict[str, str], *, artifact_path: str = "model"
) -> Version:
    """A new version of ``name`` from the HF directory logged under ``runs:/<run_id>/<artifact_path>``."""
    if registered_tags(mlflow_client, name) is None:
        mlflow_client.create_registered_model(
            name, description="Geo-R geolocation model (Hugging Face format)"
        )
    mv = mlflow_client.create_model_version(
        name, f"runs:/{run_id}/{artifact_path}", run_id=run_id, tags={k: str(v) for k, v in tags.items()}
    )
    return _version(mv)


def history(mlflow_client: Any, name: str) -> list[dict[str, Any]]:
    """Past moves of the champion alias, oldest first."""
    return json.loads((registered_tags(mlflow_client, name) or {}).get(HISTORY_TAG, "[]"))


def set_champion(mlflow_client: Any, name: str, version: str, reason: str, *, rollback: bool = False) -> None:
    """Point ``champion`` at ``version`` and append the move to the history."""
    moves = history(mlflow_client, name)
    moves.append({"version": str(version), "at": time.time(), "reason": reason, "rollback": rollback})
    mlflow_client.set_registered_model_alias(name, CHAMPION, str(version))
    mlflow_client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(moves[-MAX_HISTORY:]))
    mlflow_client.set_model_version_tag(name, str(version), "geor.promoted_reason", reason)


def previous_champion(mlflow_client: Any, name: str) -> str:
    """The version that was champion before the current one (what rollback returns to)."""
    current = champion(mlflow_client, name)
    if current is None:
        raise UserFacingError(f"model {name!r} has no champion: nothing to roll back")
    stack: list[str] = []  # promotions push, rollbacks pop: the champions still "underneath"
    for move in history(mlflow_client, name):
        if move.get("rollback"):
            stack = stack[:-1]
        else:
            stack.append(move["version"])
    if len(stack) < 2:
        raise UserFacingError(
            f"model {name!r}: version {current.version} has no earlier champion to roll back to"
        )
    return stack[-2]


def connect(tracking_uri: str, command: str) -> Any:
    """The registry client for ``command`` on ``tracking_uri``: a one-line error when no server is
    configured or it does not answer (MLflow's own retries would stall for minutes)."""
    from geor_core.tracking import TRACKING_URI_ENV, _require_reachable

    if not tracking_uri:
        raise UserFacingError(
            f"{command} needs MLflow: set tracking.uri or {TRACKING_URI_ENV} (`make demo` starts one)"
        )
    _require_reachable(tracking_uri)
    return client(tracking_uri)


def require_registered(mlflow_client: Any, name: str) -> dict[str, str]:
    """The registered model's tags; an error naming the model when nothing of that name is registered."""
    tags = registered_tags(mlflow_client, name)
    if tags is None:
        raise UserFacingError(
            f"no model named {name!r} is registered on {mlflow_client.tracking_uri} "
            "(`geor pipeline` registers one; registry.model_name picks another)"
        )
    return tags


@dataclass
class ChampionMove:
    """A move of the ``champion`` alias that a person asked for: a promotion or a rollback."""

    model_name: str
    from_version: str | None  # the champion before the move (None: there was none)
    to_version: str
    reason: str
    rollback: bool = False


def promotion_move(mlflow_client: Any, name: str, version: str, reason: str) -> ChampionMove:
    """The move that makes ``version`` (``3`` or ``v3``) the champion; an error when that version
    does not exist or already is the champion."""
    target = get_version(mlflow_client, name, version.removeprefix("v"))
    current = champion(mlflow_client, name)
    if current is not None and current.version == target.version:
        raise UserFacingError(f"model {name!r}: version {target.version} is already the champion")
    return ChampionMove(name, current.version if current else None, target.version, reason)


def rollback_move(mlflow_client: Any, name: str, reason: str) -> ChampionMove:
    """The move back to the previous champion; an error when there is no champion, no earlier
    one, or the earlier one has been deleted from the registry."""
    target = previous_champion(mlflow_client, name)
    current = champion(mlflow_client, name)
    get_version(mlflow_client, name, target)
    return ChampionMove(name, current.version if current else None, target, reason, rollback=True)
