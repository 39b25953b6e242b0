"""What runs inside each Ray Train worker of a training stage (SFT, GRPO): set-up, training with
resume from Ray's checkpoint, the Hugging Face export and the final report."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geor_core.config import GeorConfig

FAULT_STEP_ENV = "GEOR_FAULT_KILL_AT_STEP"  # "STEP:RANK:FLAG_FILE": exit once at STEP on RANK


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


def prepare_worker(config: dict[str, Any]) -> tuple[Any, Path]:
    """First thing in a worker: its env, a clean scratch folder shared by the node's ranks, in the
    node's own temp dir (``config["scratch"]`` names it; the driver's disk may be elsewhere)."""
    import ray.train
    import torch.distributed as dist

    os.environ.update(config["env"])
    context = ray.train.get_context()
    scratch = Path(tempfile.gettempdir()) / config["scratch"]
    if context.get_local_rank() == 0:
        # the run's own scratch (a uuid-named temp folder from launch_training): a failed attempt's
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
    if dist.is_initialized():
        dist.barrier()
    return context, scratch


def train_with_resume(trainer: Any) -> int:
    """``trainer.train()``, from Ray's latest checkpoint when there is one; returns its step (0: fresh)."""
    import ray.train
    from ray.train.huggingface.transformers import RayTrainReportCallback

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        trainer.train()
        return 0
    with checkpoint.as_directory() as directory:
        hf_checkpoint = os.path.join(directory, RayTrainReportCallback.CHECKPOINT_NAME)
        state = Path(hf_checkpoint) / "trainer_state.json"
        resumed_from = int(json.loads(state.read_text()).get("global_step", 0)) if state.is_file() else 0
        trainer.train(resume_from_checkpoint=hf_checkpoint)
    return resumed_from


def export_and_report(
    trainer: Any, processor: Any, *, lora: bool, scratch: Path, export_uri: str, marker: dict[str, Any]
) -> None:
    """Export the final model in Hugging Face format (rank 0 publishes it, marker last), then the
    final report every rank makes. Under ZeRO-3 ``save_model`` gathers the shards (a collective);
    LoRA adapters are merged so plain transformers loads the export."""
    import ray.train
    import torch.distributed as dist

    from geor_core.training.export import publish_model_dir

    context = ray.train.get_context()
    rank = context.get_world_rank()
    export_dir = scratch / "export"
    if lora:
        if rank == 0:
            trainer.model.merge_and_unload().save_pretrained(export_dir, safe_serialization=True)
    else:
        trainer.save_model(str(export_dir))
    if rank == 0:
        processor.save_pretrained(str(export_dir))
        history = trainer.state.log_history
        metrics: dict[str, float] = {}
        for entry in history:
            metrics.update({k: float(v) for k, v in entry.items() if isinstance(v, int | float)})
        publish_model_dir(
            export_dir,
            export_uri,
            {"global_step": trainer.state.global_step, "metrics": metrics, "log_history": history, **marker},
        )
    if dist.is_initialized():
        dist.barrier()
    ray.train.report({"global_step": trainer.state.global_step})
    if context.get_local_rank() == 0:
        shutil.rmtree(scratch, ignore_errors=True)


def _driver_drawn_bar(**kwargs: Any) -> Any:
    """A progress bar drawn by the driver: Ray's distributed tqdm (a worker's own tqdm would print
    a line per redraw into the forwarded log)."""
    from ray.experimental.tqdm_ray import tqdm

    return tqdm(**kwargs)


@dataclass
class WorkerSetup:
    """What every training worker builds before its trainer: config, model, processor, callbacks."""

    cfg: GeorConfig
    scratch: Path
    model: Any
    processor: Any
    callbacks: list
    system_metrics: Any = None  # rank 0's MLflow system-metrics monitor (None elsewhere / untracked)


