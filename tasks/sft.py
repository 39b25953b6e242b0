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

import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geor_core import uris
from geor_core.config import GeorConfig, build_config
from geor_core.dataset import read_prepared, require_prepared
from geor_core.deepspeed_config import deepspeed_config
from geor_core.errors import UserFacingError
from geor_core.tracking import log_dataset, stage_run, tracking_env
from tasks.training_run import (
    FaultInjectionCallback,
    check_model_source,
    check_resources,
    run_config,
    scaling_config,
    worker_env,
)

MODEL_DIR = "model"


@dataclass
class SftResult:
    export_uri: str
    skipped: bool
    global_step: int
    resumed_from_step: int
    metrics: dict[str, Any]


def check_inputs(cfg: GeorConfig, data_uri: str, model_uri: str) -> dict[str, Any]:
    """Everything that can be wrong before a worker starts; returns the data's marker."""
    marker = require_prepared(data_uri)
    splits = marker.get("stats", marker).get("splits", {})
    if not splits.get("train"):
        raise UserFacingError(
            f"{data_uri} has an empty train split (splits: {splits}); nothing to fine-tune on"
        )
    check_model_source(model_uri)
    check_resources(cfg.sft)
    return marker


def run_sft(
    cfg: GeorConfig, data_uri: str, model_uri: str, output_uri: str, *, overwrite: bool = False
) -> SftResult:
    """Fine-tune ``model_uri`` on the prepared rows at ``data_uri``; export to ``<output_uri>/model``."""
    export_uri = uris.join(output_uri, MODEL_DIR)
    if overwrite:
        uris.remove_tree(output_uri)
    done = uris.read_marker(export_uri)
    if done is not None:
        print(f"geor sft: {export_uri} is complete (step {done.get('global_step')}); skipped")
        return SftResult(export_uri, True, int(done.get("global_step", 0)), 0, done.get("metrics", {}))
    check_inputs(cfg, data_uri, model_uri)
    from ray.train.torch import TorchTrainer

    with stage_run(
        cfg, "sft", training=True, tags={"geor.upstream.data": data_uri, "geor.upstream.model": model_uri}
    ) as run:
        if run is not None:
            import mlflow

            log_dataset(data_uri, "cor-train", "training")
            mlflow.log_dict(deepspeed_config(cfg.sft.zero_stage, cfg.sft.use_gpu), "deepspeed_config.json")
            mlflow.set_tag("geor.export_uri", export_uri)
        loop_config = {
            "cfg": cfg.to_dict(),
            "data_uri": data_uri,
            "model_uri": model_uri,
            "export_uri": export_uri,
            "run_id": run.info.run_id if run is not None else None,
            "env": worker_env(tracking_env(cfg)),
            "scratch": str(Path(tempfile.gettempdir()) / f"geor-sft-{uuid.uuid4().hex[:12]}"),
        }
        trainer = TorchTrainer(
            train_loop_per_worker=sft_worker_loop,
            train_loop_config=loop_config,
            scaling_config=scaling_config(cfg.sft),
            run_config=run_config(
                cfg.sft, output_uri, "sft", metric="eval_loss", mode="min"
            ),
        )
        result = trainer.fit()
        marker = uris.read_marker(export_uri) or {}
        if run is not None:
            import mlflow

            final = {k: v for k, v in result.metrics.items() if isinstance(v, int | float)}
            mlflow.log_metrics({f"final_{k}": float(v) for k, v in final.items()})
    return SftResult(
        export_uri,
        False,
        int(marker.get("global_step", 0)),
        int(marker.get("resumed_from_step", 0)),
        dict(result.metrics),
    )


def sft_worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: build the SFTTrainer, resume from Ray's checkpoint, train, export."""
    import ray.train
    import torch.distributed as dist
    from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer

    from geor_core.models import apply_lora, load_model, load_processor
    from geor_core.sft_setup import SFT_COLUMNS, build_sft_trainer, per_device_batch_size
    from geor_core.train_callbacks import MlflowMetricsCallback

    os.environ.update(config["env"])
    cfg = build_config(config["cfg"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    scratch = Path(config["scratch"])
    if context.get_local_rank() == 0:
        shutil.rmtree(scratch, ignore_errors=True)  # stale checkpoints of a failed attempt
        scratch.mkdir(parents=True)
    if dist.is_initialized():
        dist.barrier()

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

    checkpoint = ray.train.get_checkpoint()
    resumed_from = 0
    if checkpoint is None:
        trainer.train()
    else:
        with checkpoint.as_directory() as directory:
            hf_checkpoint = os.path.join(directory, RayTrainReportCallback.CHECKPOINT_NAME)
            resumed_from = _checkpoint_step(hf_checkpoint)
            trainer.train(resume_from_checkpoint=hf_checkpoint)

    export_dir = scratch / "export"
    if model_cfg.lora.enabled:  # merged into the base weights, so plain transformers loads it
        if rank == 0:
            trainer.model.merge_and_unload().save_pretrained(export_dir, safe_serialization=True)
    else:
        trainer.save_model(str(export_dir))  # collective: gathers ZeRO-3 shards onto rank 0
    if rank == 0:
        processor.save_pretrained(str(export_dir))
        from geor_core.export import publish_model_dir

        publish_model_dir(
            export_dir,
            config["export_uri"],
            {
                "stage": "sft",
                "global_step": trainer.state.global_step,
                "resumed_from_step": resumed_from,
                "data": config["data_uri"],
                "base_model": config["model_uri"],
                "config_hash": cfg.fingerprint(),
                "metrics": _last_metrics(trainer.state.log_history),
                "losses": [[e["step"], e["loss"]] for e in trainer.state.log_history if "loss" in e],
            },
        )
    if dist.is_initialized():
        dist.barrier()
    ray.train.report({"global_step": trainer.state.global_step, "resumed_from_step": resumed_from})
    if context.get_local_rank() == 0:
        shutil.rmtree(scratch, ignore_errors=True)


def _checkpoint_step(hf_checkpoint: str) -> int:
    state = Path(hf_checkpoint) / "trainer_state.json"
    return int(json.loads(state.read_text()).get("global_step", 0)) if state.is_file() else 0


def _last_metrics(log_history: list[dict[str, Any]]) -> dict[str, float]:
    merged: dict[str, float] = {}
    for entry in log_history:
        merged.update({k: float(v) for k, v in entry.items() if isinstance(v, int | float)})
    return merged
