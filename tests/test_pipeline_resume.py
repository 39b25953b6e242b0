"""The pipeline's bookkeeping, on its own: which stages run, skip or resume after a crash, a
changed setting or a changed manifest, and that stage keys are the ones earlier versions wrote (so
existing pipeline roots keep skipping finished stages). The stage bodies are replaced by recorders
that write a complete output (the real bodies are exercised end to end in test_pipeline.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from flows import pipeline_run
from geor_core import uris
from geor_core.config import GeorConfig, load_config
from geor_core.data.manifest import list_manifest_files, manifest_fingerprint
from geor_core.errors import UserFacingError
from geor_core.registry.stage_state import read_record


class Recorder:
    """Stage bodies that log (stage, overwrite) and can crash once in a chosen stage."""

    def __init__(self, root: str) -> None:
        self.root, self.calls, self.crash_in = root, [], None

    def body(self, stage: str) -> Any:
        def run(pipeline: pipeline_run.PipelineRun, *, overwrite: bool) -> dict[str, Any]:
            self.calls.append((stage, overwrite))
            if stage == self.crash_in:
                self.crash_in = None
                raise RuntimeError(f"worker died in {stage}")
            output = uris.join(self.root, stage)
            uris.write_marker(output, {"stage": stage})
            return {"output": output, "kept": 1}

        return run

    def ran(self) -> list[tuple[str, bool]]:
        calls, self.calls = self.calls, []
        return calls


@pytest.fixture
def recorder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder(str(tmp_path / "root"))
    stages = tuple(dataclasses.replace(s, runner=recorder.body(s.name)) for s in pipeline_run.STAGES)
    monkeypatch.setattr(pipeline_run, "STAGES", stages)
    monkeypatch.setattr(pipeline_run.PipelineRun, "preflight", lambda self: None)
    monkeypatch.setattr("tasks.ray_session.connect_ray", lambda: False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "manifest.csv").write_text("id,image,lat,lon\na,a.jpg,1,2\n")
    return recorder


def run(recorder: Recorder, tmp_path: Path, *overrides: str, **kwargs: Any) -> dict[str, str]:
    cfg = load_config("test", list(overrides), {"prepare.manifest": str(tmp_path / "manifest.csv")})
    result = pipeline_run.run_pipeline(cfg, recorder.root, **kwargs)
    return {name: outcome.status for name, outcome in result.stages.items()}


def test_a_crashed_stage_resumes_and_earlier_stages_are_not_redone(recorder, tmp_path):
    recorder.crash_in = "grpo"
    with pytest.raises(RuntimeError, match="worker died in grpo"):
        run(recorder, tmp_path)
    assert recorder.ran() == [("prepare", True), ("sft", True), ("mine-hard", True), ("grpo", True)]

    statuses = run(recorder, tmp_path)
    assert recorder.ran() == [("grpo", False), ("evaluate", True), ("register", True)]  # grpo resumes
    assert statuses == {
        "prepare": "skipped", "sft": "skipped", "mine-hard": "skipped",
        "grpo": "resumed", "evaluate": "ran", "register": "ran",
    }  # fmt: skip


def test_a_changed_setting_redoes_its_stage_and_the_later_ones(recorder, tmp_path):
    run(recorder, tmp_path)
    recorder.ran()
    assert set(run(recorder, tmp_path).values()) == {"skipped"} and recorder.ran() == []
    run(recorder, tmp_path, "grpo.beta=0.0")
    assert recorder.ran() == [("grpo", True), ("evaluate", True), ("register", True)]
    run(recorder, tmp_path, "grpo.beta=0.0", "sft.learning_rate=1e-4")
    assert [stage for stage, _ in recorder.ran()] == ["sft", "mine-hard", "grpo", "evaluate", "register"]


def test_mining_runs_only_when_grpo_trains_on_mined_rows(recorder, tmp_path):
    every_row = "grpo.pipeline_rows=all"
    statuses = run(recorder, tmp_path, every_row)
    assert [stage for stage, _ in recorder.ran()] == ["prepare", "sft", "grpo", "evaluate", "register"]
    assert statuses["mine-hard"] == "not-needed" and read_record(recorder.root, "mine-hard") is None
    assert set(run(recorder, tmp_path, every_row).values()) == {"skipped", "not-needed"}
    assert recorder.ran() == []
    only_grpo = run(recorder, tmp_path, every_row, only=["grpo"])  # no mining record needed
    assert only_grpo["grpo"] == "skipped" and recorder.ran() == []  # the same key as above
    run(recorder, tmp_path)  # the mined rows again: mining runs, and GRPO's key now covers it
    assert [stage for stage, _ in recorder.ran()] == ["mine-hard", "grpo", "evaluate", "register"]


def test_an_edited_manifest_redoes_everything(recorder, tmp_path):
    run(recorder, tmp_path)
    recorder.ran()
    (tmp_path / "manifest.csv").write_text("id,image,lat,lon\na,a.jpg,1,2\nb,b.jpg,3,4\n")
    run(recorder, tmp_path)
    assert [stage for stage, _ in recorder.ran()] == [stage.name for stage in pipeline_run.STAGES]


def test_from_and_only(recorder, tmp_path):
    with pytest.raises(UserFacingError, match="needs 'prepare'"):
        run(recorder, tmp_path, only=["sft"])
    assert recorder.ran() == []  # refused before any stage started
    run(recorder, tmp_path)
    recorder.ran()
    run(recorder, tmp_path, from_stage="evaluate")
    assert recorder.ran() == [("evaluate", True), ("register", True)]
    statuses = run(recorder, tmp_path, "grpo.beta=0.0", only=["grpo"])
    assert recorder.ran() == [("grpo", True)] and statuses["grpo"] == "ran" and "evaluate" in statuses
    (Path(recorder.root) / "pipeline" / "grpo.json").unlink()
    with pytest.raises(UserFacingError, match="'evaluate' needs 'grpo'"):
        run(recorder, tmp_path, only=["sft", "evaluate"])  # a gap in --only is caught up front
    assert recorder.ran() == []
    with pytest.raises(UserFacingError, match="unknown stage"):
        run(recorder, tmp_path, only=["nowhere"])


def _keys_as_before(cfg: GeorConfig) -> dict[str, str]:
    """Each stage's key as the code before stage records computed it (its settings() branches, its
    UPSTREAM table and stage_key, copied here unchanged): what existing pipeline roots hold."""

    def section(name: str) -> dict[str, Any]:
        values = dataclasses.asdict(getattr(cfg, name))
        return {k: v for k, v in values.items() if k not in ("output", "overwrite")}

    settings = {
        "prepare": {
            "prepare": section("prepare"),
            "manifest": manifest_fingerprint(list_manifest_files(cfg.prepare.manifest)),
        },
        "sft": {"model": section("model"), "sft": section("sft")},
        "mine-hard": {"eval": section("eval"), "radius_km": cfg.grpo.hard_radius_km},
        "grpo": {"grpo": section("grpo"), "reward": section("reward")},
        "evaluate": {"eval": section("eval"), "reward": section("reward")},
        "register": {"registry": section("registry")},
    }
    upstream = {
        "prepare": (),
        "sft": ("prepare",),
        "mine-hard": ("prepare", "sft"),
        "grpo": ("mine-hard", "sft"),
        "evaluate": ("prepare", "sft", "grpo"),
        "register": ("prepare", "mine-hard", "sft", "grpo", "evaluate"),
    }
    keys: dict[str, str] = {}
    for stage, values in settings.items():
        material = {
            "stage": stage,
            "settings": values,
            "upstream": {name: keys[name] for name in upstream[stage]},
        }
        keys[stage] = hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[
            :16
        ]
    return keys


@pytest.mark.parametrize(
    "preset, overrides",
    [
        ("test", []),
        (
            "test",
            ["grpo.beta=0.0", "grpo.hard_radius_km=500", "sft.learning_rate=1e-4", "eval.splits=[val,test]"],
        ),
        ("tiny", ["reward.tau_km=100", "registry.margin=0.5", "model.name_or_path=elsewhere"]),
    ],
)
def test_stage_keys_are_the_ones_existing_roots_hold(recorder, tmp_path, preset, overrides):
    manifest = str(tmp_path / "manifest.csv")
    cfg = load_config(preset, overrides, {"prepare.manifest": manifest})
    pipeline_run.run_pipeline(cfg, recorder.root)
    written = {stage.name: read_record(recorder.root, stage.name).key for stage in pipeline_run.STAGES}
    assert written == _keys_as_before(cfg)
