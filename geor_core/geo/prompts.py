"""The user prompt (one image plus the Chain-of-Region instruction) in the chat form TRL accepts.

SFT rows are ``{"prompt": [user turn], "completion": [assistant turn], "image": ...}``; GRPO rows
are ``{"prompt": [user turn], "image": ..., "lat": ..., "lon": ...}``. The image part carries no
pixels: TRL and the processor pair it with the row's ``image`` (or ``images``) column.
"""

from __future__ import annotations

INSTRUCTION = (
    "Where was this photo taken? Reason from the country to the state to the city, then answer as "
    "<answer>Country: ...; State: ...; City: ...; Coordinates: (lat, lon)</answer>."
)


def user_turn(instruction: str = INSTRUCTION) -> list[dict]:
    """The conversation's single user turn: one image placeholder, then the instruction."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]


def assistant_turn(text: str) -> list[dict]:
    """A completion in conversational form (the CoR target for SFT)."""
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]
