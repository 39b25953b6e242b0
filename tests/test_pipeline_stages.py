"""Pipeline stages as records: a stage must declare the config its key hashes (or it cannot be
built), the declared list is checked, and keys, preflight, ``--from``/``--only`` and the CLI all
derive from the one list. No Ray, no stage bodies run."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
from typing import Any

import pytest

from flows import pipeline_run, pipeline_stages
from flows.commands import pipeline_command
from geor_core.config import GeorConfig, load_config
from geor_core.registry.stage_state import Stage, check_stage_order


def body(run: Any, *, overwrite: bool) -> dict[str, Any]:
    return {}


def test_a_stage_without_declared_config_cannot_be_built():
    with pytest.raises(ValueError, match="'report' declares no config"):
        Stage("report", ("evaluate",), "report", {}, body)


@pytest.mark.parametrize(
    "reads, message",
    [
        ({"x": "nowhere"}, "unknown config section 'nowhere'"),
        ({"x": "grpo.nope"}, "unknown config field 'grpo.nope'"),
        ({"x": "grpo.beta.more"}, "unknown config field 'grpo.beta.more'"),
    ],
)
def test_a_stage_reading_unknown_config_cannot_be_built(reads, message):
    with pytest.raises(ValueError, match=message):
        Stage("report", (), "report", reads, body)


def test_the_stage_list_is_checked_names_unique_and_inputs_declared_earlier(monkeypatch):
    first = Stage("a", (), "a", {"sft": "sft"}, body)
    with pytest.raises(ValueError, match="'a' is declared twice"):
        check_stage_order((first, first))
    late = Stage("b", ("c",), "b", {"sft": "sft"}, body)
    with pytest.raises(ValueError, match=r"'b' consumes \['c'\]"):
        check_stage_order((first, late, Stage("c", (), "c", {"sft": "sft"}, body)))
    # the run refuses such a list before anything happens (its key would silently miss the input)
    monkeypatch.setattr(pipeline_run, "STAGES", (*pipeline_run.STAGES, late))
    with pytest.raises(ValueError, match=r"'b' consumes \['c'\]"):
        pipeline_run.PipelineRun(load_config("test", [], {}), "/nowhere", None, None)


def test_a_new_stage_is_keyed_by_the_sections_it_declares(monkeypatch):
    """The old settings() fell through to the registry section for any stage without a branch."""
    report = Stage("report", ("evaluate",), "report", {"sweep": "sweep", "tau": "reward.tau_km"}, body)
    monkeypatch.setattr(pipeline_run, "STAGES", (*pipeline_run.STAGES, report))

    def key(*overrides: str) -> str:
        run = pipeline_run.PipelineRun(load_config("test", list(overrides), {}), "/nowhere", None, None)
        run.outcomes["evaluate"] = pipeline_run.StageOutcome("evaluate", "ran", "evaluate-key", {})
        return run.key(run.stages["report"])

    assert key() == key("registry.margin=0.5")  # not a setting of this stage
    assert key() == key("sweep.output=/elsewhere")  # where a section's output goes is not a setting
    assert len({key(), key("sweep.num_samples=9"), key("reward.tau_km=7")}) == 3


def test_from_and_only_follow_the_declared_order(monkeypatch):
    report = Stage("report", ("evaluate",), "report", {"sweep": "sweep"}, body)
    monkeypatch.setattr(pipeline_run, "STAGES", (*pipeline_run.STAGES, report))
    cfg = load_config("test", [], {})
    assert pipeline_run.PipelineRun(cfg, "/r", "register", None).forced == {"register", "report"}
    assert pipeline_run.PipelineRun(cfg, "/r", None, ["report", "sft"]).selected == ["sft", "report"]


def test_preflight_runs_each_selected_stages_checks_once_in_stage_order(monkeypatch):
    ran = []

    def check(name: str) -> Any:
        def run(cfg: GeorConfig) -> None:
            ran.append(name)

        return run

    shared, sft_only, grpo_only = check("shared"), check("sft"), check("grpo")
    checks = {"sft": (shared, sft_only), "grpo": (grpo_only,), "evaluate": (shared,)}
    stages = tuple(dataclasses.replace(s, preflight=checks.get(s.name, ())) for s in pipeline_run.STAGES)
    monkeypatch.setattr(pipeline_run, "STAGES", stages)
    cfg = load_config("test", [], {})
    pipeline_run.PipelineRun(cfg, "/r", None, ["evaluate", "grpo", "sft"]).preflight()
    assert ran == ["shared", "sft", "grpo"]
    ran.clear()
    pipeline_run.PipelineRun(cfg, "/r", None, ["evaluate"]).preflight()
    assert ran == ["shared"]


def test_the_cli_offers_the_declared_stages():
    parser = argparse.ArgumentParser()
    pipeline_command.add_arguments(parser)
    names = [stage.name for stage in pipeline_stages.STAGES]
    assert names == ["prepare", "sft", "mine-hard", "grpo", "evaluate", "register"]
    assert parser.parse_args(["--from", "mine-hard"]).from_stage == "mine-hard"
    with pytest.raises(SystemExit):
        parser.parse_args(["--from", "nowhere"])


def _config_reads(runner: Any) -> set[str]:
    """The config a stage body reads directly (``<x>.cfg.section`` or ``<x>.cfg.section.field``)."""
    sections = {f.name for f in dataclasses.fields(GeorConfig)}
    tree = ast.parse(textwrap.dedent(inspect.getsource(runner)))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    reads = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and node.attr in sections):
            continue
        if isinstance(node.value, ast.Attribute) and node.value.attr == "cfg":
            parent = parents.get(node)
            field = parent.attr if isinstance(parent, ast.Attribute) and parent.value is node else None
            reads.add(f"{node.attr}.{field}" if field else node.attr)
    return reads


def _undeclared_reads(stage: Stage, stages: dict[str, Stage]) -> set[str]:
    """Config the body reads that neither its key nor an input's key covers (inputs' keys include
    their own inputs', so config reached through them is covered)."""
    covered, todo = set(), [stage.name]
    while todo:
        current = stages[todo.pop()]
        covered |= set(current.reads.values())
        todo.extend(current.upstream)
    return {path for path in _config_reads(stage.runner) if not {path, path.split(".")[0]} & covered}


