"""Load a vision-language model and its processor from wherever the config says, and add LoRA.

A model source (``model.name_or_path``) is one of:

- a Hugging Face hub id (``Qwen/Qwen2.5-VL-7B-Instruct``): read from the hub cache, or
  downloaded where the machine has network and ``HF_HUB_OFFLINE`` is not set;
- a local directory written by ``save_pretrained`` (``geor make-tiny-model``, a stage's export);
- an ``s3://`` prefix holding such a directory: copied to a local cache first
  (``model.cache_dir``, default ``~/.cache/geor/models``);
- ``models:/NAME@ALIAS`` (or ``models:/NAME/VERSION``): a model registered in MLflow (the run's
  HF directory), downloaded with MLflow's artifact client.

Loading goes through ``AutoModelForImageTextToText`` / ``AutoProcessor`` with safetensors only and
``trust_remote_code`` off unless the config turns it on. ``dtype``/``device`` "auto" mean fp32 on
CPU and bf16 on CUDA. ``min_pixels``/``max_pixels`` bound every image's token cost. A source that
cannot be found raises ``UserFacingError`` naming it and saying what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from geor_core import uris
from geor_core.config import LoraConfig, ModelConfig
from geor_core.errors import UserFacingError

DEFAULT_CACHE_DIR = "~/.cache/geor/models"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_QWEN_VL_TYPES = ("qwen2_5_vl", "qwen2_vl")


def _as_model_config(model: ModelConfig | str) -> ModelConfig:
    return ModelConfig(name_or_path=model) if isinstance(model, str) else model


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` without a GPU is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserFacingError(
            "model.device is 'cuda' but no CUDA GPU is visible; set model.device=cpu or auto"
        )
    return device


def resolve_dtype(dtype: str, device: str) -> Any:
    """``auto`` -> bf16 on CUDA, fp32 on CPU; else the named torch dtype."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, dtype)


def resolve_source(source: str, cache_dir: str = "") -> str:
    """A model source -> a local directory, or a hub id for transformers to resolve."""
    if not source:
        raise UserFacingError(
            "model.name_or_path is empty: set it to a local directory, an s3:// prefix, models:/NAME@ALIAS "
            "or a hub id (build the CPU default with `geor make-tiny-model --output runs/tiny-model`)"
        )
    if source.startswith("models:/"):
        return _download_registered(source, cache_dir)
    if "://" in source and not source.startswith("file://"):
        return _copy_remote(source, cache_dir)
    local = Path(os.path.expanduser(source.removeprefix("file://")))
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise UserFacingError(
                f"model directory {source!r} has no config.json: point model.name_or_path at a directory "
                "written by save_pretrained (or rebuild it with `geor make-tiny-model --output PATH`)"
            )
        return str(local)
    if _HUB_ID.match(source) and not source.startswith((".", "~")):
        return source
    raise UserFacingError(_missing_message(source))


def _missing_message(source: str) -> str:
    return (
        f"model {source!r} is neither a local model directory nor a hub model available here. "
        f"As a local directory: create it (the CPU default: `geor make-tiny-model --output {source}`). "
        f"As a hub id: download it first (`hf download {source}` where there is network), or unset "
        "HF_HUB_OFFLINE. Or set model.name_or_path to a local directory, s3:// prefix or models:/NAME@ALIAS"
    )


def _cache_path(source: str, cache_dir: str) -> Path:
    root = Path(os.path.expanduser(cache_dir or DEFAULT_CACHE_DIR))
    return root / hashlib.sha256(source.encode()).hexdigest()[:16]


def _copy_remote(source: str, cache_dir: str) -> str:
    """Copy a remote model directory into the local cache, under a lock (Ray workers share a node).

    A cached copy is reused when the remote directory has a completion marker equal to the
    cached one (the same finished model); otherwise it is copied afresh (the prefix may change).
    """
    from filelock import FileLock

    target = _cache_path(source, cache_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        if not uris.exists(uris.join(source, "config.json")):
            raise UserFacingError(
                f"model {source!r} has no config.json: point model.name_or_path at a prefix written by "
                "save_pretrained (e.g. a stage's exported model)"
            )
        remote_marker = uris.read_marker(source)
        with FileLock(f"{target}.lock"):
            if (
                remote_marker is not None
                and target.is_dir()
                and uris.read_marker(str(target)) == remote_marker
            ):
                return str(target)
            return str(uris.copy_to_local(source, target))
    except (OSError, ValueError) as exc:
        raise UserFacingError(f"cannot copy model {source!r} to the local cache: {exc}") from exc


def _download_registered(source: str, cache_dir: str) -> str:
    """Download a registered model (``models:/NAME@ALIAS``) with MLflow's artifact client, afresh
    each time (an alias moves), under a lock so processes on one node do not overwrite each other."""
    import mlflow
    from filelock import FileLock
    from mlflow.tracking._tracking_service.utils import is_tracking_uri_set

    if not is_tracking_uri_set():  # else MLflow would quietly create ./mlflow.db and find nothing
        raise UserFacingError(
            f"model {source!r} is a registered model but no MLflow tracking server is set: "
            "set MLFLOW_TRACKING_URI (or tracking.uri) to the server that holds the registry"
        )
    target = _cache_path(source, cache_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{target}.lock"):
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(target)))
        except Exception as exc:  # MlflowException, connection errors: all mean "cannot get it"
            raise UserFacingError(
                f"cannot download registered model {source!r}: {exc}. Check the tracking server "
                "(tracking.uri or MLFLOW_TRACKING_URI) and that the name and alias exist"
            ) from exc
    if not (local / "config.json").is_file():  # logged one folder down
        found = sorted(local.rglob("config.json"))
        if not found:
            raise UserFacingError(
                f"registered model {source!r} holds no config.json (not a Hugging Face directory)"
            )
        local = found[0].parent
    return str(local)


