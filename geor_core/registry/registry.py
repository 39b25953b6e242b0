"""The MLflow model registry as this project uses it: versions carry their lineage and their
scorecard as tags; the alias ``champion`` names the production model.

Every move of the alias (a promotion or a rollback) is first written as an event on the version it
makes champion, a tag ``geor.promoted.<UTC ns>-<random>`` whose value is JSON ``{from, reason,
rollback, at}``, and only then is the alias moved. Nothing is ever read, changed and written back,
so the alias and the history cannot disagree: the history is the chain of events that ends at the
alias (the champion's latest event, the latest event before it on the version it came ``from``,
and so on). An event whose alias move never happened (a crash between the two writes) is in no
chain and counts for nothing. Event times only grow: a new one is later than every event already
on the model, whatever the clocks of the machines that promote.

A move is a compare-and-set: :func:`set_champion` refuses when the champion is no longer the one
the caller decided against (:class:`ChampionChanged`), checking under the registry lock
(``registry.lock``, default ``<storage.root>/registry.lock``), which it holds only for that check
and the two writes. The gate and `geor models promote|rollback` move the alias only this way.

Registries promoted by earlier releases kept the history as one list in the registered model's tag
``geor.champion_history``; it is read (never written) as the start of the chain when the oldest
event comes from a version that has no event of its own.

MLflow keeps one version per alias, so there is never more than one champion, whatever crashes.
A version's source is a training stage's logged pyfunc model (``models:/m-...``: ``register_logged_model``)
or a Hugging Face directory logged as a run's artifacts (``runs:/<run_id>/model``: ``register``).
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from types import EllipsisType
from typing import Any

from geor_core import uris
from geor_core.config import GeorConfig
from geor_core.errors import UserFacingError
from geor_core.registry.run_lock import LockHeld, RunLock

CHAMPION = "champion"
EVENT_PREFIX = "geor.promoted."
LEGACY_HISTORY_TAG = "geor.champion_history"
PROMOTED_REASON_TAG = "geor.promoted_reason"
SCORECARD_TAG = "geor.scorecard"
GATE_TAG = "geor.gate"  # the gate's verdict on a registered version
BENCHMARK_TAG = "geor.benchmark"
LINEAGE_PREFIX = "geor.lineage."
# The registry lock is held for a few requests; a dead holder's lock is taken over after LOCK_TTL_S,
# so waiting a little longer than that always ends with the lock or with a holder that is alive.
LOCK_TTL_S = 30.0
LOCK_WAIT_S = 45.0


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


def _ensure_registered(mlflow_client: Any, name: str) -> None:
    if registered_tags(mlflow_client, name) is None:
        mlflow_client.create_registered_model(name, description="Geo-R geolocation model")


def register(
    mlflow_client: Any, name: str, run_id: str, tags: dict[str, str], *, artifact_path: str = "model"
) -> Version:
    """A new version of ``name`` from the HF directory logged under ``runs:/<run_id>/<artifact_path>``."""
    _ensure_registered(mlflow_client, name)
    mv = mlflow_client.create_model_version(
        name, f"runs:/{run_id}/{artifact_path}", run_id=run_id, tags={k: str(v) for k, v in tags.items()}
    )
    return _version(mv)


def register_logged_model(
    mlflow_client: Any, name: str, model_uri: str, tags: dict[str, str], description: str = ""
) -> Version:
    """A new version of ``name`` from a logged model (``models:/m-...``), linked to it and its run."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS as LISTED

    try:
        model = mlflow_client.get_logged_model(model_uri.removeprefix("models:/"))
    except MlflowException as exc:
        server = uris.redact_uri(mlflow_client.tracking_uri)
        raise UserFacingError(f"cannot register {model_uri}: not on {server} ({exc})") from exc
    _ensure_registered(mlflow_client, name)
    labels = {k: str(v) for k, v in tags.items()}
    linked = {"description": description or None, "model_id": model.model_id}
    mv = mlflow_client.create_model_version(name, model_uri, model.source_run_id, labels, **linked)
    listed = [*json.loads(model.tags.get(LISTED, "[]")), {"name": name, "version": str(mv.version)}]
    mlflow_client.set_logged_model_tags(model.model_id, {LISTED: json.dumps(listed)})
    return _version(mv)


def lock_uri(cfg: GeorConfig) -> str:
    """The registry lock every champion move takes: ``registry.lock``, else
    ``<storage.root>/registry.lock``."""
    return cfg.registry.lock or uris.join(cfg.storage.root, "registry.lock")


@contextlib.contextmanager
def registry_lock(uri: str) -> Iterator[RunLock]:
    """Hold the registry lock at ``uri``, waiting while another move holds it (a few requests);
    :class:`LockHeld` naming the holder when it is still held after ``LOCK_WAIT_S``."""
    lock = RunLock(uri, ttl_s=LOCK_TTL_S)
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            lock.acquire()
            break
        except LockHeld:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    try:
        yield lock
    finally:
        lock.release()


def label(version: str | None) -> str:
    """``v3``, or ``none`` for no version."""
    return "none" if version is None else f"v{version}"


class ChampionChanged(UserFacingError):
    """The champion is no longer the version a move to ``version`` was decided against."""

    def __init__(self, name: str, version: str, expected: str | None, found: str | None) -> None:
        self.expected, self.found = expected, found
        super().__init__(
            f"model {name!r}: not moving the champion to v{version}: the champion changed from "
            f"{label(expected)} to {label(found)} since it was scored; re-run the gate"
        )


def _event_time(key: str) -> int:
    return int(key[len(EVENT_PREFIX) :].split("-", 1)[0])


