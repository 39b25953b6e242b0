"""The inference actor (tasks/inference_actor.py) that one evaluate run's pool uses for every model:
one model held at a time, each job decoded with its own settings and seeds."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from geor_core.config import load_config
from geor_core.data.images import load_image
from geor_core.training import model_loading
from geor_core.training.generation import generate
from tasks.inference_actor import Decoding, Geolocator


def test_one_actor_serves_every_job_one_model_at_a_time(tiny_model_dir, world_dir, tmp_path, monkeypatch):
    """The inference actor of an evaluate run: greedy rows of one model, then sampled draws of a
    second, in one batch. Each model is loaded once, when its rows arrive (the first released
    first), and every completion equals a direct `generate` with the job's decoding and seed."""
    other = tmp_path / "other-model"
    other.symlink_to(tiny_model_dir)
    cfg = load_config("test")
    models = [replace(cfg.model, name_or_path=str(path)) for path in (tiny_model_dir, other)]
    decodings = [
        Decoding(max_new_tokens=12),
        Decoding(12, do_sample=True, temperature=1.0, samples=2, seed=7),
    ]
    loads: list[str] = []
    real_load = model_loading.load_model

    def recording_load(config, **kwargs):
        loads.append(config.name_or_path)
        return real_load(config, **kwargs)

    monkeypatch.setattr(model_loading, "load_model", recording_load)
    images = sorted(str(p) for p in (world_dir / "images").iterdir())[:2]
    batch = {
        "job": np.array([0, 0, 1, 1, 1, 1], np.int32),
        "row": np.array([0, 1, 0, 1, 0, 1]),
        "draw": np.array([0, 0, 0, 0, 1, 1], np.int32),
        "image": np.array(images * 3),
    }
    threads = torch.get_num_threads()
    try:
        actor = Geolocator(models, decodings, cfg.eval)
        out = actor(batch)
    finally:
        torch.set_num_threads(threads)
    assert loads == [str(tiny_model_dir), str(other)] and actor.loaded[0] == str(other)
    assert list(out["inference_error"]) == [""] * 6 and list(out["job"]) == list(batch["job"])
    model, processor = real_load(models[0], device="cpu"), model_loading.load_processor(models[0])
    photos = [load_image(uri, models[0]) for uri in images]
    assert list(out["completion"][:2]) == generate(model, processor, photos, max_new_tokens=12)
    for draw in (0, 1):
        expected = generate(model, processor, photos, max_new_tokens=12, do_sample=True, seed=7 + draw)
        assert list(out["completion"][2 + 2 * draw : 4 + 2 * draw]) == expected
    assert out["completion"][2] != out["completion"][4] or out["completion"][3] != out["completion"][5]
