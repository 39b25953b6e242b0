"""GRPO with Haversine rewards: a Ray Train TorchTrainer whose workers run TRL's GRPOTrainer with
DeepSpeed, rewarded by a pool of Ray reward actors (tasks/reward_actors.py).

Choices:
- Everything GRPO is TRL's (geor_core/grpo_setup.py builds it); this module adds the Ray parts:
  each worker owns a small pool of reward actors (fractional CPUs, gazetteer loaded once each),
  and every batch of completions is scored there in one call returning every component.
- Starts from an SFT export or any model URI; ``beta = 0`` loads no reference model (TRL).
- Checkpoints, resume, export and MLflow exactly as SFT (tasks/training_run.py); checkpoints are
  ranked by ``eval_reward`` on the fixed val subset (``grpo.val_rows`` rows).
"""

from __future__ import annotations

from typing import Any

from geor_core.config import GeorConfig, build_config
from geor_core.dataset import read_prepared
from tasks.training_run import (
    FaultInjectionCallback,
    TrainingResult,
    export_and_report,
    launch_training,
    prepare_worker,
    train_with_resume,
)


def run_grpo(
    cfg: GeorConfig, data_uri: str, model_uri: str, output_uri: str, *, overwrite: bool = False
) -> TrainingResult:
    """Optimise ``model_uri`` with GRPO on the prepared rows at ``data_uri``; export to ``<output_uri>/model``."""
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
    )


def grpo_worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: reward actors, the GRPOTrainer, resume, train, export."""
    from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer

    from geor_core.grpo_setup import GRPO_COLUMNS, build_grpo_trainer
    from geor_core.models import apply_lora, load_model, load_processor
    from geor_core.sft_setup import per_device_batch_size
    from geor_core.train_callbacks import MlflowMetricsCallback
    from tasks.reward_actors import RewardActorPool

    context, scratch = prepare_worker(config)
    cfg = build_config(config["cfg"])
    rank, world = context.get_world_rank(), context.get_world_size()
    model_cfg = cfg.model
    model_cfg.name_or_path = config["model_uri"]
    processor = load_processor(model_cfg)
    model = apply_lora(load_model(model_cfg), model_cfg.lora)
    train = read_prepared(config["data_uri"], "train", GRPO_COLUMNS)
    val = read_prepared(config["data_uri"], "val", GRPO_COLUMNS).slice(0, cfg.grpo.val_rows)
    pool = RewardActorPool(cfg.reward, cfg.grpo.reward_actors, cfg.grpo.reward_actor_cpus)
    global_batch = per_device_batch_size(cfg.grpo) * world * cfg.grpo.gradient_accumulation_steps
    callbacks = [
        RayTrainReportCallback(),
        MlflowMetricsCallback(config["run_id"] if rank == 0 else None, global_batch),
        *FaultInjectionCallback.from_env(rank),
    ]
    trainer, board = build_grpo_trainer(
        cfg, model, processor, train, val, str(scratch / "trainer"), pool.score, callbacks
    )
    trainer = prepare_trainer(trainer)
    try:
        resumed_from = train_with_resume(trainer)
    finally:
        reward_stats = pool.stats()
        pool.close()
    export_and_report(
        trainer,
        processor,
        lora=model_cfg.lora.enabled,
        scratch=scratch,
        export_uri=config["export_uri"],
        marker={
            "stage": "grpo",
            "resumed_from_step": resumed_from,
            "data": config["data_uri"],
            "base_model": config["model_uri"],
            "config_hash": cfg.fingerprint(),
            "reward_pool": reward_stats,
            "reward_seconds": board.seconds,
            "ref_model_loaded": getattr(trainer, "ref_model", None) is not None,
        },
    )
