"""Scheduled retraining: new photos in, a challenger trained from the champion, promoted only
through the pipeline's gate (flows/promotion_gate.py).

Choices:
- One retrain at a time: the whole run holds a :class:`geor_core.registry.run_lock.RunLock` at
  ``retrain.lock`` (default ``<storage.root>/retrain.lock``, local or s3://); a second retrain
  exits at once with a message naming the holder. A killed retrain's lock expires after
  ``retrain.lock_ttl_s``; the champion alias only ever names one version, so a crash at any point
  leaves exactly one champion (the old one, unless the alias move itself completed). The move
  itself is the gate's: a compare-and-set under the registry lock (``registry.lock``, held for
  that move only), refused when the champion changed while the challenger was being scored.
- New data = manifest rows whose ids are in none of the champion's training datasets (its
  lineage); fewer than ``retrain.min_new_rows`` -> "nothing to do", exit 0, logged.
- The champion is pinned by version for the whole run (``models:/NAME/V``), so a promotion
  elsewhere mid-run cannot change what the challenger started from or is compared with.
- Steps: prepare the new rows -> (optional SFT from the champion) -> mine hard rows with the
  start model -> GRPO warm-started from it -> gate on the registered benchmark. Every challenger
  trained goes through the gate (the SFT one too when ``retrain.sft`` is on): each is registered,
  and the best one under the gate's rule is compared with the champion. Every run gets a
  fresh folder ``<storage.root>/retrain/<UTC time>``, claimed for the retrain (and each step's
  folder in it for its step: geor_core/ownership.py).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass

from flows.promotion_gate import Candidate, GateOutcome, gate_and_register
from geor_core import uris
from geor_core.config import GeorConfig
from geor_core.data.manifest import manifest_folder
from geor_core.data.new_rows import NewRows, known_ids, write_new_rows
from geor_core.errors import UserFacingError
from geor_core.ownership import claim_output
from geor_core.registry import registry
from geor_core.registry.lineage import code_version, data_fingerprint
from geor_core.registry.run_lock import RunLock
from geor_core.registry.tracking import parent_run, stage_run, tracking_uri


@dataclass
class RetrainResult:
    status: str  # "nothing to do" | "promoted" | "kept champion"
    champion_version: str
    new_rows: NewRows
    work_dir: str = ""
    gate: GateOutcome | None = None


def _log(message: str) -> None:
    print(f"[geor retrain {time.strftime('%H:%M:%S')}] {message}", flush=True)


def lock_uri(cfg: GeorConfig) -> str:
    return cfg.retrain.lock or uris.join(cfg.storage.root, "retrain.lock")


def _champion(cfg: GeorConfig) -> registry.Version:
    client = registry.connect(tracking_uri(cfg), "`geor retrain`")
    champion = registry.champion(client, cfg.registry.model_name)
    if champion is None:
        raise UserFacingError(
            f"model {cfg.registry.model_name!r} has no champion to retrain: run `geor pipeline` first"
        )
    return champion


def _training_data(champion: registry.Version) -> list[str]:
    lineage = champion.lineage
    data = json.loads(lineage.get("training_data", "[]")) or (
        [lineage["prepared"]] if "prepared" in lineage else []
    )
    if not data:
        raise UserFacingError(
            f"champion v{champion.version} has no training-data lineage (tag {registry.LINEAGE_PREFIX}training_data): "
            "cannot tell new rows from known ones"
        )
    return data


def run_retrain(cfg: GeorConfig, manifest: str) -> RetrainResult:
    """Retrain on the new rows of ``manifest`` if there are enough (see the module docstring)."""
    champion = _champion(cfg)  # fail before taking the lock when there is nothing to retrain
    with RunLock(lock_uri(cfg), ttl_s=cfg.retrain.lock_ttl_s) as lock:
        _log(f"holding {lock_uri(cfg)}; champion is {cfg.registry.model_name} v{champion.version}")
        with parent_run(
            cfg, "retrain", tags={"geor.champion_version": champion.version, "geor.manifest": manifest}
        ):
            result = _retrain(cfg, manifest, champion, lock)
    _log(f"result: {result.status}")
    return result


def _retrain(cfg: GeorConfig, manifest: str, champion: registry.Version, lock: RunLock) -> RetrainResult:
    training_data = _training_data(champion)
    work = uris.join(cfg.storage.root, "retrain", time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    claim_output(work, "retrain")  # each step claims its own folder in it
    new = write_new_rows(manifest, cfg.prepare, known_ids(training_data), uris.join(work, "manifest"))
    _log(f"{new.rows_new} new rows of {new.rows_total} in {manifest} ({new.malformed_lines} malformed lines)")
    if new.rows_new < cfg.retrain.min_new_rows:
        _log(f"nothing to do: {new.rows_new} new rows < retrain.min_new_rows={cfg.retrain.min_new_rows}")
        with stage_run(cfg, "retrain-check", tags={"geor.decision": "nothing to do"}) as run:
            if run is not None:
                import mlflow

                mlflow.log_metrics({"rows_total": new.rows_total, "rows_new": new.rows_new})
        return RetrainResult("nothing to do", champion.version, new)
    start = f"models:/{cfg.registry.model_name}/{champion.version}"
    prepared = _prepare(cfg, new, work, manifest)
    lock.ensure_held()
    challengers = (
        {"challenger": cfg.retrain.challenger}
        if cfg.retrain.challenger
        else _train(cfg, prepared, start, work, lock)
    )
    lock.ensure_held()
    lineage = {
        "manifest": manifest,
        "prepared": prepared,
        "prepared_fingerprint": data_fingerprint(prepared),
        "training_data": json.dumps([*training_data, prepared]),
        "warm_start": start,
        "retrained_from_version": champion.version,
        "config_hash": cfg.fingerprint(),
        "code_version": code_version(),
    }
    candidates = [Candidate(label, uri, {**lineage, "challenger": uri}) for label, uri in challengers.items()]
    gate = gate_and_register(
        cfg,
        candidates,
        work_uri=uris.join(work, "gate"),
        default_benchmark=champion.tags.get(registry.BENCHMARK_TAG, prepared),
    )
    return RetrainResult("promoted" if gate.promoted else "kept champion", champion.version, new, work, gate)


def _prepare(cfg: GeorConfig, new: NewRows, work: str, manifest: str) -> str:
    from tasks.prepare import run_prepare

    output = uris.join(work, "prepared")
    # the new rows' image references are absolute: they must stay inside the original manifest's
    # folder (or prepare.images_root), not the folder the new-rows file was written to
    prepare = dataclasses.replace(
        cfg.prepare, manifest=new.manifest, output=output, id_col="id", image_col="image", lat_col="lat",
        lon_col="lon", images_root=cfg.prepare.images_root or manifest_folder(manifest),
    )  # fmt: skip
    outcome = run_prepare(dataclasses.replace(cfg, prepare=prepare))
    _log(f"prepared {output}: splits {outcome.stats.get('splits')}")
    return output


def _train(cfg: GeorConfig, prepared: str, start: str, work: str, lock: RunLock) -> dict[str, str]:
    """The challengers trained, by label, in the order the gate weighs them: the SFT one (with
    ``retrain.sft``), then GRPO's."""
    from tasks.grpo import run_grpo
    from tasks.mine_hard import run_mine_hard
    from tasks.sft import run_sft

    trained: dict[str, str] = {}
    if cfg.retrain.sft:
        start = trained["sft"] = run_sft(cfg, prepared, start, uris.join(work, "sft")).export_uri
        lock.ensure_held()
    hard = uris.join(work, "hard")
    mined = run_mine_hard(cfg, prepared, start, hard, cfg.grpo.hard_radius_km)
    data = hard if int(mined.stats["mining"]["kept"]) > 0 else prepared
    _log(f"mined {mined.stats['mining']['kept']} hard rows; GRPO on {data}")
    lock.ensure_held()
    trained["grpo"] = run_grpo(cfg, data, start, uris.join(work, "grpo")).export_uri
    return trained
