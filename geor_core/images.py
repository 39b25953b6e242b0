"""Load one photo from a URI (local path or s3://) as an RGB PIL image, for training and inference."""

from __future__ import annotations

import io

from PIL import Image

from geor_core import uris


def load_image(uri: str) -> Image.Image:
    """The decoded RGB image at ``uri``; errors name the URI."""
    try:
        data = uris.read_bytes(uri)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"image {uri} does not exist") from exc
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except Exception as exc:  # Pillow raises several types for bad bytes
        raise ValueError(f"image {uri} cannot be decoded: {exc}") from exc
