"""DeepSpeed configs for the Hugging Face Trainer (SFT and GRPO alike), from the stage's config.

Batch sizes, accumulation, clipping and precision are "auto", so the Trainer fills them from its
own arguments and the two can never disagree. On CPU the gloo backend runs fp32 (bf16 is off);
on GPU bf16 is on. ZeRO-3 gathers the full 16-bit weights when the final model is saved, so the
Hugging Face export loads with plain transformers.
"""

from __future__ import annotations

from typing import Any


def deepspeed_config(zero_stage: int, use_gpu: bool) -> dict[str, Any]:
    """A DeepSpeed config dict for ZeRO ``zero_stage`` (0, 2 or 3)."""
    if zero_stage not in (0, 2, 3):
        raise ValueError(f"zero_stage: got {zero_stage!r}, allowed: 0, 2, 3")
    zero: dict[str, Any] = {"stage": zero_stage}
    if zero_stage >= 2:
        zero.update(overlap_comm=False, contiguous_gradients=True, reduce_scatter=True)
    if zero_stage == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=True)
    return {
        "zero_optimization": zero,
        "bf16": {"enabled": "auto" if use_gpu else False},
        "fp16": {"enabled": False},
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
