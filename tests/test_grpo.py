"""`geor grpo`: TRL's GRPOTrainer on Ray Train with DeepSpeed, rewarded by Ray reward actors,
starting from the session's shared SFT checkpoint (test preset, synthetic world)."""

from __future__ import annotations

from safetensors.torch import load_file

from geor_core import uris
from geor_core.config import load_config
from tasks.grpo import run_grpo
from tasks.training_worker import FAULT_STEP_ENV

SHORT = [
    "grpo.max_steps=4",
    "grpo.logging_steps=1",
    "grpo.eval_steps=2",
    "grpo.save_steps=2",
    "grpo.val_rows=4",
]
TWO_WORKERS = [
    "grpo.num_workers=2",
    "grpo.cpus_per_worker=0.5",
    "grpo.per_device_batch_size=4",
    "grpo.learning_rate=1e-4",
]


def test_two_workers_update_every_parameter_and_log_every_component(
    sft_checkpoint, prepared_world, tmp_path, mlflow_server
):
    cfg = load_config("test", [*SHORT, *TWO_WORKERS, f"tracking.uri={mlflow_server}"])
    result = run_grpo(cfg, prepared_world, sft_checkpoint.export_uri, str(tmp_path))
    assert result.global_step == 4
    marker = uris.read_marker(result.export_uri)
    assert marker["ref_model_loaded"] is True  # beta = 0.04 in the test preset

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


def test_killed_worker_resumes_and_beta_zero_loads_no_reference_model(
    sft_checkpoint, prepared_world, tmp_path, monkeypatch
):
    """Checkpoints every 2 steps, the worker exits at step 9: the run resumes from step 6 or 8
    (Ray may not have registered the newest before the kill) and finishes. beta = 0 here, so
    TRL must not load a reference model."""
    monkeypatch.setenv(FAULT_STEP_ENV, f"9:0:{tmp_path / 'killed-once'}")
    cfg = load_config("test", [*SHORT, "grpo.max_steps=10", "grpo.max_failures=1", "grpo.beta=0"])
    result = run_grpo(cfg, prepared_world, sft_checkpoint.export_uri, str(tmp_path / "out"))
    assert (tmp_path / "killed-once").exists(), "the fault was never injected"
    assert result.resumed_from_step in (6, 8), f"resumed from step {result.resumed_from_step}"
    assert result.global_step == 10
    assert uris.read_marker(result.export_uri)["ref_model_loaded"] is False
