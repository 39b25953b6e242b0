"""Is each photo there, and does it decode? (`geor prepare --check-images`)

A photo passes when its bytes can be read and Pillow both verifies the file's structure and
decodes its pixels (JPEGs at a reduced draft size, which still reads every compressed byte, so a
truncated file fails). Reads go through a small thread pool, since on S3 latency dominates.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from geor_core import uris

IMAGE_MISSING = "image_missing"
IMAGE_UNDECODABLE = "image_undecodable"
_READ_THREADS = 8
_DRAFT_SIZE = (64, 64)


def check_images(image_uris: Sequence[str]) -> list[str]:
    """A reason per image: "" when it reads and decodes, else image_missing or image_undecodable."""
    if not image_uris:
        return []
    with ThreadPoolExecutor(max_workers=min(_READ_THREADS, len(image_uris))) as pool:
        return list(pool.map(check_image, image_uris))


def check_image(uri: str) -> str:
    """The reason code for one image URI ("" = fine)."""
    try:
        data = uris.read_bytes(uri)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, ValueError):
        return IMAGE_MISSING
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", _DRAFT_SIZE)
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return IMAGE_UNDECODABLE
    return ""