def _model_type(path: str) -> str | None:
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        return None
    return json.loads(config_file.read_text()).get("model_type")


def load_model(model: ModelConfig | str, *, device: str | None = None) -> Any:
    """The model named by a ModelConfig (or a bare source), in eval mode on the configured device."""
    from transformers import AutoModelForImageTextToText

    cfg = _as_model_config(model)
    device = resolve_device(device or cfg.device)
    if cfg.attn_implementation == "flash_attention_2" and device != "cuda":
        raise UserFacingError(
            "model.attn_implementation flash_attention_2 needs a CUDA GPU; use sdpa or eager"
        )
    path = resolve_source(cfg.name_or_path, cfg.cache_dir)
    try:
        loaded = AutoModelForImageTextToText.from_pretrained(
            path,
            dtype=resolve_dtype(cfg.dtype, device),
            trust_remote_code=cfg.trust_remote_code,
            use_safetensors=True,
            attn_implementation=cfg.attn_implementation,
        )
    except OSError as exc:
        raise UserFacingError(
            f"{_missing_message(cfg.name_or_path)} (transformers: {_first_line(exc)})"
        ) from exc
    return loaded.to(device).eval()


def load_processor(model: ModelConfig | str) -> Any:
    """The processor for a ModelConfig (or a bare source), with the config's pixel bounds applied.

    On hosts without torchvision, the image-only Qwen2.5-VL processor (the stock one needs
    torchvision for video; other model families are refused); elsewhere AutoProcessor picks the
    saved class (``import geor_core.training.image_processor`` above registers ours with it).
    """
    from transformers import AutoProcessor
    from transformers.utils import is_torchvision_available

    from geor_core.training.image_processor import ImageOnlyQwen2_5_VLProcessor, set_pixel_bounds

    cfg = _as_model_config(model)
    path = resolve_source(cfg.name_or_path, cfg.cache_dir)
    model_type = _model_type(path)  # None for a hub id: assumed to be a Qwen-VL model
    if not is_torchvision_available() and model_type not in (None, *_QWEN_VL_TYPES):
        raise UserFacingError(
            f"model {cfg.name_or_path!r} is a {model_type!r} model: without torchvision only the Qwen2/2.5-VL "
            "processor works here; install torchvision or use a Qwen2.5-VL model"
        )
    try:
        if not is_torchvision_available():
            processor = ImageOnlyQwen2_5_VLProcessor.from_pretrained(path)
        else:
            processor = AutoProcessor.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    except OSError as exc:
        raise UserFacingError(
            f"{_missing_message(cfg.name_or_path)} (transformers: {_first_line(exc)})"
        ) from exc
    set_pixel_bounds(processor, cfg.min_pixels, cfg.max_pixels)
    if getattr(processor.tokenizer, "chat_template", None) is None:
        processor.tokenizer.chat_template = processor.chat_template
    return processor


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def peft_lora_config(lora: LoraConfig) -> Any:
    """The PEFT ``LoraConfig`` for the ``model.lora`` section."""
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
    )


def apply_lora(model: Any, lora: LoraConfig) -> Any:
    """Wrap ``model`` with LoRA adapters when ``lora.enabled``: only the adapters stay trainable.

    Returns the model unchanged when LoRA is off.
    """
    if not lora.enabled:
        return model
    from peft import get_peft_model

    try:
        return get_peft_model(model, peft_lora_config(lora))
    except ValueError as exc:
        raise UserFacingError(
            f"model.lora.target_modules {list(lora.target_modules)!r} do not fit this model: {_first_line(exc)}"
        ) from exc
