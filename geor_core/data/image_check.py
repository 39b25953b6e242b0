"""Is each photo there, and does it decode? (`geor prepare --check-images`)

Only references that passed the reference rule (geor_core/data/image_refs.py) get here. A photo
passes when its bytes can be read and Pillow both verifies the file's structure and decodes its
pixels (JPEGs at a reduced draft size, which still reads every compressed byte, so a truncated
file fails). A file that is not there is ``image_missing``; any other failed read (an unreachable
host, a refused permission, a read past ``READ_TIMEOUT_S`` on http(s)) is ``image_unreadable``:
a reject of that row, never a failed job. Reads go through a small thread pool, since on S3
latency dominates.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import fsspec
from PIL import Image

from geor_core import uris

IMAGE_MISSING = "image_missing"
IMAGE_UNREADABLE = "image_unreadable"
IMAGE_UNDECODABLE = "image_undecodable"
REASON_CODES = (IMAGE_MISSING, IMAGE_UNREADABLE, IMAGE_UNDECODABLE)
READ_TIMEOUT_S = 30.0
_READ_THREADS = 8
_DRAFT_SIZE = (64, 64)


def check_images(image_uris: Sequence[str]) -> list[str]:
    """A reason per image: "" when it reads and decodes, else one of ``REASON_CODES``."""
    if not image_uris:
        return []
    with ThreadPoolExecutor(max_workers=min(_READ_THREADS, len(image_uris))) as pool:
        return list(pool.map(check_image, image_uris))


def check_image(uri: str) -> str:
    """The reason code for one image URI ("" = fine)."""
    try:
        data = _read(uri)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return IMAGE_MISSING
    except Exception:  # refused, unreachable, timed out, not permitted: this row only
        return IMAGE_UNREADABLE
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", _DRAFT_SIZE)
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return IMAGE_UNDECODABLE
    return ""


def _read(uri: str) -> bytes:
    if uri.lower().startswith(("http://", "https://")):
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=READ_TIMEOUT_S)
        return fsspec.filesystem("http", client_kwargs={"timeout": timeout}).cat_file(uri)
    return uris.read_bytes(uri)
