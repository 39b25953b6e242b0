"""GRPO with Haversine rewards: a Ray Train TorchTrainer whose workers run TRL's GRPOTrainer with
DeepSpeed, rewarded by a pool of Ray reward actors (tasks/reward_actors.py).

Choices:
- Everything GRPO is TRL's (geor_core/training/grpo_setup.py builds it); this module adds the Ray parts:
  each worker owns a small pool of reward actors (fractional CPUs, gazetteer loaded once each),
  and every batch of completions is scored there in one call returning every component.
- Starts from an SFT export or any model URI; ``beta = 0`` loads no reference model (TRL).
- Checkpoints, resume, export and MLflow exactly as SFT (tasks/training_run.py); checkpoints are
  ranked by ``eval_reward`` on the fixed val subset (``grpo.val_rows`` rows).
"""

from __future__ import annotations

from typing import Any

from geor_core.config import GeorConfig
from geor_core.data.dataset import group_counts, read_prepared
from geor_core.errors import UserFacingError
from tasks.training_run import TrainingResult, launch_training
from tasks.training_worker import finish_worker, setup_worker


def run_grpo(
    cfg: GeorConfig,
    data_uri: str,
    model_uri: str,
    output_uri: str,
    *,
    overwrite: bool = False,
    callbacks: list | None = None,
    log_model: bool = True,
) -> TrainingResult:
    """Optimise ``model_uri`` with GRPO on the prepared rows at ``data_uri``; export to
    ``<output_uri>/model``. ``callbacks``: extra Ray Train callbacks (a sweep trial's reporter);
    ``log_model``: whether a tracked run logs its export as an MLflow model (not for sweep trials)."""
    check_train_groups(cfg, data_uri)
    return launch_training(
        cfg,
        "grpo",
        grpo_worker_loop,
        data_uri,
        model_uri,
        output_uri,
        metric="eval_reward",
        mode="max",
        overwrite=overwrite,
        callbacks=callbacks,
        log_model=log_model,
    )


def check_train_groups(cfg: GeorConfig, data_uri: str) -> None:
    """``grpo.train_groups`` leaves training rows to train on, else a UserFacingError naming the
    groups the data has."""
    groups = cfg.grpo.train_groups
    if groups:
        found = group_counts(data_uri, "train")
        if not any(found.get(group) for group in groups):
            raise UserFacingError(
                f"grpo.train_groups={groups}: no training row of {data_uri} is in those groups "
                f"(rows by group: {found}; a group column comes from prepare.group_col)"
            )


def grpo_worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: its reward actors, the GRPOTrainer, resume, train, export."""
    from ray.train.huggingface.transformers import prepare_trainer

    from geor_core.training.greedy_validation import GreedyValidationCallback
    from geor_core.training.grpo_setup import GRPO_COLUMNS, build_grpo_trainer
    from tasks.reward_actors import RewardActorPool

    setup = setup_worker(config, "grpo")
    cfg = setup.cfg
    train = read_prepared(config["data_uri"], "train", GRPO_COLUMNS, cfg.grpo.train_groups)
    val = read_prepared(config["data_uri"], "val", GRPO_COLUMNS).slice(0, cfg.grpo.val_rows)
    pool = RewardActorPool(
        cfg.reward,
        cfg.grpo.reward_actors,
        cfg.grpo.reward_actor_cpus,
        timeout_s=cfg.grpo.reward_timeout_s,
        resources=cfg.cluster.worker_resources,
    )
    trainer, board = build_grpo_trainer(
        cfg,
        setup.model,
        setup.processor,
        train,
        val,
        str(setup.scratch / "trainer"),
        pool.score,
        [*setup.callbacks, GreedyValidationCallback(val, cfg, config["run_id"])],
    )
    try:
        finish_worker(
            prepare_trainer(trainer),
            setup,
            config,
            "grpo",
            lambda: {
                "train_rows": train.num_rows,
                "reward_pool": pool.stats(),
                "reward_seconds": board.seconds,
                "ref_model_loaded": getattr(trainer, "ref_model", None) is not None,
            },
        )
    finally:
        pool.close()
