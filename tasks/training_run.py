"""The driver side of the Ray Train stages (SFT, GRPO): checks made before any worker starts,
scaling and run configs, the training rows as a Ray Dataset, and the launch inside the stage's
MLflow run (see training_worker for what each worker does).

A large SFT train split reaches the workers as a Ray Dataset (``read_split``; tasks/sft.py says
when), never as a table each worker reads whole: ``ray.data.read_parquet`` over the prepared
output's ``data/`` files (local or ``s3://``, through ``uris.pyarrow_filesystem``), its split
filter and columns pushed down to the scan. Its read tasks ask for no CPU: they move a few hundred bytes of text a row, and
a Train worker group may hold every CPU of the cluster (two 1-CPU workers on 2 CPUs), where a
1-CPU read task would never be scheduled and training would wait forever. For the same reason it
uses Ray Data's first Parquet reader (``use_datasource_v2`` off for this read only): the second
lists the files in a 1-CPU task of its own, which took 20 s to 2 min to get a worker on the
2-core machine (the first reader lists on the driver, 0.2 s for the test world)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geor_core import uris
from geor_core.config import GeorConfig, TrainingConfig
from geor_core.data.cor_rows import OUTPUT_SCHEMA
from geor_core.data.dataset import DATA_DIR, parquet_files, require_prepared
from geor_core.errors import UserFacingError
from geor_core.ownership import check_output, claim_output
from geor_core.registry.dataset_inputs import log_dataset
from geor_core.registry.tracking import stage_run, tracking_env
from geor_core.training.deepspeed_config import deepspeed_config
from geor_core.training.model_loading import resolve_source
from tasks.parquet_read import read_files
from tasks.ray_session import start_train_coordinator
from tasks.training_worker import FAULT_STEP_ENV

RAY_DIR = "ray"  # Ray Train's storage: <output>/ray/<stage>/
# Ray Train's controller polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (Ray's default
# 2 s) and notices a finished run up to two polls late: about 4 s of every fit. 0.5 s costs one
# cheap remote call per worker per poll (benchmarks/train_fixed_cost.py). A value set in the
# environment wins; the trainer passes it on to the controller it starts.
POLL_INTERVAL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
TRAIN_POLL_INTERVAL_S = 0.5
SYSTEM_METRICS_ENV_PREFIX = "MLFLOW_SYSTEM_METRICS_"


def scaling_config(stage: TrainingConfig, resources: dict[str, float] | None = None) -> Any:
    """The worker group: ``num_workers`` of ``cpus_per_worker`` CPUs (and a GPU each with
    ``use_gpu``), plus the custom ``resources`` each worker requires (``cluster.worker_resources``)."""
    from ray.train import ScalingConfig

    return ScalingConfig(
        num_workers=stage.num_workers,
        use_gpu=stage.use_gpu,
        resources_per_worker={
            "CPU": stage.cpus_per_worker,
            **({"GPU": 1} if stage.use_gpu else {}),
            **(resources or {}),
        },
    )


def worker_env(tracking: dict[str, str]) -> dict[str, str]:
    """Variables each Ray Train worker sets first thing (``os.environ.update``): the tracking
    variables, MLflow's system-metrics settings (``MLFLOW_SYSTEM_METRICS_*``: rank 0 logs them) and
    the fault-injection spec when the driver has them. Ray workers are started by the raylet, so the
    driver's own environment does not reach them."""
    env = dict(tracking)
    if tracking:
        env |= {k: v for k, v in os.environ.items() if k.startswith(SYSTEM_METRICS_ENV_PREFIX)}
    if os.environ.get(FAULT_STEP_ENV):
        env[FAULT_STEP_ENV] = os.environ[FAULT_STEP_ENV]
    return env


