"""`geor grpo`: TRL's GRPOTrainer on Ray Train with DeepSpeed, rewarded by Ray reward actors,
starting from the session's shared SFT checkpoint (test preset, synthetic world).

One 2-worker run (beta 0.04: a reference model) checks the mechanics, with a worker killed part
way so that it also checks resuming; that beta = 0 loads no reference model is checked on the
pipeline's GRPO stage (tests/test_pipeline.py), so no extra training run is needed for it."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

from geor_core import uris
from geor_core.config import load_config
from geor_core.data.dataset import group_counts, read_prepared
from geor_core.errors import UserFacingError
from geor_core.training.grpo_setup import GRPO_COLUMNS, grpo_train_rows, trainer_rows_consumed
from tasks.grpo import run_grpo
from tasks.training_worker import FAULT_STEP_ENV

SHORT = [  # validated and checkpointed every step, one worker failure allowed
    "grpo.max_steps=4",
    "grpo.logging_steps=1",
    "grpo.eval_steps=1",
    "grpo.save_steps=1",
    "grpo.val_rows=4",
    "grpo.max_failures=1",
    "grpo.train_groups=[clean]",  # every row of the test world: the key's path through the workers
]
TWO_WORKERS = [
    "grpo.num_workers=2",
    "grpo.cpus_per_worker=0.5",
    "grpo.per_device_batch_size=4",
    "grpo.learning_rate=1e-4",
]


def test_two_workers_update_every_parameter_log_every_component_and_resume_a_killed_worker(
    sft_checkpoint, prepared_world, tmp_path, mlflow_server, monkeypatch
):
    """Validated and checkpointed every step, rank 1 exits at step 3: Ray registers a checkpoint
    once every worker has reported it, so the newest (2) may be lost before the kill; the run must
    resume from 1 or 2, never from scratch, and finish all 4 steps with the same guarantees."""
    monkeypatch.setenv(FAULT_STEP_ENV, f"3:1:{tmp_path / 'killed-once'}")
    cfg = load_config("test", [*SHORT, *TWO_WORKERS, f"tracking.uri={mlflow_server}"])
    result = run_grpo(cfg, prepared_world, sft_checkpoint.export_uri, str(tmp_path / "out"))
    assert (tmp_path / "killed-once").exists(), "the fault was never injected"
    assert result.resumed_from_step in (1, 2), f"resumed from step {result.resumed_from_step}"
    assert result.global_step == 4
    marker = uris.read_marker(result.export_uri)
    assert marker["ref_model_loaded"] is True  # beta = 0.04 in the test preset
    # every rank held only the rows TRL draws in 4 steps (2 prompts a step), not the split
    clean = group_counts(prepared_world, "train")["clean"]
    assert marker["train_split_rows"] == clean > marker["train_rows"] == grpo_train_rows(cfg, clean) == 8

    before = load_file(f"{sft_checkpoint.export_uri}/model.safetensors")
    after = load_file(f"{result.export_uri}/model.safetensors")
    unchanged = [name for name in before if (before[name] == after[name]).all()]
    assert not unchanged, f"parameters GRPO did not update: {unchanged}"

    logged = set().union(*(entry.keys() for entry in marker["log_history"]))
    for name in ("combined", "distance", "format", "region", "parse_failed", "acc_200km", "geoscore"):
        assert f"rewards/{name}/mean" in logged and f"rewards/{name}/std" in logged
    assert {
        "kl",
        "completions/mean_length",
        "timing/generation_s",
        "timing/reward_s",
        "eval_reward",
    } <= logged
    assert "eval_rewards/acc_750km/mean" in logged
    assert marker["reward_pool"]["completions"] > 0
    # greedy validation: both ranks generated their share of the val rows, sums all-reduced
    greedy = [entry for entry in marker["log_history"] if "eval_greedy/geoscore" in entry]
    assert greedy and all(entry["eval_greedy/n"] == cfg.grpo.val_rows for entry in greedy), greedy
    assert greedy[-1]["eval_greedy/geoscore"] > 1000 and greedy[-1]["eval_greedy/format_rate"] > 50

    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server)
    runs = client.search_runs(
        [client.get_experiment_by_name("geo-r").experiment_id],
        f"tags.`geor.export_uri` = '{result.export_uri}'",
    )
    assert len(runs) == 1 and "rewards/distance/mean" in runs[0].data.metrics
    assert "eval_greedy/geoscore" in runs[0].data.metrics


def test_train_groups_select_the_rows_grpo_trains_on_and_an_empty_choice_is_refused(prepared_world, tmp_path):
    train = read_prepared(prepared_world, "train", GRPO_COLUMNS)
    assert read_prepared(prepared_world, "train", GRPO_COLUMNS, ["clean"]).equals(train)
    assert read_prepared(prepared_world, "train", GRPO_COLUMNS, ["ambiguous", "clean"]).num_rows == len(train)
    assert read_prepared(prepared_world, "train", GRPO_COLUMNS, ["ambiguous"]).num_rows == 0
    assert read_prepared(prepared_world, None, ["id"], ["clean"]).num_rows > len(train)  # every split

    cfg = load_config("test", ["grpo.train_groups=[ambiguous]"])
    with pytest.raises(
        UserFacingError, match=r"grpo.train_groups=\['ambiguous'\]: no training row .*'clean': \d+"
    ):
        run_grpo(cfg, prepared_world, str(tmp_path / "model"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # refused before anything was written


@pytest.mark.parametrize(
    ("workers", "per_device", "accumulation", "generations", "max_steps"),
    [(1, 4, 1, 4, 6), (2, 4, 1, 4, 4), (2, 8, 2, 4, 5), (1, 16, 1, 8, 200), (4, 2, 3, 4, 7)],
)
def test_grpo_workers_hold_exactly_the_rows_trls_sampler_draws(
    workers, per_device, accumulation, generations, max_steps
):
    """K rows, K from the driver's arithmetic: TRL's own RepeatSampler over those K rows draws each
    of them in ``max_steps`` steps (none left unread, none needed beyond), and K is far below a
    large split, so no worker holds the split."""
    from trl.trainer.utils import RepeatSampler

    cfg = load_config(
        "test",
        [
            f"grpo.num_workers={workers}",
            f"grpo.per_device_batch_size={per_device}",
            f"grpo.gradient_accumulation_steps={accumulation}",
            f"grpo.num_generations={generations}",
            f"grpo.max_steps={max_steps}",
        ],
    )
    split = 100_000
    held = grpo_train_rows(cfg, split)
    generation_batch = per_device * workers * accumulation  # GRPOConfig's defaults
    sampler = RepeatSampler(
        range(held), generations, generation_batch // generations, repeat_count=accumulation, seed=0
    )
    # a DataLoader fetch is a whole generation batch across ranks, once per micro-step
    samples = generation_batch * accumulation * max_steps
    drawn = [index for index, _ in zip(sampler, range(samples), strict=False)]
    assert len(drawn) == samples and set(drawn) == set(range(held)) and held < split
    assert grpo_train_rows(cfg, 5) == 5  # capped by the split
    epoch_based = load_config("test", ["grpo.max_steps=-1"])
    assert grpo_train_rows(epoch_based, split) == split


def test_the_drivers_row_count_matches_a_built_grpo_config(tmp_path):
    """The driver counts with GRPOConfig's defaults; the worker checks against the real config."""
    from trl import GRPOConfig

    cfg = load_config("test", ["grpo.gradient_accumulation_steps=2", "grpo.max_steps=5"])
    args = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=cfg.grpo.per_device_batch_size,
        gradient_accumulation_steps=2,
        num_generations=cfg.grpo.num_generations,
        max_steps=5,
        use_cpu=True,
        report_to="none",
        activation_checkpointing=False,  # as the stage sets it; its old name warns
    )
    assert trainer_rows_consumed(args, 10_000) == grpo_train_rows(cfg, 10_000) == 10
