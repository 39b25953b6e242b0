"""Batched generation: one image and one chat prompt per row in, the completions' text out.

Prompts go through the processor's chat template with the generation prompt added; the batch is
left-padded so every row's completion starts at the same position, and only the new tokens are
decoded (special tokens skipped, so ``<answer>`` tags survive and ``<|im_end|>`` does not).
Sampling uses ``seed`` inside a forked RNG, so a call never disturbs the caller's random state and
the same call gives the same completions.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from geor_core.geo.prompts import user_turn


def generate(
    model: Any,
    processor: Any,
    images: list[Image.Image],
    prompts: list[list[dict]] | None = None,
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> list[str]:
    """Completions for ``images`` (one per row), each with its chat prompt (default: the CoR user turn)."""
    import torch

    prompts = prompts if prompts is not None else [user_turn() for _ in images]
    if len(prompts) != len(images):
        raise ValueError(
            f"generate needs one prompt per image, got {len(images)} images and {len(prompts)} prompts"
        )
    if not images:
        return []
    texts = [processor.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    tokenizer = processor.tokenizer
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        inputs = processor(
            text=texts, images=[image.convert("RGB") for image in images], return_tensors="pt", padding=True
        )
    finally:
        tokenizer.padding_side = padding_side
    inputs = inputs.to(model.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    sampling = {"do_sample": False}
    if do_sample:  # exactly temperature + nucleus: no top-k cut unless the model's config sets one
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
    devices = [model.device.index or 0] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.inference_mode():
        torch.manual_seed(seed)
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            **sampling,
        )
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    return processor.batch_decode(new_tokens, skip_special_tokens=True)
