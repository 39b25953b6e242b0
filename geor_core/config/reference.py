"""The configuration reference (docs/configuration.md), rendered from the schema itself: every
section of ``GeorConfig`` with its keys, types, defaults, allowed ranges or choices and ``doc``
texts, and the shipped presets with the comment at the top of each. `geor config reference`
prints it; a test fails when the file in docs/ differs from what this renders."""

from __future__ import annotations

import dataclasses
import typing
from importlib import resources
from typing import Any

import yaml

from geor_core.config.loading import DEFAULT_PRESET, preset_names
from geor_core.config.sections import GeorConfig

REGENERATE = ".venv/bin/geor config reference > docs/configuration.md"

INTRO = f"""# Configuration reference

<!-- Generated from geor_core/config/sections.py and configs/*.yaml by `geor config reference`.
     Do not edit by hand: run `{REGENERATE}`. -->

Every command that trains, evaluates or moves models reads one configuration, built in layers,
each overriding the one before:

1. the defaults listed below (the paper's settings where the paper has one);
2. a preset by name (`--config test`) or a YAML file of sections (`--config my.yaml`); without
   `--config`, the `{DEFAULT_PRESET}` preset (`geor demo`: `demo`). A preset or file may name
   another in `extends:` and then sets only what differs;
3. dotted `section.key=value` overrides, values parsed as YAML:
   `grpo.beta=0.02` is a number, `eval.splits=[val,test]` a list, `model.lora.enabled=true` a
   boolean;
4. a command's flags (`--data`, `--model`, `--output`, ...); each names the key it sets in its
   `--help`.

`geor config show [--config P] [key=value ...]` prints the resolved configuration as YAML
(credentials in URIs masked); the output is itself a valid `--config` file.

Validation refuses an unknown key (suggesting the nearest one), a value of the wrong type, one
outside the range or choices listed here and a number that is not finite, naming the key, the
value and what is allowed. Then come the rules that tie keys together: the shares of
`prepare.splits` sum to 1; `model.min_pixels` <= `model.max_pixels`; for `sft` and `grpo`,
`global_batch_size` is divisible by `num_workers` x `gradient_accumulation_steps`, `save_steps`
is a multiple of `eval_steps`, `model.dtype` bfloat16 or float16 needs `use_gpu: true`, and LoRA
does not train under `zero_stage: 3`; `grpo.num_generations` divides the GRPO global batch;
`reward.mode: weighted_sum` needs at least one positive weight.
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _yaml_value(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000)
    return text.removesuffix("\n...\n").strip()


def _allowed(metadata: typing.Mapping[str, Any]) -> str:
    if metadata.get("choices"):
        return ", ".join(f"`{_yaml_value(choice)}`" for choice in metadata["choices"])
    lo, hi = metadata.get("lo"), metadata.get("hi")
    if lo is not None and hi is not None:
        return f"{lo} .. {hi}"
    if lo is not None:
        return f">= {lo}"
    return f"<= {hi}" if hi is not None else ""


def _default(spec: dataclasses.Field) -> Any:
    if spec.default is not dataclasses.MISSING:
        return spec.default
    return spec.default_factory()


def sections(cls: type = GeorConfig, prefix: str = "") -> list[tuple[str, type]]:
    """Every section as ``(dotted name, dataclass)``, nested ones (``model.lora``) after their parent."""
    found = []
    for spec in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[spec.name]
        if dataclasses.is_dataclass(hint):
            name = f"{prefix}{spec.name}"
            found.append((name, hint))
            found.extend(sections(hint, f"{name}."))
    return found


def keys(cls: type) -> list[tuple[str, str, dataclasses.Field]]:
    """A section's own keys (nested sections left out) as ``(name, type name, field)``."""
    hints = typing.get_type_hints(cls)
    return [
        (spec.name, getattr(hints[spec.name], "__name__", str(hints[spec.name])), spec)
        for spec in dataclasses.fields(cls)
        if not dataclasses.is_dataclass(hints[spec.name])
    ]


def _preset_table() -> list[str]:
    lines = ["## Presets", "", "| preset | extends | what it is for |", "|---|---|---|"]
    for name in preset_names():
        text = (resources.files("configs") / f"{name}.yaml").read_text()
        comment = []
        for line in text.splitlines():
            if not line.startswith("#"):
                break
            comment.append(line.lstrip("# ").strip())
        data = yaml.safe_load(text) or {}
        extends = f"`{data['extends']}`" if data.get("extends") else ""
        label = f"[`{name}`](../configs/{name}.yaml)" + (" (default)" if name == DEFAULT_PRESET else "")
        lines.append(f"| {label} | {extends} | {_cell(' '.join(comment))} |")
    return lines


def _section_table(name: str, cls: type) -> list[str]:
    lines = [f"### `{name}`", "", _cell(" ".join((cls.__doc__ or "").split())), ""]
    lines += ["| key | type | default | allowed | what it does |", "|---|---|---|---|---|"]
    for key, type_name, spec in keys(cls):
        default = _cell(_yaml_value(_default(spec)))
        allowed = _cell(_allowed(spec.metadata))
        doc = _cell(spec.metadata.get("doc", ""))
        lines.append(f"| `{name}.{key}` | {type_name} | `{default}` | {allowed} | {doc} |")
    return lines


def render_reference() -> str:
    """docs/configuration.md as it should read for the schema and presets installed now."""
    lines = [INTRO, *_preset_table(), "", "## Sections", ""]
    lines.append(" · ".join(f"[`{name}`](#{name.replace('.', '')})" for name, _ in sections()))
    for name, cls in sections():
        lines += ["", *_section_table(name, cls)]
    return "\n".join(lines) + "\n"
