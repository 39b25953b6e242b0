"""A tiny random-weight Qwen2.5-VL model and a tokenizer trained on the spot: the CPU default.

Nothing is downloaded. The architecture is the real one (``Qwen2_5_VLForConditionalGeneration``)
at the size measured to learn best on 2 cores (about 1.24M parameters: optimizer steps are the
budget there, not capacity; docs/design.md). The tokenizer is a byte-level BPE in Qwen2's exact
pre-tokenization (digits split into single tokens, so coordinates are digit by digit), trained on
Chain-of-Region text made from real gazetteer rows, the prompt and the chat scaffolding, so the
vocabulary fits the task. It has Qwen's special tokens and a Qwen-style chat template (no default
system prompt: shorter prompts), set on both the tokenizer and the processor.

Saved like every export: on hosts without torchvision the processor carries its own code
(geor_core.training.image_processor), so plain transformers loads the directory.

Everything is deterministic for a seed: two builds save identical files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from geor_core.geo.cor import cor_target
from geor_core.geo.countries import country_name
from geor_core.geo.gazetteer import settlements
from geor_core.geo.prompts import INSTRUCTION

VOCAB_SIZE = 1024
CORPUS_ROWS = 20_000  # gazetteer rows whose CoR targets train the tokenizer
INSTRUCTION_REPEATS = 500  # the prompt is in every example: weight it so it merges into few tokens

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Kept when decoding with skip_special_tokens (the parser needs them), but always one token each.
TAG_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' or 'video' in part %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in part %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

TEXT_ARCHITECTURE = {
    "hidden_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "intermediate_size": 384,
    "max_position_embeddings": 2048,
    # head_dim 32 -> 16 rotary frequencies split over (time, height, width)
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]},
}
VISION_ARCHITECTURE = {
    "depth": 2,
    "hidden_size": 64,
    "num_heads": 4,
    "intermediate_size": 128,
    "out_hidden_size": 128,  # = the text hidden size
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [1],
}


def tokenizer_corpus(seed: int = 0, rows: int = CORPUS_ROWS) -> list[str]:
    """Lines to train the tokenizer on: CoR targets of sampled real settlements, the prompt, roles."""
    table = settlements()
    picked = table.iloc[np.sort(np.random.default_rng(seed).choice(len(table), rows, replace=False))]
    names = {code: country_name(code) for code in picked["cc"].unique()}
    lines = [
        cor_target(int(i), names[cc], admin1, name, lat, lon, seed)
        for i, cc, admin1, name, lat, lon in zip(
            picked.index,
            picked["cc"],
            picked["admin1"],
            picked["name"],
            picked["lat"],
            picked["lon"],
            strict=True,
        )
    ]
    lines += [f"user\n{INSTRUCTION}", "assistant\n", "system\n"] * INSTRUCTION_REPEATS
    return lines


def train_tokenizer(corpus: list[str], vocab_size: int = VOCAB_SIZE) -> Any:
    """A Qwen2 tokenizer (byte-level BPE, Qwen2's pre-tokenizer) trained on ``corpus``; ``vocab_size`` in all."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(TAG_TOKENS),
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    merges = [tuple(pair) for pair in json.loads(bpe.to_str())["model"]["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=bpe.get_vocab(),
        merges=merges,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=TEXT_ARCHITECTURE["max_position_embeddings"],
    )
    tokenizer.add_tokens(
        [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS], special_tokens=True
    )
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(tokenizer: Any, seed: int = 0) -> Any:
    """A randomly initialised tiny Qwen2.5-VL (deterministic for ``seed``) sized to ``tokenizer``."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    token_id = tokenizer.convert_tokens_to_ids
    pad, end_of_turn = token_id("<|endoftext|>"), token_id("<|im_end|>")
    config = Qwen2_5_VLConfig(
        text_config={
            **TEXT_ARCHITECTURE,
            "vocab_size": len(tokenizer),
            "bos_token_id": pad,
            "eos_token_id": end_of_turn,
            "pad_token_id": pad,
        },
        vision_config=dict(VISION_ARCHITECTURE),
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.bos_token_id = pad
    model.generation_config.eos_token_id = [end_of_turn, pad]
    model.generation_config.pad_token_id = pad
    return model


def save_tiny_model(directory: str | Path, min_pixels: int, max_pixels: int, seed: int = 0) -> dict[str, int]:
    """Build the tokenizer, processor and model and save them (safetensors) into a local directory.

    Returns sizes worth logging: parameters and vocabulary.
    """
    from geor_core.training.image_processor import build_processor

    tokenizer = train_tokenizer(tokenizer_corpus(seed))
    processor = build_processor(tokenizer, CHAT_TEMPLATE, min_pixels=min_pixels, max_pixels=max_pixels)
    model = build_tiny_model(tokenizer, seed)
    model.save_pretrained(directory, safe_serialization=True)
    processor.save_pretrained(directory)
    return {"parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(tokenizer)}
