"""The inference actor of batch inference (tasks/batch_inference.py): one per slot of the Ray Data
actor pool, holding one model at a time, and how each job's completions are drawn."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any

import numpy as np

from geor_core.config import EvalConfig, ModelConfig


@dataclass(frozen=True)
class Decoding:
    """How a job's completions are drawn: ``samples`` per row; draw ``d`` of the rows starting at
    row ``r`` is seeded ``seed + r * samples + d`` (the same numbers on every run)."""

    max_new_tokens: int
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    samples: int = 1
    seed: int = 0

    @classmethod
    def of_eval(cls, settings: EvalConfig) -> Decoding:
        """The evaluation's own decoding (``eval.do_sample``, ...): one completion per row."""
        return cls(settings.max_new_tokens, settings.do_sample, settings.temperature, settings.top_p)


class Geolocator:
    """Ray Data actor: holds one model at a time (loaded when the stream reaches its first row),
    and writes one completion per (row, draw) of each batch."""

    def __init__(self, models: list[ModelConfig], decodings: list[Decoding], settings: EvalConfig) -> None:
        import torch

        torch.set_num_threads(max(1, int(settings.cpus_per_actor)))
        self.models = models  # per job: the model and the pixel bounds its photos are decoded down to
        self.decodings = decodings
        self.settings = settings
        self.loaded: tuple[str, Any, Any] | None = None  # (source, model, processor)

    def policy(self, job: int) -> tuple[Any, Any]:
        """The job's (model, processor), loaded unless the previous job used the same model."""
        from geor_core.training.model_loading import load_model, load_processor

        config = self.models[job]
        if self.loaded is None or self.loaded[0] != config.name_or_path:
            self.loaded = None  # the previous model goes before the next one is loaded
            gc.collect()
            device = "cpu" if self.settings.gpus_per_actor == 0 and config.device == "auto" else None
            self.loaded = (config.name_or_path, load_model(config, device=device), load_processor(config))
        return self.loaded[1], self.loaded[2]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        completions = np.full(len(batch["row"]), "", dtype=object)
        errors = np.full(len(batch["row"]), "", dtype=object)
        keys = list(zip(batch["job"].tolist(), batch["draw"].tolist(), strict=True))
        for job, draw in dict.fromkeys(keys):  # runs of one job and draw, in batch order
            members = [i for i, key in enumerate(keys) if key == (job, draw)]
            texts, reasons = self._complete(
                job, draw, [batch["row"][i] for i in members], batch["image"][members]
            )
            completions[members], errors[members] = texts, reasons
        return {"job": batch["job"], "row": batch["row"], "draw": batch["draw"], "completion": completions,
                "inference_error": errors}  # fmt: skip

    def _complete(
        self, job: int, draw: int, rows: list[int], uris_: np.ndarray
    ) -> tuple[list[str], list[str]]:
        from geor_core.data.images import load_image
        from geor_core.training.generation import generate

        images, errors = [], []
        for uri in uris_:  # one photo decoded at a time, straight down to model.max_pixels
            try:
                images.append(load_image(str(uri), self.models[job]))
                errors.append("")
            except Exception as exc:  # a bad photo is reported in its row, never a failed job
                images.append(None)
                errors.append(f"{type(exc).__name__}: {exc}"[:500])
        loaded = [i for i, image in enumerate(images) if image is not None]
        completions = [""] * len(images)
        if loaded:
            model, processor = self.policy(job)
            decoding = self.decodings[job]
            texts = generate(
                model, processor, [images[i] for i in loaded],
                max_new_tokens=decoding.max_new_tokens, do_sample=decoding.do_sample,
                temperature=decoding.temperature, top_p=decoding.top_p,
                seed=decoding.seed + int(rows[0]) * decoding.samples + draw,  # rows, not scheduling
            )  # fmt: skip
            for i, text in zip(loaded, texts, strict=True):
                completions[i] = text
        return completions, errors
