"""Pipeline bookkeeping: one small JSON record per stage saying which inputs and settings its
output was made from, so a re-run can skip finished work and redo only what changed.

A stage is declared once, as a :class:`Stage` record: its name, the stages it consumes, its
folder, the config it reads, its body and its checks. Its *key* hashes its name, the config values
it declares (whole sections, or single ``section.field`` values), anything else its output depends
on (``extra_key``: e.g. the manifest's fingerprint), and the keys of the stages it consumes (a
stage the config does not need, ``needed``, is not run and enters no key): change
``grpo.beta`` and GRPO, evaluate and register get new keys while prepare, SFT and mining keep
theirs. A stage that declares no config, or a section or field the config does not have, cannot be
built. The record is written ``running`` before the stage starts and ``complete`` after, so a
crashed stage is recognised on the next run (same key: resume; other key: start over).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any

from geor_core import uris
from geor_core.config import GeorConfig

RUNNING = "running"
COMPLETE = "complete"
RECORDS_DIR = "pipeline"  # <root>/pipeline/<stage>.json
NOT_SETTINGS = ("output", "overwrite")  # where a section's output goes is not a setting of it


@dataclass(frozen=True)
class Stage:
    """One pipeline stage, declared once; keys, checks, ``--from``/``--only`` and dispatch derive from it.

    ``reads`` maps a name in the stage's key to a config path: a section (``"sft"``, hashed whole
    but for its ``output``/``overwrite``) or one field (``"grpo.hard_radius_km"``). Config the stage
    reads through an upstream stage's output (the base model, via SFT) is covered by that key.
    """

    name: str
    upstream: tuple[str, ...]
    output_dir: str | None  # its folder under the pipeline root; None: it writes no folder
    reads: Mapping[str, str]
    runner: Callable[..., dict[str, Any]]  # runner(pipeline_run, overwrite=bool) -> outputs
    preflight: tuple[Callable[[GeorConfig], None], ...] = ()  # checks before any stage runs
    extra_key: Callable[[GeorConfig], dict[str, Any]] | None = None  # key material beyond config
    # whether the config needs the stage's output at all (None: always); a stage not needed is not
    # run, and the stages that consume it leave it out of their keys
    needed: Callable[[GeorConfig], bool] | None = None

    def __post_init__(self) -> None:
        if not self.reads:
            raise ValueError(
                f"stage {self.name!r} declares no config in `reads`: its key would not change with "
                "its settings (declare the sections or section.field values it reads)"
            )
        for path in self.reads.values():
            _check_config_path(self.name, path)
        object.__setattr__(self, "reads", MappingProxyType(dict(self.reads)))
        object.__setattr__(self, "upstream", tuple(self.upstream))

    def settings(self, cfg: GeorConfig) -> dict[str, Any]:
        """What the stage's key hashes besides its name and its inputs' keys."""
        values: dict[str, Any] = {}
        for name, path in self.reads.items():
            section, _, leaf = path.partition(".")
            value = getattr(cfg, section)
            if leaf:
                values[name] = getattr(value, leaf)
            else:
                values[name] = {k: v for k, v in asdict(value).items() if k not in NOT_SETTINGS}
        return {**values, **(self.extra_key(cfg) if self.extra_key else {})}

    def is_needed(self, cfg: GeorConfig) -> bool:
        return self.needed is None or self.needed(cfg)


def _check_config_path(stage: str, path: str) -> None:
    section, _, leaf = path.partition(".")
    sections = {f.name for f in dataclasses.fields(GeorConfig)}
    if section not in sections:
        raise ValueError(
            f"stage {stage!r} reads unknown config section {section!r}; sections: {sorted(sections)}"
        )
    known = {f.name for f in dataclasses.fields(getattr(GeorConfig(), section))}
    if leaf and leaf not in known:
        raise ValueError(
            f"stage {stage!r} reads unknown config field {path!r}; {section} has {sorted(known)}"
        )


def check_stage_order(stages: tuple[Stage, ...]) -> None:
    """Names are unique and each stage consumes only stages declared before it."""
    seen: set[str] = set()
    for stage in stages:
        if stage.name in seen:
            raise ValueError(f"stage {stage.name!r} is declared twice")
        missing = [name for name in stage.upstream if name not in seen]
        if missing:
            raise ValueError(f"stage {stage.name!r} consumes {missing}, which no earlier stage produces")
        seen.add(stage.name)


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
