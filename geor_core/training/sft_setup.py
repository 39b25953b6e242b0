"""Build TRL's SFTTrainer for Chain-of-Region rows, Ray-free.

The same construction runs inside each Ray Train worker (tasks/sft.py) and bare in one process
(benchmarks/sft.py), so the two measure the same work. Choices:

- Rows are id, image URI and CoR target (text only, a few hundred bytes a row). Bare (the
  benchmarks) they are an Arrow table whose images a dataset transform decodes per batch. On Ray
  Train (tasks/sft.py) the trainer is built over a small map-style dataset (the val rows, or a
  one-row placeholder: TRL peeks at its first row to see an ``image``) and the worker then swaps
  in its stream of collated batches; ``StreamCollate`` turns a batch of rows into TRL's own
  vision collation, so the loss masking stays TRL's either way. Images are decoded straight down
  to ``model.max_pixels`` (geor_core.data.images), never held beyond their batch. A photo over
  ``model.max_image_pixels`` ends training with an error naming it, as a missing photo does.
- With a stream there is no length, so ``streamed_max_steps`` turns ``num_epochs`` into steps
  the way the Trainer does for a map-style split: each of the workers' equal shares
  (``rows // workers``) in batches of ``per_device_batch_size``, ``gradient_accumulation_steps``
  batches an optimizer step, times ``num_epochs``, rounded up.
- Activation (gradient) checkpointing is off (TRL turns it on by default; 25% slower on CPU,
  docs/design.md).
- DeepSpeed from ``deepspeed_config``; fp32 on CPU, bf16 on GPU. Nothing is reported to
  MLflow by the Trainer itself (``report_to="none"``): the caller adds its own rank-0 callback.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
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


def streamed_max_steps(stage: TrainingConfig, train_rows: int) -> int:
    """``stage.max_steps`` when set, else the optimizer steps of ``num_epochs`` passes over a
    ``train_rows`` split streamed in equal shares to ``num_workers`` workers (module docstring)."""
    if stage.max_steps > 0:
        return stage.max_steps
    batches = math.ceil(max(train_rows // stage.num_workers, 1) / per_device_batch_size(stage))
    return max(math.ceil(stage.num_epochs * math.ceil(batches / stage.gradient_accumulation_steps)), 1)


def placeholder_dataset() -> Any:
    """One in-memory example (a blank image), for building the trainer when there are no val rows:
    TRL's SFTTrainer wants a ``datasets.Dataset`` and peeks at its first row. Never trained on."""
    import datasets
    from PIL import Image

    rows = {
        "prompt": [user_turn()],
        "completion": [assistant_turn("")],
        "image": [Image.new("RGB", (28, 28))],
    }
    return datasets.Dataset.from_dict(rows)


def _locked(collate: Any, lock: threading.Lock) -> Any:
    def collate_locked(examples: list[dict[str, Any]]) -> Any:
        with lock:
            return collate(examples)

    return collate_locked


class StreamCollate:
    """A batch of streamed rows (column -> values, e.g. Ray Data's numpy batch of image URI and
    target) -> the tensors of TRL's own data collator. Images are decoded here, outside any lock,
    so the caller's prefetch thread does it ahead of the step; the collator itself runs under a
    lock that the trainer's own collator (its eval batches, on the main thread) shares, because a
    fast tokenizer must not be entered by two threads at once. ``rows``: the rows it collated."""

    def __init__(self, trainer: Any, model: ModelConfig) -> None:
        self.model = model
        self.lock = threading.Lock()
        self.collator = trainer.data_collator
        self.rows = 0
        trainer.data_collator = _locked(self.collator, self.lock)

    def __call__(self, batch: Mapping[str, Sequence]) -> Any:
        columns = _examples({"target": list(batch["target"]), "image": list(batch["image"])}, self.model)
        examples = [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]
        with self.lock:
            self.rows += len(examples)
            return self.collator(examples)


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


def sft_arguments(cfg: GeorConfig, output_dir: str, *, has_eval: bool, max_steps: int | None = None) -> Any:
    """TRL SFTConfig from the ``sft`` section: loss on the completion only, no truncation;
    ``max_steps`` replaces ``sft.max_steps`` (a streamed split's, from ``streamed_max_steps``)."""
    from trl import SFTConfig

    arguments = trainer_arguments(cfg.sft, output_dir, has_eval=has_eval)
    if max_steps is not None:
        arguments["max_steps"] = max_steps
    return SFTConfig(
        **arguments,
        completion_only_loss=True,
        max_length=None,
    )


def build_sft_trainer(
    cfg: GeorConfig,
    model: Any,
    processor: Any,
    train_table: pa.Table | None,
    eval_table: pa.Table | None,
    output_dir: str,
    callbacks: list | None = None,
    *,
    max_steps: int | None = None,
) -> Any:
    """TRL's SFTTrainer over prepared CoR rows; ``model`` may carry LoRA adapters already.
    ``train_table=None``: built over the val rows (or a placeholder) for a caller that then sets
    ``train_dataset`` to its stream, with ``max_steps`` (a stream has no length)."""
    from trl import SFTTrainer

    has_eval = eval_table is not None and eval_table.num_rows > 0
    eval_dataset = sft_dataset(eval_table, cfg.model) if has_eval else None
    if train_table is not None:
        train_dataset = sft_dataset(train_table, cfg.model)
    else:
        train_dataset = eval_dataset if eval_dataset is not None else placeholder_dataset()
    return SFTTrainer(
        model=model,
        args=sft_arguments(cfg, output_dir, has_eval=has_eval, max_steps=max_steps),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        callbacks=callbacks or [],
    )
