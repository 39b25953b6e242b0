"""Benchmark peak memory of loading + preprocessing a batch of hostile huge photos next to small ones.

    python benchmarks/image_memory.py [--rows 32] [--repeats 3] [--workdir DIR]

Makes (once, in ``--workdir``) black RGB PNGs written row by row, so they are small on disk:
``--rows`` huge ones alternating 10000x10000 px (~290 KB) and 13000x13000 px (~490 KB), and
``--rows`` small ones of 448x448 px. Each measurement is a fresh process that imports the image
processor, loads its batch's photos one at a time with ``geor_core.data.images.load_image`` (as
``Geolocator`` and the training datasets do), then preprocesses the loaded ones together with the
Qwen-VL image processor at the default model config (``max_pixels`` 448x448); its peak RSS is
``VmHWM`` (Linux). Configurations, alternated over ``--repeats`` rounds so load from other jobs hits
all of them:

- ``small``: the small photos;
- ``huge``: the huge photos at the default ``model.max_image_pixels`` (40 MP): each must be
  refused (``ImageTooLarge``) from its header;
- ``huge_allowed``: the huge photos with ``model.max_image_pixels`` raised to Pillow's limit, so
  each is decoded whole (PNG has no reduced decode) and reduced at once.

Prints one JSON object: every run, each configuration's median peak RSS, its [min, max] over the
repeats and the median's excess over ``small``, and the load average at the start and the end.
Exits 1 when ``huge`` peaks more than ``REFUSED_MARGIN_MB`` above ``small``; when ``huge_allowed``
peaks above ``small`` by more than one decoded photo (4 bytes a pixel of the largest: Pillow's
RGB) plus ``DECODE_MARGIN_MB``, i.e. more than one full-size photo was held at once; or when a
row's outcome is wrong (a huge photo not refused at the default bound, or a loaded photo whose
preprocessed grid differs from the one the processor gives that photo decoded at full size).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.repeats import median_and_spread  # noqa: E402

HUGE_SIZES = ((10000, 10000), (13000, 13000))
SMALL_SIZE = (448, 448)
PILLOW_LIMIT = 178_956_970  # model.max_image_pixels' upper bound: Pillow's own hard limit
REFUSED_MARGIN_MB = 32.0
DECODE_MARGIN_MB = 96.0
CONFIGS = {"small": ("small", None), "huge": ("huge", None), "huge_allowed": ("huge", PILLOW_LIMIT)}


def blank_png(path: Path, width: int, height: int) -> None:
    """A black RGB PNG of ``width`` x ``height`` px, compressed row by row (never held decoded)."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * width)  # filter byte + black pixels
    data = b"".join([compressor.compress(row) for _ in range(height)] + [compressor.flush()])

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, RGB
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    path.write_bytes(png)


def build_photos(workdir: Path, rows: int) -> dict[str, list[str]]:
    """The photo paths of each batch, written once per workdir (copies of one file per size)."""
    batches: dict[str, list[str]] = {"small": [], "huge": []}
    for name, sizes in (("small", [SMALL_SIZE]), ("huge", HUGE_SIZES)):
        for index in range(rows):
            width, height = sizes[index % len(sizes)]
            path = workdir / f"{name}-{index:03d}-{width}x{height}.png"
            if not path.exists():
                first = workdir / f"{name}-{index % len(sizes):03d}-{width}x{height}.png"
                if first.exists():
                    shutil.copyfile(first, path)
                else:
                    blank_png(path, width, height)
            batches[name].append(str(path))
    return batches


def _peak_mb() -> float:
    """This process's peak RSS (VmHWM: ru_maxrss would start at the parent's peak, kept across exec)."""
    with open("/proc/self/status") as status:
        return int(status.read().split("VmHWM:")[1].split()[0]) / 1024  # kB


