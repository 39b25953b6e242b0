"""The pipeline's bookkeeping, on its own: which stages run, skip or resume after a crash, a
changed setting or a changed manifest. The stage bodies are replaced by recorders that write a
complete output (the real bodies are exercised end to end in test_pipeline.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flows import pipeline_run
from geor_core import uris
from geor_core.config import load_config
from geor_core.errors import UserFacingError


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
    monkeypatch.setattr(pipeline_run, "STAGE_RUNNERS", {s: recorder.body(s) for s in pipeline_run.STAGES})
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


def test_an_edited_manifest_redoes_everything(recorder, tmp_path):
    run(recorder, tmp_path)
    recorder.ran()
    (tmp_path / "manifest.csv").write_text("id,image,lat,lon\na,a.jpg,1,2\nb,b.jpg,3,4\n")
    run(recorder, tmp_path)
    assert [stage for stage, _ in recorder.ran()] == list(pipeline_run.STAGES)


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
