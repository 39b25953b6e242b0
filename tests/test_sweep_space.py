"""The sweep's search space and objective, Ray-free: loading, rejection by name, value checks, each
trial's config, and the mapping from GRPO's eval logs to the objectives Tune ranks."""

from __future__ import annotations

import numpy as np
import pytest

from geor_core.config import ConfigError, load_config
from geor_core.training.sweep_space import (
    OBJECTIVES,
    check_space,
    load_space,
    objective_of,
    parse_space,
    shipped_spaces,
    trial_config,
    validation_metrics,
)


@pytest.fixture(scope="module")
def base():
    return load_config("test")


def test_the_shipped_space_loads_by_name_and_validates(base):
    assert "grpo" in shipped_spaces()
    space = load_space("grpo")
    kinds = {d.key: d.kind for d in space.dimensions}
    beta = next(d for d in space.dimensions if d.key == "grpo.beta")
    assert beta.kind == "choice" and 0.0 in beta.values  # beta may be 0 (no reference model)
    assert kinds["grpo.learning_rate"] == "loguniform"
    assert {"reward.mode", "reward.distance_shape", "reward.tau_km", "grpo.temperature"} <= set(kinds)
    check_space(space, base, "random")
    check_space(space, base, "optuna")
    with pytest.raises(ConfigError, match=r"grpo.learning_rate: sweep.search=grid needs a list"):
        check_space(space, base, "grid")


def test_a_yaml_file_parses_every_form(tmp_path, base):
    path = tmp_path / "space.yaml"
    path.write_text(
        "grpo.beta: [0.0, 0.04]\n"
        "reward.mode: {choice: [product, weighted_sum]}\n"
        "reward.tau_km: {loguniform: [100, 2000]}\n"
        "grpo.num_generations: {randint: [2, 4]}\n"
        "grpo.learning_rate: {uniform: [1e-6, 1.0e-5]}\n"  # YAML 1.1 reads 1e-6 as a string
        "grpo.temperature: 0.7\n"
    )
    space = load_space(str(path))
    got = {d.key: (d.kind, d.values) for d in space.dimensions}
    assert got == {
        "grpo.beta": ("choice", (0.0, 0.04)),
        "reward.mode": ("choice", ("product", "weighted_sum")),
        "reward.tau_km": ("loguniform", (100, 2000)),
        "grpo.num_generations": ("randint", (2, 4)),
        "grpo.learning_rate": ("uniform", (1e-6, 1e-5)),
        "grpo.temperature": ("constant", (0.7,)),
    }
    assert space.largest("grpo.num_generations", 99) == 4 and space.largest("grpo.num_workers", 3) == 3
    check_space(space, base, "random")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"grpo.betta": [0.0]}, r"unknown key 'grpo.betta'; did you mean 'grpo.beta'\?.*grpo.temperature"),
        ({"reward.shape": ["exp"]}, r"unknown key 'reward.shape'.*Keys of 'reward': .*reward.distance_shape"),
        ({"grpo": {"beta": 0.0}}, r"'grpo' names a section, not a key; write dotted keys"),
        ({"sweep.num_samples": [2]}, r"'sweep.num_samples' cannot be swept"),
        ({"grpo.output": ["/x"]}, r"'grpo.output' cannot be swept"),
        ({"tracking.uri": ["http://x"]}, r"'tracking.uri' cannot be swept"),
        ({"grpo.beta": {"normal": [0, 1]}}, r"unknown distribution 'normal'"),
        ({"grpo.beta": {"uniform": [0.1]}}, r"uniform needs \[low, high\]"),
        ({"grpo.beta": {"uniform": [0.2, 0.1]}}, r"needs low < high, got \[0.2, 0.1\]"),
        ({"grpo.learning_rate": {"loguniform": [0, 1e-5]}}, r"loguniform needs low > 0"),
        ({"grpo.num_generations": {"randint": [2, 4.5]}}, r"randint needs integer ends"),
        ({"grpo.beta": []}, r"choice needs a non-empty list"),
        ({}, r"non-empty mapping"),
    ],
)
def test_bad_spaces_are_rejected_by_name(data, message):
    with pytest.raises(ConfigError, match=message):
        parse_space(data, "s.yaml")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"grpo.beta": [0.0, -1]},
            r"grpo.beta: value -1 is not valid here: grpo.beta: got -1.0, must be >= 0.0",
        ),
        (
            {"reward.mode": ["product", "prod"]},
            r"reward.mode: value 'prod' .*allowed: 'product', 'weighted_sum'",
        ),
        ({"grpo.num_generations": [2, 3]}, r"value 3 .*must divide the global batch"),
        ({"grpo.num_generations": {"uniform": [2.0, 4.0]}}, r"uniform draws floats but the key holds int"),
        ({"reward.mode": {"randint": [0, 1]}}, r"randint draws integers but the key holds str"),
        (
            {"grpo.temperature": {"uniform": [0.5, 1.5]}, "grpo.top_p": {"uniform": [0.5, 1.5]}},
            r"grpo.top_p: value 1.5",
        ),
    ],
)
def test_values_are_checked_against_the_schema_on_the_base_config(base, data, message):
    with pytest.raises(ConfigError, match=message):
        check_space(parse_space(data, "s.yaml"), base, "random")


