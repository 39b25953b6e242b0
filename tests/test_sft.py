"""`geor sft`: Ray Train + DeepSpeed + TRL on the synthetic world, with the test preset.

The 2-worker runs are short (a handful of steps) and check mechanics: loss falls, every
trainable parameter changes, the export reloads with plain transformers and generates, a killed
worker resumes from its checkpoint (inside the ZeRO-2 run, so no extra training run). Learning is
checked on the session's shared SFT checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from geor_core import uris
from geor_core.config import ConfigError, load_config
from geor_core.errors import UserFacingError
from tasks.sft import check_inputs, run_sft
from tasks.training_worker import FAULT_STEP_ENV

SHORT = ["sft.max_steps=12", "sft.logging_steps=2", "sft.eval_steps=6", "sft.save_steps=6"]
TWO_WORKERS = ["sft.num_workers=2", "sft.cpus_per_worker=0.5", "sft.per_device_batch_size=4"]


def _weights(directory: str | Path) -> dict:
    return load_file(str(Path(directory) / "model.safetensors"))


def _assert_trained_export(result, base_dir: Path) -> None:
    marker = uris.read_marker(result.export_uri)
    losses = [entry["loss"] for entry in marker["log_history"] if "loss" in entry]
    assert losses[-1] < losses[0] - 0.3, f"loss did not fall: {losses}"
    before, after = _weights(base_dir), _weights(result.export_uri)
    assert before.keys() <= after.keys()  # ZeRO exports also write the tied lm_head
    unchanged = [name for name in before if (before[name] == after[name]).all()]
    assert not unchanged, f"parameters that did not change: {unchanged}"

    from PIL import Image
    from transformers import AutoModelForImageTextToText

    import geor_core.training.image_processor  # noqa: F401  (registers the image-only processor)
    from geor_core.training.generation import generate
    from geor_core.training.model_loading import load_processor

    model = AutoModelForImageTextToText.from_pretrained(result.export_uri)
    processor = load_processor(result.export_uri)
    text = generate(model, processor, [Image.new("RGB", (56, 56), (200, 30, 30))], max_new_tokens=8)
    assert isinstance(text[0], str) and text[0]


def test_two_workers_train_and_export_and_resume_a_killed_worker(
    prepared_world, tiny_model_dir, tmp_path, mlflow_server, monkeypatch
):
    """ZeRO-3 (parameters partitioned, gathered for the export) on 2 workers, and rank 1 exits at
    step 10 (checkpoints every 4 steps). Ray registers a checkpoint once it has collected every
    worker's report, so the one saved just before the kill (8) may be lost: the run must resume
    from 4 or 8, never from scratch, and finish all 12 steps with the same guarantees as an
    uninterrupted run. ZeRO-2 on 2 workers is the GRPO test's (tests/test_grpo.py), ZeRO-2 on one
    the shared checkpoint's."""
    zero_stage = 3
    overrides = [*SHORT, *TWO_WORKERS, f"sft.zero_stage={zero_stage}", f"tracking.uri={mlflow_server}"]
    monkeypatch.setenv(FAULT_STEP_ENV, f"10:1:{tmp_path / 'killed-once'}")
    overrides += ["sft.save_steps=4", "sft.eval_steps=4", "sft.max_failures=1"]
    overrides += ["sft.max_seconds=3600"]  # a budget never spent: the ranks agree on it every step
    overrides += ["sft.stream_rows_above=0"]  # the split streams through Ray Data, however small
    output = str(tmp_path / "out")
    result = run_sft(load_config("test", overrides), prepared_world, str(tiny_model_dir), output)
    assert not result.skipped and result.global_step == 12
    assert (tmp_path / "killed-once").exists(), "the fault was never injected"
    assert result.resumed_from_step in (4, 8), f"resumed from step {result.resumed_from_step}"
    assert uris.read_marker(result.export_uri)["stopped_by_time_budget"] is False
    # rank 0 streamed its shard: the rows of its 12 steps (and the batches prefetched), never the split
    streamed = uris.read_marker(result.export_uri)
    assert streamed["train_streamed"] is True
    assert 0 < streamed["train_rows_held"] < streamed["train_split_rows"] // 2, streamed
    _assert_trained_export(result, tiny_model_dir)

    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server)
    runs = client.search_runs(
        [client.get_experiment_by_name("geo-r").experiment_id],
        f"tags.`geor.export_uri` = '{result.export_uri}'",
    )
    assert len(runs) == 1
    run = runs[0]
    assert {"loss", "learning_rate", "samples_per_s"} <= set(run.data.metrics)
    assert run.data.params["sft.zero_stage"] == str(zero_stage)
    assert run.inputs.dataset_inputs, "training data not logged as a dataset input"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "deepspeed_config.json" in artifacts
    # the export is the run's logged MLflow model, named in its marker; its processor carries its code
    marker = uris.read_marker(result.export_uri)
    assert marker["mlflow_run_id"] == run.info.run_id
    assert marker["mlflow_model_uri"] == f"models:/{marker['mlflow_model_id']}"
    assert client.get_logged_model(marker["mlflow_model_id"]).source_run_id == run.info.run_id
    assert [o.model_id for o in client.get_run(run.info.run_id).outputs.model_outputs] == [
        marker["mlflow_model_id"]
    ]
    assert "auto_map" in json.loads((Path(result.export_uri) / "processor_config.json").read_text())

    again = run_sft(load_config("test", overrides), prepared_world, str(tiny_model_dir), output)
    assert again.skipped and again.global_step == 12


