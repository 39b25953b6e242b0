"""`geor models list | promote VERSION | rollback [--config P] [key=value ...]`: the model registry
as an operator sees it.

- ``list``: every version of ``registry.model_name``, newest first: aliases, creation time, the key
  scorecard metrics, the benchmark they were computed on, lineage and the gate's decision; the
  champion and the version a rollback would return to underneath. ``--json`` prints all of it.
- ``promote VERSION``: points the ``champion`` alias at VERSION ("manual promotion by <user>").
- ``rollback``: points it back at the champion before the current one (the alias's history is
  kept as events on the versions, geor_core/registry/registry.py).

A move is refused, and nothing changes, when the champion moved between reading it and moving
the alias (another promotion); moves take the registry lock (``registry.lock``).

MLflow is ``tracking.uri``, else MLFLOW_TRACKING_URI. Each move is also logged as a small MLflow
run (``models-promote`` / ``models-rollback``) tagged with the model, the versions it moved from
and to, the reason and the user.
"""

from __future__ import annotations

import argparse
import getpass
import json
import time
from pathlib import PurePosixPath
from typing import Any

from flows.commands.config_args import add_config_arguments, config_from_args
from geor_core.config import GeorConfig
from geor_core.errors import UserFacingError
from geor_core.registry import registry
from geor_core.registry.tracking import stage_run, tracking_uri
from geor_core.uris import redact_uri

LIST_COLUMNS = (
    "version",
    "aliases",
    "created",
    "geoscore",
    "acc_200km",
    "acc_750km",
    "median_km",
    "format_rate",
    "benchmark",
    "lineage",
    "gate",
)


EXAMPLES = """examples:
  geor models list
  geor models promote 3 --reason "better on the new benchmark"
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="registered versions, newest first, with scores and lineage")
    listing.add_argument("--json", action="store_true", help="print everything as one JSON object")
    add_config_arguments(listing)
    promote = actions.add_parser("promote", help="make VERSION the champion (a manual promotion)")
    promote.add_argument("--reason", default="", help="why, recorded with the move")
    # positionals together: `promote --config P VERSION k=v` (or `promote VERSION k=v --config P`)
    promote.add_argument("version", metavar="VERSION", help="the registered version, e.g. 3 (or v3)")
    add_config_arguments(promote)
    rollback = actions.add_parser("rollback", help="return the champion alias to the previous champion")
    rollback.add_argument("--reason", default="", help="why, recorded with the move")
    add_config_arguments(rollback)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    client = registry.connect(tracking_uri(cfg), f"`geor models {args.action}`")
    name = cfg.registry.model_name
    registry.require_registered(client, name)
    if args.action == "list":
        return list_versions(client, name, as_json=args.json)
    user = current_user()
    if args.action == "promote":
        reason = _with_detail(f"manual promotion by {user}", args.reason)
        move = registry.promotion_move(client, name, args.version, reason)
    else:
        move = registry.rollback_move(client, name, _with_detail(f"rollback by {user}", args.reason))
    return apply_move(cfg, client, move, user)


def current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (some containers)
        return "unknown"


def _with_detail(reason: str, detail: str) -> str:
    return f"{reason}: {detail}" if detail.strip() else reason


def apply_move(cfg: GeorConfig, client: Any, move: registry.ChampionMove, user: str) -> int:
    """Move the alias inside a ``models-promote`` / ``models-rollback`` MLflow run, and say so."""
    stage = "models-rollback" if move.rollback else "models-promote"
    tags = {
        "geor.model_name": move.model_name,
        "geor.from_version": move.from_version or "none",
        "geor.to_version": move.to_version,
        "geor.reason": move.reason,
        "geor.user": user,
    }
    with stage_run(cfg, stage, tags=tags) as run:
        try:
            registry.set_champion(
                client,
                move.model_name,
                move.to_version,
                move.reason,
                rollback=move.rollback,
                expected_champion=move.from_version,
                lock_uri=registry.lock_uri(cfg),
            )
        except registry.ChampionChanged as exc:
            raise UserFacingError(
                f"model {move.model_name!r}: the champion changed from {registry.label(exc.expected)} to "
                f"{registry.label(exc.found)} while this command ran (another promotion); nothing was moved: "
                "check `geor models list` and run the command again"
            ) from exc
    before = f"v{move.from_version}" if move.from_version else "none"
    logged = f" (MLflow run {run.info.run_id})" if run is not None else ""
    print(f"{move.model_name}: champion {before} -> v{move.to_version}: {move.reason}{logged}")
    return 0


def list_versions(client: Any, name: str, *, as_json: bool) -> int:
    """Print the registry's versions of ``name`` as a table (or JSON)."""
    from geor_core.scoring.evaluation_report import markdown_table

    found = registry.versions(client, name)
    current = registry.champion(client, name)
    try:
        rollback_to: str | None = registry.previous_champion(client, name) if current else None
    except UserFacingError:
        rollback_to = None
    if as_json:
        summary = {
            "model": name,
            "tracking_uri": redact_uri(client.tracking_uri),
            "champion": current.version if current else None,
            "rollback_to": rollback_to,
            "champion_history": registry.history(client, name),
            "versions": [version_record(v) for v in found],
        }
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{name} on {redact_uri(client.tracking_uri)}: {len(found)} version(s), newest first")
    print(markdown_table([table_row(v) for v in found], LIST_COLUMNS), end="")
    if current is None:
        print("champion: none")
    else:
        reason = current.tags.get(registry.PROMOTED_REASON_TAG, "no reason recorded")
        print(f"champion: v{current.version} ({reason})")
        print(
            f"rollback would return to: {'v' + rollback_to if rollback_to else 'nothing (no earlier champion)'}"
        )
    return 0


