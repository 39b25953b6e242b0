"""Model loading, the tiny model and its processor, batched generation, LoRA, presets, clear errors.

No test reaches the network: tests/plugins/models.py sets HF_HUB_OFFLINE=1 before anything imports
huggingface_hub, and the only servers used are the session's loopback ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from flows.cli import main
from flows.commands import make_tiny_model_command as make_tiny_model
from geor_core.config import LoraConfig, ModelConfig, load_config, preset_names
from geor_core.errors import UserFacingError
from geor_core.geo.cor import cor_target
from geor_core.geo.prompts import INSTRUCTION, user_turn
from tests.plugins.models import run_command

STREETSCAPES = Path(__file__).parent / "fixtures" / "streetscapes"
PIXELS_PER_IMAGE_TOKEN = 28 * 28  # 14 px patches merged 2x2


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    """(model, processor) loaded through geor_core.training.model_loading with the test preset's settings."""
    from geor_core.training.model_loading import load_model, load_processor

    cfg = load_config("test", [f"model.name_or_path={tiny_model_dir}"])
    return load_model(cfg.model), load_processor(cfg.model)


def _street_photo() -> Image.Image:
    return Image.open(STREETSCAPES / pd.read_csv(STREETSCAPES / "manifest.csv")["image"].iloc[0])


def _world_photo(world_dir: Path) -> Image.Image:
    return Image.open(world_dir / pd.read_csv(world_dir / "manifest.csv")["image"].iloc[0])


