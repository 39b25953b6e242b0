"""Build TRL's SFTTrainer for Chain-of-Region rows, Ray-free.

The same construction runs inside each Ray Train worker (tasks/sft.py) and bare in one process
(benchmarks/sft.py), so the two measure the same work. Choices:

- Rows come from a `geor prepare` output as an Arrow table of id, image URI and CoR target (text
  only, a few hundred bytes a row); images are decoded per batch by a dataset transform, straight
  down to ``model.max_pixels`` (geor_core.data.images), never held in memory. A photo over
  ``model.max_image_pixels`` ends training with an error naming it, as a missing photo does.
  TRL sees a vision dataset (an ``image`` column), skips its own preprocessing and collates
  prompt + completion through the processor, with loss on the completion only.
- Activation (gradient) checkpointing is off (TRL turns it on by default; 25% slower on CPU,
  docs/design.md).
- DeepSpeed from ``deepspeed_config``; fp32 on CPU, bf16 on GPU. Nothing is reported to
  MLflow by the Trainer itself (``report_to="none"``): the caller adds its own rank-0 callback.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import pyarrow as pa

from geor_core.config import GeorConfig, ModelConfig, TrainingConfig
from geor_core.data.images import load_image
from geor_core.geo.prompts import assistant_turn, user_turn
from geor_core.training.deepspeed_config import deepspeed_config

SFT_COLUMNS = ["id", "image", "target"]


def per_device_batch_size(stage: TrainingConfig) -> int:
    """Rows per worker per micro-step: ``global_batch_size / (workers x accumulation)`` when a
    global batch is set, else ``per_device_batch_size``."""
    if not stage.global_batch_size:
        return stage.per_device_batch_size
    return stage.global_batch_size // (stage.num_workers * stage.gradient_accumulation_steps)


def _examples(batch: dict[str, list], model: ModelConfig) -> dict[str, list]:
    return {
        "prompt": [user_turn() for _ in batch["target"]],
        "completion": [assistant_turn(text) for text in batch["target"]],
        "image": [load_image(uri, model) for uri in batch["image"]],
    }


def sft_dataset(table: pa.Table, model: ModelConfig) -> Any:
    """A map-style dataset over ``table`` (id, image URI, target) whose rows decode their image on
    access, straight down to ``model.max_pixels`` (geor_core.data.images)."""
    import datasets

    dataset = datasets.Dataset(table.select(SFT_COLUMNS))
    dataset.set_transform(partial(_examples, model=model))
    return dataset


def trainer_arguments(stage: TrainingConfig, output_dir: str, *, has_eval: bool) -> dict[str, Any]:
    """The Hugging Face Trainer arguments SFT and GRPO share, from a stage section."""
    batch = per_device_batch_size(stage)
    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=batch,
        per_device_eval_batch_size=batch,
        gradient_accumulation_steps=stage.gradient_accumulation_steps,
        learning_rate=stage.learning_rate,
        weight_decay=stage.weight_decay,
        warmup_steps=stage.warmup_ratio,
        lr_scheduler_type=stage.lr_scheduler_type,
        num_train_epochs=stage.num_epochs,
        max_steps=stage.max_steps,
        logging_steps=stage.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=stage.eval_steps,
        save_strategy="steps",
        save_steps=stage.save_steps,
        save_total_limit=stage.save_total_limit,
        seed=stage.seed,
        data_seed=stage.seed,
        use_cpu=not stage.use_gpu,
        bf16=stage.use_gpu,
        deepspeed=deepspeed_config(stage.zero_stage, stage.use_gpu),
        report_to="none",
        activation_checkpointing=False,  # its old name, gradient_checkpointing, warns in every worker
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,  # the console is train_callbacks.ConsoleCallback's: bar and compact lines
    )


def sft_arguments(cfg: GeorConfig, output_dir: str, *, has_eval: bool) -> Any:
    """TRL SFTConfig from the ``sft`` section: loss on the completion only, no truncation."""
    from trl import SFTConfig

    return SFTConfig(
        **trainer_arguments(cfg.sft, output_dir, has_eval=has_eval),
        completion_only_loss=True,
        max_length=None,
    )


def build_sft_trainer(
    cfg: GeorConfig,
    model: Any,
    processor: Any,
    train_table: pa.Table,
    eval_table: pa.Table | None,
    output_dir: str,
    callbacks: list | None = None,
) -> Any:
    """TRL's SFTTrainer over prepared CoR rows; ``model`` may carry LoRA adapters already."""
    from trl import SFTTrainer

    has_eval = eval_table is not None and eval_table.num_rows > 0
    return SFTTrainer(
        model=model,
        args=sft_arguments(cfg, output_dir, has_eval=has_eval),
        train_dataset=sft_dataset(train_table, cfg.model),
        eval_dataset=sft_dataset(eval_table, cfg.model) if has_eval else None,
        processing_class=processor,
        callbacks=callbacks or [],
    )
