"""The one config schema: presets, overrides, validation messages, secrets never logged."""

from __future__ import annotations

import pytest

from geor_core.config import (
    ConfigError,
    build_config,
    flat_params,
    is_secret_key,
    load_config,
    preset_names,
)


def test_every_shipped_preset_validates():
    names = preset_names()
    assert {"tiny", "test", "qwen2.5-vl-3b", "qwen2.5-vl-7b"} <= set(names)
    for name in names:
        load_config(name)


def test_paper_defaults_when_nothing_is_set():
    cfg = build_config({})
    assert (cfg.grpo.num_generations, cfg.grpo.beta, cfg.grpo.learning_rate) == (4, 0.04, 1e-6)
    assert (cfg.grpo.temperature, cfg.grpo.max_completion_length) == (0.9, 256)
    assert cfg.reward.mode == "product" and cfg.reward.distance_shape == "piecewise"
    assert cfg.sft.learning_rate == 1e-5


def test_test_preset_extends_tiny_and_overrides_win():
    tiny, test = load_config("tiny"), load_config("test")
    assert test.model.max_pixels == tiny.model.max_pixels
    assert test.data.world_rows < tiny.data.world_rows
    cfg = load_config("test", ["grpo.beta=0", "eval.splits=[val, test]", "model.lora.enabled=true"])
    assert cfg.grpo.beta == 0.0 and isinstance(cfg.grpo.beta, float)
    assert cfg.eval.splits == ["val", "test"]
    assert cfg.model.lora.enabled is True


def test_exponent_floats_without_a_dot_are_numbers():
    cfg = load_config("test", ["grpo.learning_rate=1e-6", "sft.learning_rate=3E-3"])
    assert cfg.grpo.learning_rate == 1e-6 and cfg.sft.learning_rate == 3e-3


def test_typed_values_from_flags_are_not_reparsed():
    cfg = load_config("test", values={"prepare.lat_col": "on", "prepare.manifest": "s3://b/m.csv"})
    assert cfg.prepare.lat_col == "on" and cfg.prepare.manifest == "s3://b/m.csv"


def test_yaml_file_round_trips(tmp_path):
    cfg = load_config("test", ["grpo.beta=0.02"])
    path = tmp_path / "best.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(str(path))
    assert again == cfg and again.fingerprint() == cfg.fingerprint()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("grpo.beta=-1", "grpo.beta: got -1.0, must be >= 0.0"),
        ("grpo.bogus=1", "unknown key 'grpo.bogus'"),
        ("grpo.betta=0.1", "unknown key 'grpo.betta' in section 'grpo'; did you mean 'grpo.beta'?"),
        ("grop.beta=0.1", "unknown key 'grop' in the top level; did you mean 'grpo'?"),
        ("model.lora.dropuot=0.1", "did you mean 'model.lora.dropout'?"),
        ("nosection.x=1", "unknown key 'nosection'"),
        ("reward.mode=sum", "reward.mode: got 'sum', allowed: 'product', 'weighted_sum'"),
        ("sft.max_steps=ten", "sft.max_steps: got 'ten', expected an integer"),
        ("sft.use_gpu=maybe", "sft.use_gpu: got 'maybe', expected true or false"),
        ("sft.zero_stage=1", "sft.zero_stage: got 1, allowed: 0, 2, 3"),
        ("prepare.splits={train: 0.5, test: 0.2}", "must sum to 1"),
        ("grpo.num_generations=3", "grpo.num_generations: got 3, must divide the global batch"),
        ("model.min_pixels=999999999", "model.min_pixels"),
        ("grpo", "must look like section.key=value"),
    ],
)
def test_errors_name_key_value_and_what_is_allowed(override, message):
    with pytest.raises(ConfigError, match=None) as info:
        load_config("test", [override])
    assert message in str(info.value)


def test_unknown_preset_lists_the_known_ones(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="unknown preset 'nope'; presets: .*tiny"):
        load_config("nope")
    with pytest.raises(ConfigError, match="unknown preset 'tyni'; did you mean 'tiny'"):
        load_config("tyni")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(str(bad))

    expected = load_config("test").to_dict()
    (tmp_path / "tiny").mkdir()  # a folder in the working directory named like the preset test extends
    monkeypatch.chdir(tmp_path)
    assert load_config("test").to_dict() == expected


def test_secret_named_keys_never_reach_params():
    assert is_secret_key("tracking.aws_secret_access_key") and is_secret_key("hf_token")
    assert is_secret_key("storage.aws_access_key_id") and is_secret_key("registry.db_password")
    assert not is_secret_key("grpo.beta") and not is_secret_key("eval.max_new_tokens")
    params = flat_params(load_config("test"))
    assert params["grpo.beta"] == 0.04 and "eval.max_new_tokens" in params
    assert not [k for k in params if is_secret_key(k)]