def test_tiny_model_reloads_with_plain_transformers_and_generates(tiny_model_dir, world_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import geor_core.training.image_processor  # noqa: F401  (registers the image-only processor with AutoProcessor)
    from geor_core.training.generation import generate

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(processor).__name__ == "ImageOnlyQwen2_5_VLProcessor"
    assert (tiny_model_dir / "model.safetensors").is_file()
    assert processor.chat_template and processor.tokenizer.chat_template
    params = sum(p.numel() for p in model.parameters())
    assert 1_000_000 < params < 2_000_000, params  # the measured size, 1.24M (docs/design.md)
    assert model.config.text_config.vocab_size == len(processor.tokenizer) == 1024

    completions = generate(model, processor, [_street_photo(), _world_photo(world_dir)], max_new_tokens=12)
    assert len(completions) == 2
    assert all(isinstance(text, str) and text for text in completions)


# Run in a fresh interpreter that cannot import the project: only transformers and the export.
PLAIN_TRANSFORMERS = """
import importlib.abc, json, sys
class NoProject(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("geor_core", "tasks", "flows"):
            raise ImportError(f"{name} is not importable here")
sys.meta_path.insert(0, NoProject())
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
export = sys.argv[1]
try:
    refused = type(AutoProcessor.from_pretrained(export)).__name__
except ValueError as exc:
    refused = str(exc)
processor = AutoProcessor.from_pretrained(export, trust_remote_code=True)
model = AutoModelForImageTextToText.from_pretrained(export)
turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Where?"}]}]
text = processor.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
inputs = processor(text=[text], images=[Image.new("RGB", (64, 48), (200, 30, 30))], return_tensors="pt")
new = model.generate(**inputs, max_new_tokens=5, do_sample=False)[0, inputs["input_ids"].shape[1]:]
print("RESULT", json.dumps({
    "refused": refused, "processor": type(processor).__name__, "inputs": sorted(inputs),
    "new_tokens": len(new), "answer": processor.decode(new, skip_special_tokens=True),
    "project_imported": [m for m in sys.modules if m.split(".")[0] in ("geor_core", "tasks", "flows")],
}))
"""


def test_export_loads_with_plain_transformers_in_a_fresh_interpreter(tiny_model_dir, tmp_path):
    """The export names its processor in an ``auto_map`` and carries the class's source: AutoProcessor
    with trust_remote_code gives a processor that takes images (not a bare tokenizer), and without it
    transformers refuses loudly instead of dropping the image."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "hf-modules")  # where transformers copies the export's code
    done = subprocess.run(
        [sys.executable, "-c", PLAIN_TRANSFORMERS, str(tiny_model_dir)],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.rpartition("RESULT ")[2])  # after transformers' own prompt
    assert "trust_remote_code=True" in result["refused"]
    assert result["processor"] == "ImageOnlyQwen2_5_VLProcessor"
    assert {"pixel_values", "image_grid_thw", "input_ids"} <= set(result["inputs"])
    assert result["new_tokens"] > 0 and result["answer"]
    assert result["project_imported"] == []
    saved = json.loads((tiny_model_dir / "processor_config.json").read_text())
    assert saved["auto_map"] == {"AutoProcessor": "image_processor.ImageOnlyQwen2_5_VLProcessor"}


def test_load_processor_reads_exports_with_and_without_the_auto_map(tiny_model_dir, tmp_path):
    """Exports saved before the processor carried its code (no ``auto_map``) still load, and a
    training stage's export (``load_processor`` then ``save_pretrained``) carries the code."""
    import shutil

    from geor_core.training.model_loading import load_processor

    old = tmp_path / "old-export"
    shutil.copytree(tiny_model_dir, old)
    (old / "image_processor.py").unlink()
    for name in ("processor_config.json", "tokenizer_config.json"):
        config = json.loads((old / name).read_text())
        config.pop("auto_map")
        config.get("image_processor", {}).pop("auto_map", None)
        (old / name).write_text(json.dumps(config))
    for export in (tiny_model_dir, old):
        processor = load_processor(str(export))
        assert type(processor).__name__ == "ImageOnlyQwen2_5_VLProcessor"
        assert type(processor).__module__ == "geor_core.training.image_processor"  # never the export's copy
        encoded = processor(text=["x <|image_pad|>"], images=[_street_photo().convert("RGB")])
        assert len(encoded["pixel_values"]) > 0
    processor.save_pretrained(tmp_path / "re-export")  # what every training worker does
    saved = json.loads((tmp_path / "re-export" / "processor_config.json").read_text())
    assert saved["auto_map"]["AutoProcessor"] == "image_processor.ImageOnlyQwen2_5_VLProcessor"
    assert (tmp_path / "re-export" / "image_processor.py").is_file()


def test_tiny_model_build_is_deterministic(tmp_path):
    from geor_core.training.tiny_model import save_tiny_model

    first, second = tmp_path / "a", tmp_path / "b"
    sizes = save_tiny_model(first, 3136, 3136, seed=0)
    assert save_tiny_model(second, 3136, 3136, seed=0) == sizes
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_tokenizer_fits_the_task(tiny):
    _, processor = tiny
    tokenizer = processor.tokenizer
    digits = tokenizer("(43.452002, 142.615358)", add_special_tokens=False).input_ids
    pieces = tokenizer.convert_ids_to_tokens(digits)
    assert [p for p in pieces if any(ch.isdigit() for ch in p)] == list("43452002142615358")
    for token in ("<|im_start|>", "<|im_end|>", "<|image_pad|>", "<think>", "</answer>"):
        assert len(tokenizer(token, add_special_tokens=False).input_ids) == 1, token
    target = cor_target("row-1", "Japan", "Hokkaido", "Biei", 43.452002, 142.615358, seed=0)
    ids = tokenizer(target + "<|im_end|>", add_special_tokens=False).input_ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == target  # tags kept, end of turn dropped
    assert len(ids) < 90  # sequence length is training cost
    prompt = processor.apply_chat_template(user_turn(), add_generation_prompt=True, tokenize=False)
    assert INSTRUCTION in prompt and prompt.endswith("<|im_start|>assistant\n")
    assert len(tokenizer(prompt, add_special_tokens=False).input_ids) < 64


def test_chat_template_on_tokenizer_and_processor_agree(tiny, world_dir):
    _, processor = tiny
    conversation = user_turn()
    as_processor = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    as_tokenizer = processor.tokenizer.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=False
    )
    assert as_processor == as_tokenizer
    # GRPO's path: tokenize=True, return_dict=True, with the image
    encoded = processor.apply_chat_template(
        [
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": _world_photo(world_dir)},
                    {"type": "text", "text": "x"},
                ],
            }
        ],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert list(encoded["input_ids"][0]).count(image_pad) == 56 * 56 // PIXELS_PER_IMAGE_TOKEN  # 4 tokens
    assert list(encoded["image_grid_thw"][0]) == [1, 4, 4]


