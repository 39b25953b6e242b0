"""Supervised fine-tuning on Chain-of-Region rows: a Ray Train TorchTrainer whose workers run
TRL's SFTTrainer with DeepSpeed (ZeRO 0/2/3; gloo + fp32 on CPU, bf16 on GPU).

Choices:
- Ray's own transformers integration: ``prepare_trainer`` and ``RayTrainReportCallback``, which
  hands every Trainer/DeepSpeed checkpoint (optimizer state included) to Ray Train's storage
  under ``<output>/ray``; Ray keeps the best ``save_total_limit`` by val loss and always the latest.
- A large train split (more than ``sft.stream_rows_above`` rows, 100k by default) is never held
  by a worker: the driver passes it as a Ray Dataset split across the workers (``DataConfig(datasets_to_split=["train"])``, equal shares), and each worker feeds TRL
  from ``get_dataset_shard("train").iter_torch_batches``, which ``prepare_trainer`` recognises
  and wraps in the Trainer's DataLoader. The val subset (the split's first ``sft.val_rows``
  rows, read no further than needed) stays a map-style dataset; the trainer is built over it
  (TRL wants a ``datasets.Dataset`` and peeks at its first row) and then given the stream as
  ``train_dataset``.
- A smaller split each worker reads whole (text rows, a few hundred bytes each: 30 MB at 100k)
  into a map-style dataset whose images decode on access. Streaming starts Ray Data's own
  processes (a split coordinator, read tasks), about 30 s of every run on a 2-core machine
  (docs/benchmarks.md, "Training ingest"), which a small split does not repay.
- Images are decoded in the batch's collate function, which Ray runs on its prefetch threads
  (``PREFETCH_BATCHES`` ahead of the step), not in a ``map_batches`` stage: the collate needs the
  trainer's processor and TRL's collator (so the loss masking stays TRL's), and a Ray Data stage
  would need CPUs of its own beside the Train workers' and ship decoded pixels through the object
  store, where the thread costs the worker nothing but the batch it prepares.
- Order is seeded, never a full shuffle (memory): the files' blocks in an order drawn from
  ``sft.seed`` (``randomize_block_order``), then a local shuffle buffer of
  ``SHUFFLE_BUFFER_ROWS`` text rows seeded by ``sft.seed`` too; each pass repeats that order.
- A stream has no length: with ``sft.max_steps <= 0`` the driver counts the steps of
  ``num_epochs`` passes from the split's row count in the prepared marker
  (``streamed_max_steps``: each worker's equal share in per-device batches, accumulated), and the
  Trainer re-iterates the stream for every further pass.
- Fault tolerance is Ray's: ``FailureConfig(max_failures)`` restarts the worker group, and each
  worker resumes from ``ray.train.get_checkpoint()``; the Trainer skips the batches already
  trained by iterating past them. Re-running the command after a killed driver finds the same
  run (same name and storage path) and resumes too.
- The final model is exported in Hugging Face format to ``<output>/model`` (gathered under
  ZeRO-3) with a completion marker; a re-run over a complete export is a no-op.
- Only rank 0 logs to MLflow, once per ``logging_steps``, into the driver's stage run.
"""

from __future__ import annotations

import resource
from typing import Any

from geor_core.config import GeorConfig
from geor_core.data.dataset import head_prepared, read_prepared
from tasks.training_run import (
    TrainData,
    TrainingResult,
    check_training_inputs,
    launch_training,
    read_split,
    split_rows,
)
from tasks.training_worker import finish_worker, setup_worker

SHUFFLE_BUFFER_ROWS = 2048  # text rows (id, image URI, target): well under a megabyte
PREFETCH_BATCHES = 2  # batches collated (images decoded) ahead of the step, on Ray's threads


def check_inputs(cfg: GeorConfig, data_uri: str, model_uri: str) -> dict[str, Any]:
    """Everything that can be wrong before a worker starts; returns the data's marker."""
    return check_training_inputs(cfg, "sft", data_uri, model_uri)


def sft_train_data(cfg: GeorConfig, data_uri: str, marker: dict[str, Any]) -> TrainData:
    """The train split as a Ray Dataset split across the workers, in a seeded block order, and the
    step count of the run; or, for a split of at most ``sft.stream_rows_above`` rows, no dataset:
    each worker reads it whole (module docstring)."""
    from ray.train import DataConfig

    from geor_core.training.sft_setup import SFT_COLUMNS, streamed_max_steps

    rows = split_rows(marker, "train")
    if rows <= cfg.sft.stream_rows_above:
        return TrainData({}, None, {"stream": False, "train_split_rows": rows})
    dataset = read_split(data_uri, "train", SFT_COLUMNS).randomize_block_order(seed=cfg.sft.seed)
    return TrainData(
        {"train": dataset},
        DataConfig(datasets_to_split=["train"]),
        {"stream": True, "max_steps": streamed_max_steps(cfg.sft, rows), "train_split_rows": rows},
    )


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
        train_data=lambda marker: sft_train_data(cfg, data_uri, marker),
    )


def ray_collate(collate: Any) -> Any:
    """``collate`` (a batch of numpy columns -> tensors) as the collate class Ray Data takes."""
    from ray.data.collate_fn import NumpyBatchCollateFn

    class _Collate(NumpyBatchCollateFn):
        def __call__(self, batch: dict) -> Any:
            return collate(batch)

    return _Collate()


def sft_worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: build the SFTTrainer (over its shard of the train split as a stream,
    or over the split read whole), resume from Ray's checkpoint, train, export."""
    import ray.train
    from ray.train.huggingface.transformers import prepare_trainer

    from geor_core.training.sft_setup import (
        SFT_COLUMNS,
        StreamCollate,
        build_sft_trainer,
        per_device_batch_size,
    )

    setup = setup_worker(config, "sft")
    cfg = setup.cfg
    val = head_prepared(config["data_uri"], "val", SFT_COLUMNS, cfg.sft.val_rows)
    stream = config["stream"]
    train = None if stream else read_prepared(config["data_uri"], "train", SFT_COLUMNS)
    trainer = build_sft_trainer(
        cfg,
        setup.model,
        setup.processor,
        train,
        val,
        str(setup.scratch / "trainer"),
        setup.callbacks,
        max_steps=config.get("max_steps"),
    )
    collate = StreamCollate(trainer, cfg.model) if stream else None
    if collate is not None:
        trainer.train_dataset = ray.train.get_dataset_shard("train").iter_torch_batches(
            batch_size=per_device_batch_size(cfg.sft),
            collate_fn=ray_collate(collate),
            prefetch_batches=PREFETCH_BATCHES,
            local_shuffle_buffer_size=SHUFFLE_BUFFER_ROWS,
            local_shuffle_seed=cfg.sft.seed,
        )
    finish_worker(
        prepare_trainer(trainer),
        setup,
        config,
        "sft",
        lambda: {
            "train_streamed": stream,
            "train_rows_held": collate.rows if collate is not None else train.num_rows,
            "train_split_rows": config["train_split_rows"],
            "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        },
    )
