"""GRPO with Haversine rewards: a Ray Train TorchTrainer whose workers run TRL's GRPOTrainer with
DeepSpeed, rewarded by a pool of Ray reward actors (tasks/reward_actors.py).

Choices:
- Everything GRPO is TRL's (geor_core/training/grpo_setup.py builds it); this module adds the Ray parts:
  each worker owns a small pool of reward actors (fractional CPUs, gazetteer loaded once each),
  and every batch of completions is scored there in one call returning every component.
- Starts from an SFT export or any model URI; ``beta = 0`` loads no reference model (TRL).
- Checkpoints, resume, export and MLflow exactly as SFT (tasks/training_run.py); checkpoints are
  ranked by ``eval_reward`` on the fixed val subset (``grpo.val_rows`` rows).
- A worker holds exactly the training rows the run will consume, not the split. TRL's
  GRPOTrainer needs every rank to hold the SAME map-style dataset (its RepeatSampler indexes one
  global dataset, and a prompt's G completions can span ranks), so the rows are not split per
  worker, and Ray Data has nothing to add here (it would only start its processes, about 30 s of
  every run on 2 cores): the driver counts K, the prompts ``max_steps`` steps draw
  (``grpo_train_rows``: TRL's GRPOConfig arithmetic, capped by the split; the whole split when
  the run is epoch-based), and each worker streams the train rows (only ``grpo.train_groups``
  when set) from storage in batches and keeps a seeded uniform sample of K of them
  (geor_core/data/row_sample.py: the K smallest hashes of the ids, the same sample on every rank
  whatever the order it reads in). Each worker checks a digest of its ids against every other
  rank's, and K against the built trainer's own GRPOConfig. TRL's sampler then draws those K
  rows, each once, in its seeded order: K rows drawn from the whole split, as before, without
  holding the split.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pyarrow as pa

from geor_core.config import GeorConfig
from geor_core.data.dataset import group_counts, head_prepared, iter_prepared, read_prepared
from geor_core.data.row_sample import sample_rows
from geor_core.errors import UserFacingError
from tasks.training_run import TrainData, TrainingResult, launch_training, split_rows
from tasks.training_worker import finish_worker, setup_worker

SAMPLE_BATCH_ROWS = 4096  # rows a worker reads at a time while sampling its K rows


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
    group_rows = train_group_rows(cfg, data_uri)
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
        train_data=lambda marker: grpo_train_data(
            cfg, split_rows(marker, "train") if group_rows is None else group_rows
        ),
    )


def grpo_train_data(cfg: GeorConfig, rows: int) -> TrainData:
    """No dataset for Ray Train: the rows each worker keeps (K) of the ``rows`` it may draw from,
    counted on the driver (module docstring)."""
    from geor_core.training.grpo_setup import grpo_train_rows

    return TrainData({}, None, {"train_rows": grpo_train_rows(cfg, rows), "train_split_rows": rows})


def held_rows(cfg: GeorConfig, data_uri: str, keep: int, split: int) -> pa.Table:
    """The K training rows a worker holds: the whole split when the run draws all of it, else a
    seeded uniform sample of K rows streamed from the split (geor_core/data/row_sample.py)."""
    from geor_core.training.grpo_setup import GRPO_COLUMNS

    groups = cfg.grpo.train_groups
    if keep >= split:
        return read_prepared(data_uri, "train", GRPO_COLUMNS, groups)
    batches = iter_prepared(data_uri, "train", GRPO_COLUMNS, groups, batch_rows=SAMPLE_BATCH_ROWS)
    return sample_rows(batches, keep, cfg.grpo.seed)


def check_same_rows(table: pa.Table) -> None:
    """Every rank holds the same ids in the same order (TRL's sampler indexes one global dataset)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    digest = hashlib.sha256("\n".join(table.column("id").to_pylist()).encode()).hexdigest()
    digests: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest)
    if len(set(digests)) != 1:
        raise RuntimeError(f"the ranks hold different GRPO training rows (digests by rank: {digests})")


def train_group_rows(cfg: GeorConfig, data_uri: str) -> int | None:
    """The training rows in ``grpo.train_groups`` (None when unset: the whole split); a
    UserFacingError naming the groups the data has when there are none."""
    groups = cfg.grpo.train_groups
    if not groups:
        return None
    found = group_counts(data_uri, "train")
    rows = sum(n for group, n in found.items() if group in groups)
    if not rows:
        raise UserFacingError(
            f"grpo.train_groups={groups}: no training row of {data_uri} is in those groups "
            f"(rows by group: {found}; a group column comes from prepare.group_col)"
        )
    return rows


def grpo_worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: its reward actors, the GRPOTrainer, resume, train, export."""
    from ray.train.huggingface.transformers import prepare_trainer

    from geor_core.training.greedy_validation import GreedyValidationCallback
    from geor_core.training.grpo_setup import GRPO_COLUMNS, build_grpo_trainer, trainer_rows_consumed
    from tasks.reward_actors import RewardActorPool

    setup = setup_worker(config, "grpo")
    cfg = setup.cfg
    train = held_rows(cfg, config["data_uri"], config["train_rows"], config["train_split_rows"])
    check_same_rows(train)
    val = head_prepared(config["data_uri"], "val", GRPO_COLUMNS, cfg.grpo.val_rows)
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
    needed = trainer_rows_consumed(trainer.args, config["train_split_rows"])
    if needed != train.num_rows:
        raise RuntimeError(f"GRPO holds {train.num_rows} training rows, but its trainer will draw {needed}")
    try:
        finish_worker(
            prepare_trainer(trainer),
            setup,
            config,
            "grpo",
            lambda: {
                "train_rows": train.num_rows,
                "train_split_rows": config["train_split_rows"],
                "reward_pool": pool.stats(),
                "reward_seconds": board.seconds,
                "ref_model_loaded": getattr(trainer, "ref_model", None) is not None,
            },
        )
    finally:
        pool.close()