def _events(mlflow_client: Any, name: str) -> dict[str, list[dict[str, Any]]]:
    """Every version's champion events (``version``, ``from``, ``reason``, ``rollback``, ``at``,
    ``event``: the tag's key), oldest first, by version."""
    found: dict[str, list[dict[str, Any]]] = {}
    for mv in mlflow_client.search_model_versions(f"name = '{name}'"):
        for key, value in (mv.tags or {}).items():
            if not key.startswith(EVENT_PREFIX):
                continue
            try:
                event = {**json.loads(value), "event": key, "version": str(mv.version)}
                _event_time(key)
            except (ValueError, TypeError) as exc:
                raise UserFacingError(
                    f"model {name!r} v{mv.version}: the champion event tag {key!r} is not one this "
                    f"project wrote ({exc}); delete that tag"
                ) from exc
            found.setdefault(str(mv.version), []).append(event)
    for events in found.values():
        events.sort(key=lambda event: event["event"])
    return found


def _legacy_history(mlflow_client: Any, name: str) -> list[dict[str, Any]]:
    return json.loads((registered_tags(mlflow_client, name) or {}).get(LEGACY_HISTORY_TAG, "[]"))


def _moves(mlflow_client: Any, name: str, current: Version | None) -> list[dict[str, Any]]:
    """The moves that made ``current`` champion, oldest first: the chain of events that ends at it."""
    if current is None:
        return []
    events = _events(mlflow_client, name)
    chain: list[dict[str, Any]] = []
    version: str | None = current.version
    before = "\uffff"  # later than every event key
    while version is not None:
        earlier = [e for e in events.get(version, []) if e["event"] < before]
        if not earlier:  # no event made this version champion: an earlier release's history, if it ends here
            legacy = _legacy_history(mlflow_client, name)
            if legacy and str(legacy[-1].get("version")) == version:
                chain.extend(reversed(legacy))
            break
        chain.append(earlier[-1])
        version, before = earlier[-1].get("from"), earlier[-1]["event"]
    return chain[::-1]


def history(mlflow_client: Any, name: str) -> list[dict[str, Any]]:
    """The moves of the champion alias that led to the current champion, oldest first (each
    ``version``, ``from``, ``reason``, ``rollback``, ``at``); empty when there is no champion."""
    return _moves(mlflow_client, name, champion(mlflow_client, name))


def _underneath(name: str, current: Version, moves: list[dict[str, Any]]) -> str:
    """The champion before ``current``: promotions stack up, a rollback steps one down."""
    stack: list[str] = []
    for move in moves:
        if move.get("rollback"):
            stack = stack[:-1]
        else:
            stack.append(str(move["version"]))
    if len(stack) < 2:
        raise UserFacingError(
            f"model {name!r}: version {current.version} has no earlier champion to roll back to"
        )
    return stack[-2]


def _champion_and_previous(mlflow_client: Any, name: str) -> tuple[Version, str]:
    current = champion(mlflow_client, name)
    if current is None:
        raise UserFacingError(f"model {name!r} has no champion: nothing to roll back")
    return current, _underneath(name, current, _moves(mlflow_client, name, current))


def previous_champion(mlflow_client: Any, name: str) -> str:
    """The version that was champion before the current one (what rollback returns to)."""
    return _champion_and_previous(mlflow_client, name)[1]


def set_champion(
    mlflow_client: Any,
    name: str,
    version: str,
    reason: str,
    *,
    rollback: bool = False,
    expected_champion: str | None | EllipsisType = ...,
    lock_uri: str = "",
) -> None:
    """Make ``version`` the champion: under the registry lock at ``lock_uri`` (none when empty),
    check that the champion is still ``expected_champion`` (None: there was none; ``...``: any,
    for setting up a registry), write the move's event on ``version``, then move the alias.

    :class:`ChampionChanged` when the champion changed since the caller read it, and nothing is
    written."""
    version = str(version)
    with registry_lock(lock_uri) if lock_uri else contextlib.nullcontext() as lock:
        get_version(mlflow_client, name, version)  # a one-line error for a version that is not there
        current = champion(mlflow_client, name)
        now = current.version if current else None
        expected = expected_champion if expected_champion in (None, ...) else str(expected_champion)
        if expected is not ... and now != expected:
            raise ChampionChanged(name, version, expected, now)
        if now == version:
            raise UserFacingError(f"model {name!r}: version {version} is already the champion")
        latest = max(
            (_event_time(e["event"]) for events in _events(mlflow_client, name).values() for e in events),
            default=0,
        )
        key = f"{EVENT_PREFIX}{max(time.time_ns(), latest + 1):020d}-{uuid.uuid4().hex[:8]}"
        event = {"from": now, "reason": reason, "rollback": rollback, "at": time.time()}
        mlflow_client.set_model_version_tag(name, version, key, json.dumps(event))
        if lock is not None:
            lock.ensure_held()
        mlflow_client.set_registered_model_alias(name, CHAMPION, version)
    mlflow_client.set_model_version_tag(name, version, PROMOTED_REASON_TAG, reason)


def connect(tracking_uri: str, command: str) -> Any:
    """The registry client for ``command`` on ``tracking_uri``: a one-line error when no server is
    configured or it does not answer (MLflow's own retries would stall for minutes)."""
    from geor_core.registry.tracking import TRACKING_URI_ENV, _require_reachable

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
            f"no model named {name!r} is registered on {uris.redact_uri(mlflow_client.tracking_uri)} "
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
    current, target = _champion_and_previous(mlflow_client, name)
    get_version(mlflow_client, name, target)
    return ChampionMove(name, current.version, target, reason, rollback=True)
