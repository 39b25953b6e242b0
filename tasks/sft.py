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

from geor_core.config import GeorConfig
from geor_core.data.dataset import read_prepared
from tasks.training_run import TrainingResult, check_training_inputs, launch_training
from tasks.training_worker import finish_worker, setup_worker


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
    from ray.train.huggingface.transformers import prepare_trainer

    from geor_core.training.sft_setup import SFT_COLUMNS, build_sft_trainer

    setup = setup_worker(config, "sft")
    train = read_prepared(config["data_uri"], "train", SFT_COLUMNS)
    val = read_prepared(config["data_uri"], "val", SFT_COLUMNS).slice(0, setup.cfg.sft.val_rows)
    trainer = build_sft_trainer(
        setup.cfg, setup.model, setup.processor, train, val, str(setup.scratch / "trainer"), setup.callbacks
    )
    finish_worker(prepare_trainer(trainer), setup, config, "sft")
