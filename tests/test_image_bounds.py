"""geor_core.data.images: photos are decoded straight down to ``model.max_pixels``, photos declaring more
than ``model.max_image_pixels`` are refused per row from their header, small photos decode exactly
as before, and inference, training and the sampled reward all load photos this way.

Memory is measured in a fresh child process (peak RSS before and after one load), so a full
decode of a hostile photo would show as hundreds of MB.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from benchmarks.image_memory import blank_png
from geor_core.config import ModelConfig, load_config
from geor_core.data.images import ImageTooLarge, load_image, model_input_size

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ModelConfig()  # max_pixels 448x448, max_image_pixels 40 MP
SMALL_GROWTH_MB = 16  # what one refused or draft-decoded load may add to the peak RSS


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, str]:
    """A hostile 10000x10000 PNG (~290 KB), a 7200x5400 JPEG (39 MP, under the bound) and a small PNG."""
    folder = tmp_path_factory.mktemp("photos")
    blank_png(folder / "huge.png", 10000, 10000)
    ramp = Image.linear_gradient("L").resize((7200, 5400))
    Image.merge("RGB", (ramp, ramp.transpose(Image.Transpose.FLIP_LEFT_RIGHT), ramp)).save(
        folder / "large.jpg", quality=90
    )
    Image.effect_noise((40, 30), 64).convert("RGB").save(folder / "small.png")
    return {
        name: str(folder / f"{name}.{ext}")
        for name, ext in (("huge", "png"), ("large", "jpg"), ("small", "png"))
    }


# VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's peak (kept across fork + exec)
CHILD = """
import json, sys
from dataclasses import replace
from geor_core.config import ModelConfig
from geor_core.data.images import load_image

def peak():
    status = open("/proc/self/status").read()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024

model = replace(ModelConfig(), max_image_pixels=int(sys.argv[2]))
before = peak()
try:
    image = load_image(sys.argv[1], model)
    outcome = {"size": list(image.size), "mode": image.mode}
except Exception as exc:
    outcome = {"error": f"{type(exc).__name__}: {exc}"}
print(json.dumps({**outcome, "growth_mb": peak() - before}))
"""


def load_in_child(path: str, max_image_pixels: int = DEFAULT.max_image_pixels) -> dict:
    """load_image in a fresh process: its outcome and how much it raised the peak RSS."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, path, str(max_image_pixels)],
        capture_output=True, text=True, cwd=ROOT, check=True,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_huge_png_is_refused_from_its_header_without_being_decoded(photos):
    refused = load_in_child(photos["huge"])
    assert refused["error"] == (
        f"ImageTooLarge: image {photos['huge']} is 10000x10000 px, more than model.max_image_pixels "
        "(40000000): refused without decoding"
    )
    assert refused["growth_mb"] < SMALL_GROWTH_MB
    # the measurement would see a full decode: allowed, the same file costs its 400 MB once ...
    allowed = load_in_child(photos["huge"], max_image_pixels=10**8)
    assert allowed["growth_mb"] > 300
    # ... and still comes out at the model's input size
    assert allowed["size"] == [420, 420] and allowed["mode"] == "RGB"


def test_a_photo_beyond_pillows_own_limit_is_refused_the_same_way(tmp_path):
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path = tmp_path / "bomb.png"  # declares 20000x20000 px, holds no pixel data
    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")
    )
    with pytest.raises(
        ImageTooLarge, match=r"bomb\.png has more than \d+ pixels, more than model\.max_image"
    ):
        load_image(str(path), DEFAULT)


def test_an_elongated_photo_is_refused_in_its_row(tmp_path):
    path = tmp_path / "strip.png"
    Image.new("RGB", (700, 3)).save(path)  # the image processor would fail its whole batch
    with pytest.raises(ValueError, match=r"strip\.png is 700x3 px: more than 200 times longer than wide"):
        load_image(str(path), DEFAULT)


def test_a_large_jpeg_under_the_bound_is_decoded_at_reduced_scale_to_the_model_input_size(photos):
    loaded = load_in_child(photos["large"])
    width, height = loaded["size"]
    assert (
        (width, height) == model_input_size(7200, 5400, DEFAULT.min_pixels, DEFAULT.max_pixels) == (504, 364)
    )
    assert width * height <= DEFAULT.max_pixels
    assert loaded["growth_mb"] < SMALL_GROWTH_MB  # a full decode holds 155 MB (4 bytes a pixel)


@pytest.mark.parametrize(
    "mode, fmt", [("RGB", "PNG"), ("RGBA", "PNG"), ("P", "PNG"), ("L", "PNG"), ("RGB", "JPEG"), ("L", "JPEG")]
)
def test_a_photo_within_max_pixels_decodes_exactly_as_a_plain_decode(tmp_path, mode, fmt):
    path = tmp_path / f"photo.{fmt.lower()}"
    Image.effect_noise((300, 200), 80).convert(mode).save(path, fmt)
    with Image.open(path) as image:
        plain = image.convert("RGB")
    loaded = load_image(str(path), DEFAULT)
    assert (loaded.mode, loaded.size, loaded.tobytes()) == (plain.mode, plain.size, plain.tobytes())


