"""docs/configuration.md is the schema rendered (a stale file fails), every key has a doc, and
`geor config show` prints the resolved config as YAML with credentials masked."""

from __future__ import annotations

from pathlib import Path

import yaml

from flows.cli import main
from geor_core.config import load_config, preset_names
from geor_core.config.reference import REGENERATE, keys, render_reference, sections

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_configuration_reference_is_current():
    assert DOC.read_text() == render_reference(), f"docs/configuration.md is stale; run `{REGENERATE}`"


def test_every_key_has_a_doc():
    missing = [
        f"{name}.{key}"
        for name, cls in sections()
        for key, _, spec in keys(cls)
        if not spec.metadata.get("doc")
    ]
    assert not missing, f"keys without doc= in geor_core/config/sections.py: {missing}"


def test_reference_lists_keys_types_defaults_ranges_choices_and_presets():
    text = render_reference()
    assert "| `grpo.beta` | float | `0.04` | >= 0.0 | KL coefficient; 0 loads no reference model |" in text
    assert "| `reward.mode` | str | `product` | `product`, `weighted_sum` |" in text
    assert "| `data.world_countries` | int | `12` | 1 .. 60 |" in text
    assert "| `model.lora.enabled` | bool | `false` |" in text
    for name in preset_names():
        assert f"[`{name}`](../configs/{name}.yaml)" in text
    assert "[`tiny`](../configs/tiny.yaml) (default)" in text
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    every_key = {f"{name}.{key}" for name, cls in sections() for key, _, _ in keys(cls)}
    assert {row.split("`")[1] for row in rows} >= every_key


def test_config_reference_command_prints_the_reference(capsys):
    assert main(["config", "reference"]) == 0
    assert capsys.readouterr().out == render_reference()


def test_config_show_prints_the_resolved_yaml_that_loads_back(capsys, tmp_path):
    assert main(["config", "show", "--config", "test", "grpo.beta=0.02", "eval.splits=[val,test]"]) == 0
    out = capsys.readouterr().out
    shown = yaml.safe_load(out)
    assert shown["grpo"]["beta"] == 0.02 and shown["eval"]["splits"] == ["val", "test"]
    assert shown["data"]["world_rows"] == load_config("test").data.world_rows  # test extends tiny
    path = tmp_path / "shown.yaml"
    path.write_text(out)
    assert load_config(str(path)) == load_config("test", ["grpo.beta=0.02", "eval.splits=[val,test]"])


def test_config_show_masks_credentials_in_uris(capsys):
    uri = "https://alice:s3cr3t@mlflow.example.com/x?token=abc&n=1"
    assert main(["config", "show", f"tracking.uri={uri}", "registry.benchmark=s3://b/bench"]) == 0
    out = capsys.readouterr().out
    assert "s3cr3t" not in out and "token=abc" not in out
    shown = yaml.safe_load(out)
    assert shown["tracking"]["uri"] == "https://alice:***@mlflow.example.com/x?token=***&n=1"
    assert shown["registry"]["benchmark"] == "s3://b/bench"