def run_config(
    stage: TrainingConfig,
    output_uri: str,
    name: str,
    *,
    metric: str,
    mode: str,
    callbacks: list | None = None,
) -> Any:
    """Storage under ``<output>/ray`` (local or s3), the retry budget, checkpoint retention and
    extra Ray Train callbacks (a sweep trial's Tune reporter)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    fs, path = uris.pyarrow_filesystem(uris.join(output_uri, RAY_DIR))
    if not uris.is_s3(output_uri):
        path = str(Path(path).resolve())
    return RunConfig(
        name=name,
        storage_path=path,
        storage_filesystem=fs if uris.is_s3(output_uri) else None,
        failure_config=FailureConfig(max_failures=stage.max_failures),
        checkpoint_config=CheckpointConfig(
            num_to_keep=stage.save_total_limit, checkpoint_score_attribute=metric, checkpoint_score_order=mode
        ),
        callbacks=callbacks,
    )


def check_model_source(model_uri: str) -> None:
    """A clear error now, not in a worker, when the model cannot be found."""
    if not model_uri:
        raise UserFacingError(
            "no model given: pass --model URI (a local dir, s3:// prefix, hub id or models:/NAME@ALIAS)"
        )
    if model_uri.startswith("models:/"):
        return
    if uris.is_s3(model_uri) or model_uri.startswith(("/", ".", "~")) or os.path.exists(model_uri):
        if not uris.exists(uris.join(model_uri, "config.json")):
            raise UserFacingError(
                f"model {model_uri} has no config.json: not a Hugging Face model directory "
                "(build one with `geor make-tiny-model --output DIR`)"
            )
        return
    resolve_source(model_uri)  # a hub id: fails clearly when offline and not cached


def check_resources(stage: TrainingConfig, resources: dict[str, float] | None = None) -> None:
    """The cluster can host the worker group, custom ``resources`` per worker included (otherwise
    Ray would wait forever)."""
    import ray

    from tasks.ray_session import check_custom_resources, connect_ray

    connect_ray()
    total = ray.cluster_resources()
    check_custom_resources(total, resources, stage.num_workers, f"per worker for {stage.num_workers} workers")
    need_cpu = stage.num_workers * stage.cpus_per_worker
    if need_cpu > total.get("CPU", 0):
        raise UserFacingError(
            f"{stage.num_workers} workers x {stage.cpus_per_worker} CPUs = {need_cpu} CPUs, but the cluster has "
            f"{total.get('CPU', 0)}; lower num_workers or cpus_per_worker"
        )
    if stage.use_gpu and stage.num_workers > total.get("GPU", 0):
        raise UserFacingError(
            f"use_gpu=true with {stage.num_workers} workers needs {stage.num_workers} GPUs; the cluster has "
            f"{int(total.get('GPU', 0))}"
        )


MODEL_DIR = "model"


def read_split(data_uri: str, split: str, columns: list[str]) -> Any:
    """A Ray Dataset of one split of a complete prepared output (``columns`` only), its files in
    their sorted order (module docstring)."""
    from ray.data.expressions import col

    fs, files = parquet_files(uris.join(data_uri, DATA_DIR))
    dataset = read_files(files, fs)  # one read task per file (tasks/parquet_read.py)
    return dataset.filter(expr=col("split") == split).select_columns(columns)


def split_rows(marker: dict[str, Any], split: str) -> int:
    """Rows of ``split`` in a complete prepared output, from its marker's statistics."""
    return int(marker.get("stats", marker).get("splits", {}).get(split, 0))


@dataclass
class TrainData:
    """What a stage's driver hands its TorchTrainer: the Ray Datasets and their DataConfig, and
    entries for the workers' loop config (row counts, step counts they derive from the split)."""

    datasets: dict[str, Any]
    dataset_config: Any
    loop: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainingResult:
    """What a training stage produced: the HF export and how the run went."""

    export_uri: str
    skipped: bool
    global_step: int
    resumed_from_step: int
    metrics: dict[str, Any]


def check_training_inputs(cfg: GeorConfig, stage: str, data_uri: str, model_uri: str) -> dict[str, Any]:
    """Everything that can be wrong before a worker starts; returns the data's marker."""
    marker = require_prepared(data_uri)
    splits = marker.get("stats", marker).get("splits", {})
    if not splits.get("train"):
        raise UserFacingError(f"{data_uri} has an empty train split (splits: {splits}); nothing to train on")
    check_model_source(model_uri)
    check_resources(getattr(cfg, stage), cfg.cluster.worker_resources)
    return marker