def test_every_stage_body_reads_only_config_its_key_covers():
    stages = {stage.name: stage for stage in pipeline_stages.STAGES}
    assert {name: _undeclared_reads(stage, stages) for name, stage in stages.items()} == dict.fromkeys(
        stages, set()
    )


def test_a_body_reading_undeclared_config_is_caught():
    def report(run: Any, *, overwrite: bool) -> dict[str, Any]:
        return {"beta": run.cfg.grpo.beta, "radius": run.cfg.grpo.hard_radius_km, "sweep": str(run.cfg.sweep)}

    stage = Stage("report", ("mine-hard",), "report", {"eval": "eval"}, report)
    stages = {s.name: s for s in (*pipeline_stages.STAGES, stage)}
    # mine-hard declares grpo.hard_radius_km only: the rest of grpo, and sweep, are not covered
    assert _undeclared_reads(stage, stages) == {"grpo.beta", "sweep"}


@pytest.mark.parametrize(
    "pipeline_rows, kept, trains_on",
    [("hard", 12, "mined"), ("hard", 0, "prepared"), ("all", 12, "prepared")],
)
def test_grpo_trains_on_the_mined_rows_unless_told_otherwise_or_none_were_kept(
    monkeypatch, pipeline_rows, kept, trains_on
):
    import tasks.grpo
    from tasks.training_run import TrainingResult

    outputs = {("prepare", "output"): "prepared", ("sft", "output"): "sft-model"}
    if pipeline_rows == "hard":  # with "all", mining does not run: its outputs do not exist
        outputs |= {("mine-hard", "output"): "mined", ("mine-hard", "kept"): kept}
    run = argparse.Namespace(
        cfg=load_config("test", [f"grpo.pipeline_rows={pipeline_rows}"]),
        out=lambda stage, name: outputs[(stage, name)],
        output_dir=lambda stage: f"root/{stage}",
    )
    trained = []

    def run_grpo(cfg: GeorConfig, data: str, model: str, output: str, *, overwrite: bool) -> TrainingResult:
        trained.append(data)
        return TrainingResult(f"{output}/model", False, 6, 0, {})

    monkeypatch.setattr(tasks.grpo, "run_grpo", run_grpo)
    assert pipeline_stages.grpo(run, overwrite=False)["data"] == trains_on and trained == [trains_on]
