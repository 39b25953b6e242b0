"""Supervised fine-tuning on Chain-of-Region rows: a Ray Train TorchTrainer whose workers run
TRL's SFTTrainer with DeepSpeed (ZeRO 0/2/3; gloo + fp32 on CPU, bf16 on GPU).

Choices:
- Ray's own transformers integration: ``prepare_trainer`` and ``RayTrainReportCallback``, which
  hands every Trainer/DeepSpeed checkpoint (optimizer state included) to Ray Train's storage
  under ``<output>/ray``; Ray keeps the best ``save_total_limit`` by val loss and always the latest.
- Fault tolerance is Ray's: ``FailureConfig(max_failures)`` restarts the worker group, and each
  worker resumes from ``ray.train.get_checkpoint()``. Re-running the command after a killed
  driver finds the same run (same name and storage path) and resumes too.
- The final model is exported in Hugging Face format to ``<output>/model`` (gathered under
  ZeRO-3) with a completion marker; a re-run over a complete export is a no-op.
- Only rank 0 logs to MLflow, once per ``logging_steps``, into the driver's stage run.
"""

from __future__ import annotations

from typing import Any

from geor_core.config import GeorConfig, build_config
from geor_core.dataset import read_prepared
from tasks.training_run import (
    FaultInjectionCallback,
    TrainingResult,
    check_training_inputs,
    export_and_report,
    launch_training,
    prepare_worker,
    train_with_resume,
)


def check_inputs(cfg: GeorConfig, data_uri: str, model_uri: str) -> dict[str, Any]:
    """Everything that can be wrong before a worker starts; returns the data's marker."""
    return check_training_inputs(cfg, "sft", data_uri, model_uri)


def run_sft(
    cfg: GeorConfig, data_uri: str, model_uri: str, output_uri: str, *, overwrite: bool = False
) -> TrainingResult:
    """Fine-tune ``model_uri`` on the prepared rows at ``data_uri``; export to ``<output_uri>/model``."""
    return launch_training(
        cfg,
        "sft",
        sft_worker_loop,
        data_uri,
        model_uri,
        output_uri,
        metric="eval_loss",
        mode="min",
        overwrite=overwrite,
    )


def sft_worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: build the SFTTrainer, resume from Ray's checkpoint, train, export."""
    from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer

    from geor_core.models import apply_lora, load_model, load_processor
    from geor_core.sft_setup import SFT_COLUMNS, build_sft_trainer, per_device_batch_size
    from geor_core.train_callbacks import MlflowMetricsCallback

    context, scratch = prepare_worker(config)
    cfg = build_config(config["cfg"])
    rank, world = context.get_world_rank(), context.get_world_size()
    model_cfg = cfg.model
    model_cfg.name_or_path = config["model_uri"]
    processor = load_processor(model_cfg)
    model = apply_lora(load_model(model_cfg), model_cfg.lora)
    train = read_prepared(config["data_uri"], "train", SFT_COLUMNS)
    val = read_prepared(config["data_uri"], "val", SFT_COLUMNS).slice(0, cfg.sft.val_rows)
    global_batch = per_device_batch_size(cfg.sft) * world * cfg.sft.gradient_accumulation_steps
    callbacks = [
        RayTrainReportCallback(),
        MlflowMetricsCallback(config["run_id"] if rank == 0 else None, global_batch),
        *FaultInjectionCallback.from_env(rank),
    ]
    trainer = build_sft_trainer(cfg, model, processor, train, val, str(scratch / "trainer"), callbacks)
    trainer = prepare_trainer(trainer)
    resumed_from = train_with_resume(trainer)
    export_and_report(
        trainer,
        processor,
        lora=model_cfg.lora.enabled,
        scratch=scratch,
        export_uri=config["export_uri"],
        marker={
            "stage": "sft",
            "resumed_from_step": resumed_from,
            "data": config["data_uri"],
            "base_model": config["model_uri"],
            "config_hash": cfg.fingerprint(),
        },
    )