def launch_training(
    cfg: GeorConfig,
    stage: str,
    worker_loop: Any,
    data_uri: str,
    model_uri: str,
    output_uri: str,
    *,
    metric: str,
    mode: str,
    overwrite: bool = False,
    callbacks: list | None = None,
    log_model: bool = True,
    train_data: Callable[[dict[str, Any]], TrainData] | None = None,
) -> TrainingResult:
    """Run ``worker_loop`` on a Ray Train TorchTrainer for ``stage`` ("sft" or "grpo"), inside the
    stage's MLflow run; skip when ``<output>/model`` is complete; resume when checkpoints exist.
    When tracked, the export is logged as that run's MLflow model and its marker records the model
    (``uris.MARKER_MODEL_URI``, ``MARKER_MODEL_ID``, ``MARKER_RUN_ID``; geor_core.training.served_model).
    The output is checked before Ray starts and claimed for the stage after the inputs are
    (geor_core/ownership.py: refused when geor did not write it, or when it is or holds the data or
    the model); ``overwrite`` then deletes only what the stage writes there (``ray/``, ``model/``).
    ``callbacks``: extra Ray Train callbacks for the RunConfig (a sweep trial's Tune reporter).
    ``log_model``: False for a sweep trial, whose export is exploration, not a candidate.
    ``train_data``: called with the data's marker once the inputs are checked (Ray is up then), the
    datasets the workers stream their rows from."""
    export_uri = uris.join(output_uri, MODEL_DIR)
    ownership = {
        "inputs": {"data": data_uri, "model": model_uri},
        "legacy": (f"{MODEL_DIR}/{uris.MARKER_NAME}", f"{RAY_DIR}/{stage}"),
    }
    check_output(output_uri, stage, **ownership)
    done = None if overwrite else uris.read_marker(export_uri)
    if done is not None:
        print(f"geor {stage}: {export_uri} is complete (step {done.get('global_step')}); skipped")
        return TrainingResult(export_uri, True, int(done.get("global_step", 0)), 0, done.get("metrics", {}))
    data_marker = check_training_inputs(cfg, stage, data_uri, model_uri)
    owned = claim_output(output_uri, stage, **ownership)
    if overwrite:
        owned.remove(MODEL_DIR, RAY_DIR)
    from ray.train.torch import TorchTrainer

    settings = getattr(cfg, stage)
    tags = {"geor.upstream.data": data_uri, "geor.upstream.model": model_uri, "geor.export_uri": export_uri}
    inputs = {"model": model_uri, "data": data_uri}
    with stage_run(cfg, stage, tags=tags, inputs=inputs, output=export_uri) as run:
        if run is not None:
            import mlflow

            log_dataset(data_uri, f"{stage}-data", "training", OUTPUT_SCHEMA)
            mlflow.log_dict(deepspeed_config(settings.zero_stage, settings.use_gpu), "deepspeed_config.json")
        loop_config = {
            "cfg": cfg.to_dict(),
            "data_uri": data_uri,
            "model_uri": model_uri,
            "export_uri": export_uri,
            "run_id": run.info.run_id if run is not None else None,
            "env": worker_env(tracking_env(cfg)),
            # a folder name: each node's workers make it in their own temp dir, never the driver's
            "scratch": f"geor-{stage}-{uuid.uuid4().hex[:12]}",
        }
        data = train_data(data_marker) if train_data is not None else None
        if data is not None:
            loop_config |= data.loop
        os.environ.setdefault(POLL_INTERVAL_ENV, str(TRAIN_POLL_INTERVAL_S))
        trainer = TorchTrainer(
            train_loop_per_worker=worker_loop,
            train_loop_config=loop_config,
            datasets=(data.datasets or None) if data is not None else None,
            dataset_config=data.dataset_config if data is not None else None,
            scaling_config=scaling_config(settings, cfg.cluster.worker_resources),
            run_config=run_config(settings, output_uri, stage, metric=metric, mode=mode, callbacks=callbacks),
        )
        start_train_coordinator()
        result = trainer.fit()
        marker = uris.read_marker(export_uri) or {}
        if run is not None and marker and log_model:  # the export as the run's MLflow model, in its marker
            from geor_core.training.served_model import log_export

            marker = {**marker, **log_export(cfg, export_uri, stage)}
            uris.write_marker(export_uri, marker)
        if run is not None and result.checkpoint is not None:
            import mlflow

            mlflow.set_tag("geor.last_checkpoint", result.checkpoint.path)
    return TrainingResult(
        export_uri,
        False,
        int(marker.get("global_step", 0)),
        int(marker.get("resumed_from_step", 0)),
        dict(marker.get("metrics", {})),
    )
