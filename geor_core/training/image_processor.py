"""An image-only processor for the Qwen2.5-VL family, for machines without torchvision.

transformers 5.x's stock ``Qwen2_5_VLProcessor`` insists on a video processor, and every Qwen-VL
video processor needs torchvision, which cannot be installed on CPU-only hosts like the one this
project is developed on. ``ImageOnlyQwen2_5_VLProcessor`` is the stock processor minus video: it
takes an image processor (the PIL one, ``Qwen2VLImageProcessorPil``) and a tokenizer, and does
everything the stock one does for images (image-token expansion, chat templates, batching).

Where torchvision is installed (GPU clusters), ``build_processor`` builds the stock processor, so
what ``save_pretrained`` writes names the stock class and plain transformers reloads it there.

Elsewhere a saved processor carries its own code, the Hugging Face way for a custom processor: the
class is registered for ``AutoProcessor`` (``register_for_auto_class``), so ``save_pretrained``
copies this file into the directory and names it in an ``auto_map``. Plain transformers, in an
interpreter that never imports this project, then loads it with
``AutoProcessor.from_pretrained(path, trust_remote_code=True)``; without ``trust_remote_code`` it
refuses with an error (or asks, at a terminal) instead of returning a bare tokenizer that would
drop the image. This file must therefore import only transformers and the standard library.
Within the project, importing this module registers the class, so AutoProcessor uses it (never
the copy) for every directory that names it, with or without an ``auto_map``;
``geor_core.training.model_loading.load_processor`` does that for you and also loads stock
processor directories on hosts without torchvision.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoProcessor, ProcessorMixin
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.utils import is_torchvision_available

IMAGE_TOKEN = "<|image_pad|>"
VIDEO_TOKEN = "<|video_pad|>"

# A registry key of our own (not a transformers config class), so registering never changes how
# stock Qwen2.5-VL checkpoints resolve; AutoProcessor finds the class by the name saved on disk.
_REGISTRY_KEY = "geor_qwen2_5_vl_image_only"


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """``Qwen2_5_VLProcessor`` without the video processor (images and text only).

    transformers derives a processor's parts from its ``__init__`` signature, so leaving
    ``video_processor`` out of it is what makes save/load skip the video part.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", None) or IMAGE_TOKEN
        self.video_token = getattr(tokenizer, "video_token", None) or VIDEO_TOKEN
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


AutoProcessor.register(_REGISTRY_KEY, ImageOnlyQwen2_5_VLProcessor, exist_ok=True)
# save_pretrained copies this file into the directory and names the class in an auto_map
ImageOnlyQwen2_5_VLProcessor.register_for_auto_class("AutoProcessor")


def build_image_processor(min_pixels: int, max_pixels: int) -> Any:
    """A Qwen2-VL image processor (14 px patches, 2x2 merge) bounded to [min_pixels, max_pixels]."""
    if is_torchvision_available():
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

        return Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels)
    return Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)


def build_processor(tokenizer: Any, chat_template: str, min_pixels: int, max_pixels: int) -> ProcessorMixin:
    """The stock Qwen2.5-VL processor where torchvision exists, else the image-only one."""
    image_processor = build_image_processor(min_pixels, max_pixels)
    if is_torchvision_available():
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

        return Qwen2_5_VLProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=Qwen2VLVideoProcessor(),
            chat_template=chat_template,
        )
    return ImageOnlyQwen2_5_VLProcessor(image_processor, tokenizer, chat_template=chat_template)


def set_pixel_bounds(processor: ProcessorMixin, min_pixels: int, max_pixels: int) -> None:
    """Bound how many pixels (so how many image tokens) each image costs: 28x28 px per token."""
    image_processor = processor.image_processor
    image_processor.size = type(image_processor.size)(shortest_edge=min_pixels, longest_edge=max_pixels)