def skip_shared_memory_comm_build() -> None:
    """Keep DeepSpeed's CPU backend from compiling its shared-memory all-reduce op.

    On the CPU accelerator, ``deepspeed.comm`` JIT-compiles ``deepspeed_shm_comm`` (C++, with
    ninja) the first time a process group starts in an environment: 70 to 213 s on a 2-core
    machine, paid again whenever the venv moves (the cached build is keyed by its source paths).
    Training never uses it: DeepSpeed's training all-reduce is torch.distributed's (gloo here)
    either way; the op serves only its inference all-reduce. GPU runs never come here. DeepSpeed
    reads the op's compatibility from ``deepspeed.ops.__compatible_ops__`` (probed once per
    process), so marking it incompatible there is the one switch it offers."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def setup_worker(config: dict[str, Any], stage: str) -> WorkerSetup:
    """Env and scratch, the config, the model (with LoRA when configured) and the callbacks:
    Ray's checkpoint reporting, rank-0 MLflow metrics and console, the fault-injection hook. Rank 0 also
    logs the run's system metrics from here, the machine that trains."""
    from ray.train.huggingface.transformers import RayTrainReportCallback

    from geor_core.config import build_config
    from geor_core.registry.tracking import start_system_metrics
    from geor_core.training.model_loading import apply_lora, load_model, load_processor
    from geor_core.training.sft_setup import per_device_batch_size
    from geor_core.training.time_budget import TimeBudgetCallback
    from geor_core.training.train_callbacks import ConsoleCallback, MlflowMetricsCallback

    context, scratch = prepare_worker(config)
    cfg = build_config(config["cfg"])
    settings = getattr(cfg, stage)
    if not settings.use_gpu:  # say so, rather than have DeepSpeed warn that it found no GPU
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        skip_shared_memory_comm_build()
    rank = context.get_world_rank()
    cfg.model.name_or_path = config["model_uri"]
    processor = load_processor(cfg.model)
    model = apply_lora(load_model(cfg.model), cfg.model.lora)
    global_batch = (
        per_device_batch_size(settings) * context.get_world_size() * settings.gradient_accumulation_steps
    )
    callbacks = [
        RayTrainReportCallback(),
        MlflowMetricsCallback(config["run_id"] if rank == 0 else None, global_batch),
        ConsoleCallback(stage, progress_bar=_driver_drawn_bar),
        TimeBudgetCallback(settings.max_seconds, lr_schedule=_clock_schedule(settings)),
        *FaultInjectionCallback.from_env(rank),
    ]
    monitor = start_system_metrics(cfg, config["run_id"] if rank == 0 else None)
    return WorkerSetup(cfg, scratch, model, processor, callbacks, monitor)


def finish_worker(
    trainer: Any,
    setup: WorkerSetup,
    config: dict[str, Any],
    stage: str,
    extra_marker: Callable[[], dict[str, Any]] | None = None,
) -> None:
    """Train (resuming when Ray has a checkpoint), then export and report with lineage in the
    marker; ``extra_marker`` is called after training for stage-specific fields. The console is
    the ConsoleCallback's alone (the Trainer's printer of raw dicts is removed)."""
    from geor_core.training.train_callbacks import console_only

    try:
        resumed_from = train_with_resume(console_only(trainer))
        export_and_report(
            trainer,
            setup.processor,
            lora=setup.cfg.model.lora.enabled,
            scratch=setup.scratch,
            export_uri=config["export_uri"],
            marker={
                "stage": stage,
                "resumed_from_step": resumed_from,
                "data": config["data_uri"],
                "base_model": config["model_uri"],
                "config_hash": setup.cfg.fingerprint(),
                "stopped_by_time_budget": _time_budget_spent(setup.callbacks),
                **(extra_marker() if extra_marker else {}),
            },
        )
    finally:
        if setup.system_metrics is not None:
            setup.system_metrics.finish()


def _clock_schedule(settings: Any) -> tuple[str, float] | None:
    """(lr_scheduler_type, warmup_ratio) when the stage lays its schedule over its seconds."""
    if settings.lr_schedule_over != "max_seconds":
        return None
    return settings.lr_scheduler_type, settings.warmup_ratio


def _time_budget_spent(callbacks: list) -> bool:
    """Whether the stage's ``max_seconds`` ended its training (geor_core.training.time_budget)."""
    from geor_core.training.time_budget import TimeBudgetCallback

    return any(isinstance(c, TimeBudgetCallback) and c.stopped_at_step is not None for c in callbacks)