@pytest.mark.parametrize("max_pixels", [3136, 28 * 28 * 16])
def test_load_processor_applies_the_configured_image_budget(tiny_model_dir, max_pixels):
    from geor_core.training.model_loading import load_processor

    processor = load_processor(
        ModelConfig(name_or_path=str(tiny_model_dir), min_pixels=3136, max_pixels=max_pixels)
    )
    text = processor.apply_chat_template(user_turn(), add_generation_prompt=True, tokenize=False)
    encoded = processor(text=[text], images=[_street_photo().convert("RGB")], return_tensors="pt")
    image_tokens = int((encoded["input_ids"] == processor.image_token_id).sum())
    assert (
        max(1, max_pixels // PIXELS_PER_IMAGE_TOKEN // 2)
        <= image_tokens
        <= max_pixels // PIXELS_PER_IMAGE_TOKEN
    )


def test_batched_generation_matches_one_by_one_and_sampling_is_seeded(tiny, world_dir):
    from geor_core.training.generation import generate

    model, processor = tiny
    images = [_street_photo(), _world_photo(world_dir), _street_photo()]
    prompts = [user_turn(), user_turn("Where is this?"), user_turn()]  # different lengths: left padding
    batched = generate(model, processor, images, prompts, max_new_tokens=12)
    single = [
        generate(model, processor, [i], [p], max_new_tokens=12)[0]
        for i, p in zip(images, prompts, strict=True)
    ]
    assert batched == single
    assert all("<|im_end|>" not in text and "<|endoftext|>" not in text for text in batched)

    def sample(seed: int) -> list[str]:
        return generate(
            model, processor, images, prompts, max_new_tokens=8, do_sample=True, temperature=1.0, seed=seed
        )

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)
    with pytest.raises(ValueError, match="2 images and 1 prompts"):
        generate(model, processor, images[:2], prompts[:1], max_new_tokens=4)


def test_lora_adapters_attach_and_only_they_train(tiny_model_dir):
    import torch

    from geor_core.training.model_loading import apply_lora, load_model

    model = load_model(str(tiny_model_dir))
    assert apply_lora(model, LoraConfig(enabled=False)) is model
    wrapped = apply_lora(model, LoraConfig(enabled=True, r=4, alpha=8))
    trainable = {name for name, p in wrapped.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    assert any(".q_proj." in name for name in trainable) and any(".o_proj." in name for name in trainable)
    frozen = [p for name, p in wrapped.named_parameters() if "lora_" not in name]
    assert frozen and not any(p.requires_grad for p in frozen)
    ids = torch.tensor([[1, 20, 30, 2]], device=wrapped.device)
    wrapped(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None for name, p in wrapped.named_parameters() if "lora_B" in name)

    with pytest.raises(UserFacingError, match="no_such_proj"):
        apply_lora(load_model(str(tiny_model_dir)), LoraConfig(enabled=True, target_modules=["no_such_proj"]))


@pytest.mark.parametrize("preset", ["qwen2.5-vl-3b", "qwen2.5-vl-7b"])
def test_real_presets_validate_and_fail_clearly_offline(preset):
    from geor_core.training.model_loading import load_model, load_processor

    cfg = load_config(preset)
    assert cfg.model.dtype == "bfloat16" and cfg.sft.zero_stage == 3
    image_tokens = cfg.model.max_pixels // PIXELS_PER_IMAGE_TOKEN
    assert image_tokens + 128 <= 512  # the image fits the paper's 512-token prompt
    hub_id = cfg.model.name_or_path
    cpu = load_config(preset, ["model.device=cpu"]).model
    for load in (load_model, load_processor):
        with pytest.raises(UserFacingError) as caught:
            load(cpu)
        message = str(caught.value)
        assert hub_id in message and "HF_HUB_OFFLINE" in message and "download" in message


def test_every_preset_validates():
    for preset in preset_names():
        load_config(preset)


def test_missing_local_model_names_the_path_and_the_fix(tmp_path, monkeypatch):
    from geor_core.training.model_loading import load_model, load_processor

    missing = tmp_path / "no-such-model"
    for load in (load_model, load_processor):
        with pytest.raises(UserFacingError, match="make-tiny-model") as caught:
            load(str(missing))
        assert str(missing) in str(caught.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserFacingError, match="no config.json"):
        load_model(str(tmp_path / "empty"))
    with pytest.raises(UserFacingError, match="model.name_or_path is empty"):
        load_model("")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserFacingError, match="MLFLOW_TRACKING_URI"):
        load_model("models:/geo-r@champion")
    assert not (tmp_path / "mlflow.db").exists()


