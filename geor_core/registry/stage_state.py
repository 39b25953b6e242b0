"""Pipeline bookkeeping: one small JSON record per stage saying which inputs and settings its
output was made from, so a re-run can skip finished work and redo only what changed.

A stage's *key* hashes its name, the config values it reads, and the keys of the stages it
consumes: change ``grpo.beta`` and GRPO, evaluate and register get new keys while prepare, SFT and
mining keep theirs. The record is written ``running`` before the stage starts and ``complete``
after, so a crashed stage is recognised on the next run (same key: resume; other key: start over).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from geor_core import uris

RUNNING = "running"
COMPLETE = "complete"
RECORDS_DIR = "pipeline"  # <root>/pipeline/<stage>.json


def stage_key(stage: str, settings: dict[str, Any], upstream: dict[str, str]) -> str:
    """A 16-hex-digit hash of a stage's name, the settings it reads and its inputs' keys."""
    material = {"stage": stage, "settings": settings, "upstream": upstream}
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class StageRecord:
    """What the pipeline knows about one stage's output."""

    stage: str
    key: str
    status: str
    outputs: dict[str, Any] = field(default_factory=dict)
    started_at: float = 0.0
    finished_at: float = 0.0


def record_uri(root: str, stage: str) -> str:
    return uris.join(root, RECORDS_DIR, f"{stage}.json")


def read_record(root: str, stage: str) -> StageRecord | None:
    """The stage's record under ``root``, or None when the stage never started there."""
    uri = record_uri(root, stage)
    if not uris.exists(uri):
        return None
    return StageRecord(**json.loads(uris.read_text(uri)))


def write_record(root: str, record: StageRecord) -> None:
    uris.write_atomic(record_uri(root, record.stage), json.dumps(asdict(record), indent=2, default=str))


def mark_running(root: str, stage: str, key: str) -> StageRecord:
    record = StageRecord(stage, key, RUNNING, started_at=time.time())
    write_record(root, record)
    return record


def mark_complete(root: str, record: StageRecord, outputs: dict[str, Any]) -> StageRecord:
    record.status, record.outputs, record.finished_at = COMPLETE, outputs, time.time()
    write_record(root, record)
    return record