def _processed(image: Image.Image) -> dict[str, np.ndarray]:
    from geor_core.training.image_processor import build_image_processor

    return build_image_processor(DEFAULT.min_pixels, DEFAULT.max_pixels)(images=[image], return_tensors="np")


@pytest.mark.parametrize("size, fmt, exact", [((1000, 800), "PNG", True), ((2600, 2000), "JPEG", True),
                                              ((4000, 3000), "JPEG", False)])  # fmt: skip
def test_the_model_input_is_what_a_full_decode_gives(tmp_path, size, fmt, exact):
    """Exactly the same up to 6x the model's input size per side; beyond, the same grid and pixels
    within resampling noise (the processor's range is about -1.8..2.1)."""
    path = tmp_path / f"photo.{fmt.lower()}"
    Image.effect_noise((size[0] // 8, size[1] // 8), 80).convert("RGB").resize(size).save(path, fmt)
    with Image.open(path) as image:
        before = _processed(image.convert("RGB"))
    now = _processed(load_image(str(path), DEFAULT))
    assert (now["image_grid_thw"] == before["image_grid_thw"]).all()
    difference = np.abs(now["pixel_values"] - before["pixel_values"])
    assert difference.max() == 0 if exact else (difference.mean() < 0.02 and difference.max() < 0.3)


def test_model_input_size_is_the_image_processors_rule():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    for height in range(1, 4000, 97):
        for width in range(height, min(height * 200, 12000), 211):
            for max_pixels in (3136, 448 * 448, 1280 * 28 * 28):
                expected = smart_resize(height, width, 28, 28 * 28, max_pixels)[::-1]
                assert model_input_size(width, height, 28 * 28, max_pixels) == expected


def test_the_geolocator_reports_a_huge_photo_in_its_row_and_sees_only_bounded_photos(
    photos, tiny_model_dir, monkeypatch
):
    import torch

    from geor_core.training import generation
    from tasks.inference_actor import Decoding, Geolocator

    cfg = load_config("test")
    seen: list[tuple[int, int]] = []
    real_generate = generation.generate

    def recording_generate(model, processor, images, *args, **kwargs):
        seen.extend(image.size for image in images)
        return real_generate(model, processor, images, *args, **kwargs)

    monkeypatch.setattr(generation, "generate", recording_generate)
    threads = torch.get_num_threads()
    try:
        model = replace(cfg.model, name_or_path=str(tiny_model_dir))
        actor = Geolocator([model], [Decoding(max_new_tokens=4)], cfg.eval)
        images = np.array([photos["huge"], photos["large"], photos["small"]])
        out = actor(
            {
                "job": np.zeros(3, np.int32),
                "row": np.arange(3),
                "draw": np.zeros(3, np.int32),
                "image": images,
            }
        )
    finally:
        torch.set_num_threads(threads)
    assert out["inference_error"][0].startswith(f"ImageTooLarge: image {photos['huge']} is 10000x10000 px")
    assert list(out["inference_error"][1:]) == ["", ""] and out["completion"][0] == ""
    assert len(seen) == 2 and all(w * h <= cfg.model.max_pixels for w, h in seen)


def test_training_datasets_load_photos_through_the_bounded_loader(photos):
    from geor_core.training.grpo_setup import GRPO_COLUMNS, grpo_dataset
    from geor_core.training.sft_setup import SFT_COLUMNS, sft_dataset

    model = load_config("test").model  # max_pixels 3136
    uris = [photos["large"], photos["huge"]]
    values = {"target": ["t", "t"], "lat": [0.0, 0.0], "lon": [0.0, 0.0]}
    table = pa.table({name: values.get(name, uris if name == "image" else ["x", "y"]) for name in GRPO_COLUMNS + ["target"]})  # fmt: skip
    for dataset in (
        sft_dataset(table.select(SFT_COLUMNS), model),
        grpo_dataset(table.select(GRPO_COLUMNS), model),
    ):
        image = dataset[0]["image"]
        assert image.size == model_input_size(7200, 5400, model.min_pixels, model.max_pixels)
        assert image.width * image.height <= model.max_pixels
        with pytest.raises(ImageTooLarge, match="huge.png is 10000x10000 px"):
            dataset[1]


def test_the_sampled_reward_counts_a_huge_photo_as_unreadable(photos, monkeypatch):
    from geor_core.training import sampled_reward

    seen: list[tuple[int, int]] = []

    def fake_generate(model, processor, images, **kwargs):
        seen.extend(image.size for image in images)
        return ["<answer>Coordinates: (0.0, 0.0)</answer>"] * len(images)

    monkeypatch.setattr(sampled_reward, "generate", fake_generate)
    uris = [photos["huge"], photos["large"], photos["small"]]
    rows = pa.table(
        {"image": uris, "lat": [0.0] * 3, "lon": [0.0] * 3, "country_code": [""] * 3, "state": [""] * 3,
         "city": [""] * 3}
    )  # fmt: skip
    cfg = load_config("test")
    metrics = sampled_reward.greedy_metrics(None, None, rows, cfg)
    assert metrics["unreadable_rows"] == 1 and metrics["n"] == 2
    assert len(seen) == 2 and all(w * h <= cfg.model.max_pixels for w, h in seen)