def test_dtype_and_device_resolution():
    import torch

    from geor_core.training.model_loading import resolve_device, resolve_dtype

    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda") == torch.bfloat16
    assert resolve_dtype("float16", "cpu") == torch.float16
    assert resolve_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device("auto") == "cpu"
        with pytest.raises(UserFacingError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_model_loads_from_s3_through_the_local_cache(
    tiny_model_dir, s3_server, s3_prefix, tmp_path, monkeypatch
):
    from geor_core import uris
    from geor_core.training.model_loading import load_model, load_processor

    s3_server.fs.put(str(tiny_model_dir) + "/", s3_prefix.removeprefix("s3://"), recursive=True)
    copies = []
    copy_to_local = uris.copy_to_local
    monkeypatch.setattr(uris, "copy_to_local", lambda *a: copies.append(a) or copy_to_local(*a))
    cfg = ModelConfig(
        name_or_path=s3_prefix, cache_dir=str(tmp_path / "cache"), min_pixels=3136, max_pixels=3136
    )
    model, processor = load_model(cfg), load_processor(cfg)
    assert model.config.model_type == "qwen2_5_vl" and processor.image_token == "<|image_pad|>"
    assert len(copies) == 1  # the processor reused the model's cached copy (same completion marker)
    cached = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert len(cached) == 1 and (cached[0] / "model.safetensors").is_file()
    with pytest.raises(UserFacingError, match="no config.json"):
        load_model(ModelConfig(name_or_path=s3_prefix + "-missing", cache_dir=str(tmp_path / "cache")))


def test_model_loads_from_the_mlflow_registry(tiny_model_dir, mlflow_server, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from geor_core.training.model_loading import load_model

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    client = MlflowClient(tracking_uri=mlflow_server)
    name = f"tiny-{uuid.uuid4().hex[:8]}"
    run = client.create_run(client.create_experiment(name))
    client.log_artifacts(run.info.run_id, str(tiny_model_dir), artifact_path="model")
    client.set_terminated(run.info.run_id)
    client.create_registered_model(name)
    version = client.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    client.set_registered_model_alias(name, "champion", version.version)

    model = load_model(ModelConfig(name_or_path=f"models:/{name}@champion", cache_dir=str(tmp_path)))
    assert model.config.model_type == "qwen2_5_vl"
    with pytest.raises(UserFacingError, match=f"{name}@nobody"):
        load_model(ModelConfig(name_or_path=f"models:/{name}@nobody", cache_dir=str(tmp_path)))


def test_make_tiny_model_command_skips_a_complete_build_and_refuses_another(tmp_path, capsys, monkeypatch):
    output = tmp_path / "tiny"
    assert run_command(make_tiny_model, ["--output", str(output), "--config", "test"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["parameters"] > 1_000_000 and (output / "_SUCCESS.json").is_file()
    assert run_command(make_tiny_model, ["--output", str(output), "--config", "test"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] is True
    monkeypatch.setattr(sys, "argv", ["geor"])
    assert main(["make-tiny-model", "--output", str(output), "--seed", "3"]) == 2
    assert "--overwrite" in capsys.readouterr().err
