"""Load one photo from a URI (local path or s3://) as an RGB PIL image no larger than the model needs.

Every photo fed to a model (training datasets, batch inference, sampled reward) goes through
``load_image``, so the memory one photo costs is bounded whatever its file declares:

- The header is read first. A photo declaring more than ``model.max_image_pixels`` pixels
  (width x height) is refused with ``ImageTooLarge`` before any pixel is decoded; a photo more
  than 200 times longer than wide (or the reverse), which the Qwen-VL image processor would
  refuse for its whole batch, is refused with ``ValueError``.
- A photo of at most ``model.max_pixels`` pixels is decoded as it always was (``convert("RGB")``).
- A larger one comes out at the size the image processor resizes it to anyway (``model_input_size``,
  Qwen-VL's rule), so the processor has nothing left to resize: a JPEG is decoded at 1/2 to 1/8
  scale by the decoder itself (``Image.draft``, never below 3x that size), any other format is
  decoded whole (at most ``max_image_pixels``) and reduced at once. The last step is the
  processor's own bicubic resize, so the model sees the pixels it saw before: exactly for a photo
  under 6x that size per side, within resampling noise beyond.

Pillow keeps an RGB pixel in 4 bytes, so decoding one photo holds at most about 8 bytes per pixel
of ``max_image_pixels`` (a non-RGB decode and its RGB copy: 320 MB at the default 40 MP; 4 bytes
for an RGB photo), and a loaded photo 4 bytes per pixel of ``max_pixels``. The file's bytes are
read whole first.
"""

from __future__ import annotations

import io
import math
import warnings

from PIL import Image

from geor_core import uris
from geor_core.config import ModelConfig

MAX_ASPECT_RATIO = 200  # the Qwen-VL image processor refuses photos more elongated than this
PIXELS_PER_TOKEN_SIDE = 28  # Qwen-VL: 14 px patches merged 2x2, one image token per 28x28 px
_REDUCING_GAP = 3.0  # decode (JPEG) and reduce by whole factors down to 3x the target, then resample

# model.max_image_pixels replaces Pillow's warning (at 89 MP); its error (at 179 MP) still ends a load.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageTooLarge(ValueError):
    """A photo declares more pixels than ``model.max_image_pixels``: refused without decoding it."""


def load_image(uri: str, model: ModelConfig) -> Image.Image:
    """The RGB image at ``uri``, decoded straight down to at most ``model.max_pixels`` pixels (see the
    module docstring); errors name the URI: FileNotFoundError (no file), ImageTooLarge (over
    ``model.max_image_pixels``), ValueError (cannot be decoded, or too elongated)."""
    try:
        data = uris.read_bytes(uri)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"image {uri} does not exist") from exc
    return decode_image(data, uri, model)


def decode_image(data: bytes, uri: str, model: ModelConfig) -> Image.Image:
    """The RGB image encoded in ``data`` under the same bounds as :func:`load_image`; ``uri`` names
    the photo in errors (ImageTooLarge, ValueError)."""
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(_too_large(uri, None, model)) from exc
    except Exception as exc:  # Pillow raises several types for bad bytes
        raise ValueError(f"image {uri} cannot be decoded: {exc}") from exc
    with image:
        _check_declared_size(uri, image.size, model)
        try:
            return _decode(image, model)
        except Exception as exc:
            raise ValueError(f"image {uri} cannot be decoded: {exc}") from exc


def _check_declared_size(uri: str, size: tuple[int, int], model: ModelConfig) -> None:
    width, height = size
    if width * height > model.max_image_pixels:
        raise ImageTooLarge(_too_large(uri, size, model))
    if max(width, height) > MAX_ASPECT_RATIO * max(1, min(width, height)):
        raise ValueError(
            f"image {uri} is {width}x{height} px: more than {MAX_ASPECT_RATIO} times longer than wide, "
            "which the model's image processor refuses"
        )


def _too_large(uri: str, size: tuple[int, int] | None, model: ModelConfig) -> str:
    declared = f"is {size[0]}x{size[1]} px" if size else f"has more than {2 * Image.MAX_IMAGE_PIXELS} pixels"
    return (
        f"image {uri} {declared}, more than model.max_image_pixels ({model.max_image_pixels}): "
        "refused without decoding"
    )


def _decode(image: Image.Image, model: ModelConfig) -> Image.Image:
    width, height = image.size
    if width * height <= model.max_pixels:
        return image.convert("RGB")
    size = model_input_size(width, height, model.min_pixels, model.max_pixels)
    image.draft(None, (math.ceil(size[0] * _REDUCING_GAP), math.ceil(size[1] * _REDUCING_GAP)))
    image.load()
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return rgb.resize(size, Image.Resampling.BICUBIC, reducing_gap=_REDUCING_GAP)


def model_input_size(width: int, height: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The (width, height) the Qwen-VL image processor resizes a photo to: multiples of 28 px, within
    [min_pixels, max_pixels] where the aspect allows, aspect kept as closely as possible (transformers'
    ``smart_resize``, restated here so that loading photos needs no torch)."""
    factor = PIXELS_PER_TOKEN_SIDE
    new_height, new_width = round(height / factor) * factor, round(width / factor) * factor
    if new_height * new_width > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        new_height = max(factor, math.floor(height / beta / factor) * factor)
        new_width = max(factor, math.floor(width / beta / factor) * factor)
    elif new_height * new_width < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        new_height = math.ceil(height * beta / factor) * factor
        new_width = math.ceil(width * beta / factor) * factor
    return new_width, new_height