def test_missing_space_files_and_names_are_clear(tmp_path):
    with pytest.raises(ConfigError, match=r"space file .*nope.yaml' does not exist"):
        load_space(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match=r"unknown space 'nope'; shipped spaces: .*grpo"):
        load_space("nope")
    (tmp_path / "bad.yaml").write_text("grpo.beta: [0.0\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_space(str(tmp_path / "bad.yaml"))


def test_a_trial_config_sets_dotted_params_and_rejects_bad_combinations(base):
    values = base.to_dict()
    cfg = trial_config(values, {"grpo.beta": np.float64(0.0), "grpo.num_generations": np.int64(4)})
    assert cfg.grpo.beta == 0.0 and cfg.grpo.num_generations == 4 and type(cfg.grpo.num_generations) is int
    assert values["grpo"]["beta"] == base.grpo.beta, "the base must not change"
    with pytest.raises(ConfigError, match="must divide the global batch"):  # each value alone is fine
        trial_config(values, {"grpo.per_device_batch_size": 2, "grpo.num_generations": 4})


def test_the_objective_is_named_and_its_direction_checked(base):
    assert objective_of(base.sweep) is OBJECTIVES["val_geoscore"]
    assert OBJECTIVES["val_geoscore"].eval_key == "eval_greedy/geoscore"  # greedy by default
    sweep = load_config("test", ["sweep.metric=val_parse_failed", "sweep.mode=min"]).sweep
    assert objective_of(sweep).eval_key == "eval_rewards/parse_failed/mean"
    with pytest.raises(
        ConfigError,
        match=r"sweep.metric: got 'geoscore', allowed: val_geoscore, val_greedy_acc_200km, val_sampled_geoscore, val_reward",
    ):
        objective_of(load_config("test", ["sweep.metric=geoscore"]).sweep)
    with pytest.raises(ConfigError, match=r"better when lower \(set sweep.mode=min\)"):
        objective_of(load_config("test", ["sweep.metric=val_parse_failed"]).sweep)


def test_validation_metrics_read_grpo_eval_logs_only():
    logged = {
        "eval_greedy/geoscore": 3210.5,
        "eval_rewards/geoscore/mean": 2900.0,
        "eval_reward": 0.61,
        "eval_rewards/acc_750km/mean": 1.0,
        "rewards/geoscore/mean": 999.0,  # the training batch's, sampled: not a validation
        "step": 4,
    }
    assert validation_metrics(logged) == {
        "val_geoscore": 3210.5,
        "val_sampled_geoscore": 2900.0,
        "val_reward": 0.61,
        "val_acc_750km": 1.0,
    }
    assert validation_metrics({"global_step": 4}) == {}