def version_record(version: registry.Version) -> dict[str, Any]:
    """One version as plain data, for ``--json``."""
    return {
        "version": version.version,
        "aliases": version.aliases,
        "champion": registry.CHAMPION in version.aliases,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(version.created)),
        "run_id": version.run_id,
        "source": version.source,
        "scorecard": version.scorecard,
        "benchmark": version.tags.get(registry.BENCHMARK_TAG),
        "lineage": version.lineage,
        "gate": version.tags.get(registry.GATE_TAG),
        "promoted_reason": version.tags.get(registry.PROMOTED_REASON_TAG),
    }


def table_row(version: registry.Version) -> dict[str, Any]:
    """One version as a row of the ``list`` table."""
    card = version.scorecard
    lineage = version.lineage
    row = {key: card.get(key) for key in LIST_COLUMNS if key in card}
    aliases = sorted(version.aliases, key=lambda alias: alias != registry.CHAMPION)
    return {
        **row,
        "version": version.version,
        "aliases": ", ".join(f"*{a}*" if a == registry.CHAMPION else a for a in aliases),
        "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(version.created)),
        "benchmark": short_uri(version.tags.get(registry.BENCHMARK_TAG, "")),
        "lineage": lineage_summary(lineage),
        "gate": version.tags.get(registry.GATE_TAG),
    }


def lineage_summary(lineage: dict[str, str]) -> str | None:
    """The training data and the manifest behind a version, with short names."""
    try:
        data = json.loads(lineage["training_data"]) if "training_data" in lineage else []
    except json.JSONDecodeError:
        data = [lineage["training_data"]]
    if not data and lineage.get("prepared"):
        data = [lineage["prepared"]]
    parts = []
    if data:
        parts.append("data " + " + ".join(short_uri(str(uri)) for uri in data))
    if lineage.get("manifest"):
        parts.append("manifest " + short_uri(lineage["manifest"]))
    return "; ".join(parts) or None


def short_uri(uri: str) -> str:
    """The last two parts of a path or URI (``.../root/prepared`` -> ``root/prepared``)."""
    parts = PurePosixPath(uri.rstrip("/")).parts
    return "/".join(parts[-2:]) if uri else ""
