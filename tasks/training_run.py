"""What the Ray Train stages (SFT, GRPO) share: scaling and run configs, checks made before any
worker starts, and a fault-injection hook for testing recovery."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from geor_core import uris
from geor_core.config import TrainingConfig
from geor_core.errors import UserFacingError
from geor_core.models import resolve_source

FAULT_STEP_ENV = "GEOR_FAULT_KILL_AT_STEP"  # "STEP:RANK:FLAG_FILE": exit once at STEP on RANK


def scaling_config(stage: TrainingConfig) -> Any:
    from ray.train import ScalingConfig

    return ScalingConfig(
        num_workers=stage.num_workers,
        use_gpu=stage.use_gpu,
        resources_per_worker={"CPU": stage.cpus_per_worker, **({"GPU": 1} if stage.use_gpu else {})},
    )


def worker_env(tracking: dict[str, str]) -> dict[str, str]:
    """Variables each Ray Train worker sets first thing (``os.environ.update``): the tracking
    variables, and the fault-injection spec when the driver has one. Ray workers are started by the
    raylet, so the driver's own environment does not reach them."""
    env = dict(tracking)
    if os.environ.get(FAULT_STEP_ENV):
        env[FAULT_STEP_ENV] = os.environ[FAULT_STEP_ENV]
    return env


def run_config(stage: TrainingConfig, output_uri: str, name: str, *, metric: str, mode: str) -> Any:
    """Storage under ``<output>/ray`` (local or s3), the retry budget and checkpoint retention."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    fs, path = uris.pyarrow_filesystem(uris.join(output_uri, "ray"))
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


def check_resources(stage: TrainingConfig) -> None:
    """The cluster can host the worker group (otherwise Ray would wait forever)."""
    import ray

    from tasks.ray_session import connect_ray

    connect_ray()
    total = ray.cluster_resources()
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


class FaultInjectionCallback:
    """Kills one worker process once, at a given step, to test recovery (``GEOR_FAULT_KILL_AT_STEP``)."""

    @staticmethod
    def from_env(rank: int) -> list:
        spec = os.environ.get(FAULT_STEP_ENV)
        if not spec:
            return []
        from transformers import TrainerCallback

        step, fault_rank, flag = spec.split(":", 2)

        class _Kill(TrainerCallback):
            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                if rank == int(fault_rank) and state.global_step == int(step) and not os.path.exists(flag):
                    Path(flag).touch()
                    os._exit(1)

        return [_Kill()]