def child(paths: list[str], max_image_pixels: int | None) -> None:
    """One measurement, in a fresh process: load each photo, preprocess the loaded ones, print JSON."""
    from dataclasses import replace

    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    from geor_core.config import ModelConfig
    from geor_core.data.images import load_image
    from geor_core.training.image_processor import build_image_processor

    model = ModelConfig()
    if max_image_pixels:
        model = replace(model, max_image_pixels=max_image_pixels)
    processor = build_image_processor(model.min_pixels, model.max_pixels)
    imported = _peak_mb()
    started = time.monotonic()
    images, errors, expected = [], [], []
    for path in paths:
        try:
            images.append(load_image(path, model))
        except Exception as exc:  # what a row's inference_error would hold
            errors.append(type(exc).__name__)
            continue
        with Image.open(path) as header:  # the grid the processor gives the full-size photo
            height, width = smart_resize(header.height, header.width, 28, model.min_pixels, model.max_pixels)
        expected.append([1, height // 14, width // 14])
        errors.append("")
    grids: list[list[int]] = []
    if images:
        out = processor(images=images, return_tensors="np")
        grids = out["image_grid_thw"].tolist()
    print(
        json.dumps(
            {
                "peak_rss_mb": round(_peak_mb(), 1),
                "import_peak_rss_mb": round(imported, 1),
                "seconds": round(time.monotonic() - started, 2),
                "loaded": len(images),
                "errors": sorted(set(errors) - {""}),
                "refused": sum(e == "ImageTooLarge" for e in errors),
                "grids_as_full_size": grids == expected,
                "loaded_sizes": sorted({f"{image.width}x{image.height}" for image in images}),
            }
        )
    )


def measure(paths: list[str], max_image_pixels: int | None) -> dict:
    command = [sys.executable, __file__, "--child", str(max_image_pixels or 0), *paths]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"measurement failed with exit code {done.returncode}:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(result), file=sys.stderr, flush=True)
    return result


def main() -> int:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[3:], int(sys.argv[2]) or None)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=32, help="photos per batch")
    parser.add_argument("--repeats", type=int, default=3, help="rounds, alternating the configurations")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "geor-bench-image-memory"))
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    batches = build_photos(workdir, args.rows)
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    runs: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    for _ in range(args.repeats):
        for name, (batch, bound) in CONFIGS.items():
            runs[name].append(measure(batches[batch], bound))
    median, spread = median_and_spread(runs, ("peak_rss_mb",))
    peak = {name: median[name]["peak_rss_mb"] for name in CONFIGS}
    largest = max(w * h for w, h in HUGE_SIZES)
    allowed_margin = 4 * largest / 2**20 + DECODE_MARGIN_MB
    failures = []
    if peak["huge"] - peak["small"] > REFUSED_MARGIN_MB:
        failures.append(
            f"huge peaks {peak['huge'] - peak['small']:.0f} MB above small (> {REFUSED_MARGIN_MB})"
        )
    if any(r["refused"] != args.rows for r in runs["huge"]):
        failures.append("some huge photo was not refused at the default model.max_image_pixels")
    if peak["huge_allowed"] - peak["small"] > allowed_margin:
        failures.append(
            f"huge_allowed peaks {peak['huge_allowed'] - peak['small']:.0f} MB above small "
            f"(> {allowed_margin:.0f}: more than one full-size photo held at once)"
        )
    for name in ("small", "huge_allowed"):
        if any(r["loaded"] != args.rows or not r["grids_as_full_size"] for r in runs[name]):
            failures.append(
                f"{name}: a photo was not loaded, or its preprocessed grid differs from full size"
            )
    print(
        json.dumps(
            {
                "rows": args.rows,
                "huge_sizes": [f"{w}x{h}" for w, h in HUGE_SIZES],
                "huge_png_kb": sorted({round(os.path.getsize(p) / 1024) for p in batches["huge"]}),
                "small_size": "x".join(map(str, SMALL_SIZE)),
                "repeats": args.repeats,
                "cpus": os.cpu_count(),
                "load_average_at_start": load_at_start,
                "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                "peak_rss_mb_median": peak,
                "peak_rss_mb_spread": {name: spread[name]["peak_rss_mb"] for name in CONFIGS},
                "excess_over_small_mb": {name: round(peak[name] - peak["small"], 1) for name in CONFIGS},
                "allowed_excess_mb": {"huge": REFUSED_MARGIN_MB, "huge_allowed": round(allowed_margin, 1)},
                "runs": runs,
                "failures": failures,
            },
            indent=2,
        )
    )
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