def test_inputs_are_checked_before_any_worker_starts(prepared_world, tiny_model_dir, tmp_path):
    cfg = load_config("test")
    with pytest.raises(UserFacingError, match="not a complete `geor prepare` output"):
        check_inputs(cfg, str(tmp_path), str(tiny_model_dir))
    with pytest.raises(UserFacingError, match="has no config.json"):
        check_inputs(cfg, prepared_world, str(tmp_path))
    with pytest.raises(UserFacingError, match="8 workers x 1.5 CPUs = 12.0 CPUs, but the cluster has 2"):
        check_inputs(
            load_config("test", ["sft.num_workers=8", "sft.cpus_per_worker=1.5"]),
            prepared_world,
            str(tiny_model_dir),
        )
    with pytest.raises(UserFacingError, match="needs 1 GPUs; the cluster has 0"):
        check_inputs(load_config("test", ["sft.use_gpu=true"]), prepared_world, str(tiny_model_dir))
    empty = tmp_path / "empty"
    empty.mkdir()
    uris.write_marker(str(empty), {"stats": {"splits": {"train": 0, "val": 3}}})
    with pytest.raises(UserFacingError, match="empty train split"):
        check_inputs(cfg, str(empty), str(tiny_model_dir))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["sft.global_batch_size=10", "sft.num_workers=4"], "must be divisible by sft.num_workers"),
        (["model.lora.enabled=true", "sft.zero_stage=3"], "LoRA adapters train under ZeRO 0 or 2"),
        (["model.dtype=bfloat16"], "DeepSpeed on CPU trains in float32"),
    ],
)
def test_incompatible_training_options_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("test", override)


def test_shared_sft_checkpoint_learns_the_chain_format(sft_checkpoint, prepared_world, tiny_model_dir):
    """After the test preset's SFT, completions parse and name the right country far more often
    than the untrained model's (which writes no parseable answer at all)."""
    from geor_core.data.dataset import read_prepared
    from geor_core.data.images import load_image
    from geor_core.geo.countries import country_code
    from geor_core.geo.parse import parse_completion
    from geor_core.training.generation import generate
    from geor_core.training.model_loading import load_model, load_processor

    rows = read_prepared(prepared_world, columns=["image", "country_code", "split"]).to_pylist()
    rows = [r for r in rows if r["split"] != "train"]
    assert len(rows) >= 40
    images = [load_image(r["image"], load_config("test").model) for r in rows]
    scores = {}
    for name, source in (("untrained", str(tiny_model_dir)), ("sft", sft_checkpoint.export_uri)):
        model, processor = load_model(source), load_processor(source)
        texts = []
        for start in range(0, len(images), 16):
            texts += generate(model, processor, images[start : start + 16], max_new_tokens=96)
        parsed = [parse_completion(t) for t in texts]
        scores[name] = {
            "format_rate": sum(p.format_ok for p in parsed) / len(rows),
            "country_acc": sum(
                country_code(p.country or "") == r["country_code"] for p, r in zip(parsed, rows, strict=True)
            )
            / len(rows),
        }
    print(json.dumps({"sft_learning": scores, "rows": len(rows)}))
    assert scores["sft"]["format_rate"] >= 0.9
    assert scores["sft"]["country_acc"] >= scores["untrained"]["country_acc"] + 0.4


def test_a_streamed_split_runs_the_steps_of_its_epochs():
    """A stream has no length: sft.max_steps <= 0 becomes the steps of num_epochs passes over each
    worker's equal share, as the Trainer counts a map-style split; a set max_steps is kept."""
    from geor_core.training.sft_setup import streamed_max_steps

    two = load_config("test", [*TWO_WORKERS, "sft.max_steps=-1", "sft.num_epochs=2"]).sft
    assert streamed_max_steps(two, 544) == 2 * 68  # 272 rows a worker, 4 a batch
    assert streamed_max_steps(two, 545) == 2 * 68  # the equal split drops the odd row
    accumulated = load_config("test", ["sft.max_steps=-1", "sft.gradient_accumulation_steps=3"]).sft
    assert streamed_max_steps(accumulated, 100) == 5  # 13 batches of 8, 3 a step
    assert streamed_max_steps(load_config("test").sft, 10**6) == 300


def test_cpu_workers_never_compile_deepspeeds_shared_memory_op():
    """What a CPU Train worker does before its process group starts: DeepSpeed then builds no
    shared-memory op (70-213 s of C++ compilation in a fresh venv, never used by training)."""
    from deepspeed.comm.torch import build_shm_op

    from tasks.training_worker import skip_shared_memory_comm_build

    skip_shared_memory_comm_build()
    assert build_shm_op() is None
