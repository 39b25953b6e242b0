"""The model a training stage logs to MLflow: a pyfunc wrapper over its Hugging Face export.

A pyfunc wrapper rather than MLflow's ``transformers`` flavor: that flavor serves a transformers
pipeline, whose input is a prompt plus an image and whose output is raw generated text; it knows
nothing of the Chain-of-Region prompt, the bounded photo loading or the parse rule, and it needs
the stock processor, which needs torchvision. The wrapper takes photos and answers with the fields
the project scores, by the project's own code: the prompt and batched generation
(geor_core.training.generation), bounded image decoding (geor_core.data.images) and the one parse
rule (geor_core.geo.parse). The export itself is logged unchanged as the artifact ``hf_model``, a
plain ``save_pretrained`` directory that transformers loads alone.

Input, a DataFrame (over HTTP: JSON ``dataframe_split`` or ``dataframe_records``), one photo per
row in one of two columns:

- ``image``: a URI the serving host can read (a local path, ``file://`` or ``s3://``);
- ``image_bytes``: the encoded photo (JPEG, PNG...); base64 in JSON.

Over JSON, leave the unused column out, or send it as "" (MLflow cannot decode a null as bytes).

Output, one row per input row: ``country``, ``state``, ``city`` (None when the answer names
none), ``lat``, ``lon`` (NaN when the answer has no coordinate pair in range), ``answer`` (the
raw completion) and ``error`` ("" or why the row's photo could not be read: that row is not
generated, never dropped).

The settings travel as the logged model's ``model_config`` (``settings``): pixel bounds,
``max_new_tokens``, batch size and sampling; ``mlflow.pyfunc.load_model(uri, model_config={...})``
overrides them. The wrapper's code is referenced, not copied: the serving environment needs this
project installed (``mlflow models serve ... --env-manager local`` from its virtualenv).
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from geor_core import uris
from geor_core.config import GeorConfig, ModelConfig

HF_ARTIFACT = "hf_model"
IMAGE_URI, IMAGE_BYTES = "image", "image_bytes"
OUTPUT_COLUMNS = ("country", "state", "city", "lat", "lon", "answer", "error")

SIGNATURE = ModelSignature(
    inputs=Schema(
        [ColSpec("string", IMAGE_URI, required=False), ColSpec("binary", IMAGE_BYTES, required=False)]
    ),
    outputs=Schema(
        [
            *(ColSpec("string", name, required=False) for name in ("country", "state", "city")),
            ColSpec("double", "lat"),
            ColSpec("double", "lon"),
            ColSpec("string", "answer"),
            ColSpec("string", "error"),
        ]
    ),
)


def settings(cfg: GeorConfig) -> dict[str, Any]:
    """The logged model's ``model_config``: how it loads photos and generates (evaluation's settings)."""
    return {
        "min_pixels": cfg.model.min_pixels,
        "max_pixels": cfg.model.max_pixels,
        "max_image_pixels": cfg.model.max_image_pixels,
        "dtype": "auto",  # decided where the model is served: bf16 on a GPU, fp32 on CPU
        "device": "auto",
        "batch_size": cfg.eval.batch_size,
        "max_new_tokens": cfg.eval.max_new_tokens,
        "do_sample": cfg.eval.do_sample,
        "temperature": cfg.eval.temperature,
        "top_p": cfg.eval.top_p,
    }


class GeoRModel(mlflow.pyfunc.PythonModel):
    """Photos in, the parsed prediction and the raw answer out (see the module docstring)."""

    def load_context(self, context: Any) -> None:
        from geor_core.training.model_loading import load_model, load_processor

        self.settings = dict(context.model_config or {})
        keys = ("min_pixels", "max_pixels", "max_image_pixels", "dtype", "device")
        self.model_cfg = ModelConfig(
            name_or_path=context.artifacts[HF_ARTIFACT],
            **{k: self.settings[k] for k in keys if k in self.settings},
        )
        self.model = load_model(self.model_cfg)
        self.processor = load_processor(self.model_cfg)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        """One output row per input row (see the module docstring), ``batch_size`` photos at a time."""
        frame = pd.DataFrame(model_input)
        if IMAGE_URI not in frame and IMAGE_BYTES not in frame:
            raise MlflowException.invalid_parameter_value(  # HTTP 400 when served
                f"no photo column: give each row an {IMAGE_URI!r} (a URI) or {IMAGE_BYTES!r} (the encoded "
                f"photo, base64 in JSON); got columns {list(frame.columns)}"
            )
        uris_in, bytes_in = _column(frame, IMAGE_URI), _column(frame, IMAGE_BYTES)
        size = int(self.settings.get("batch_size", 16))
        rows: list[tuple] = []
        for start in range(0, len(frame), size):
            batch = range(start, min(start + size, len(frame)))
            rows += self._batch([(frame.index[i], uris_in[i], bytes_in[i]) for i in batch])
        return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))

    def _batch(self, photos: list[tuple[Any, Any, Any]]) -> list[tuple]:
        from geor_core.geo.parse import parse_many
        from geor_core.training.generation import generate

        images, errors = [], []
        for row, uri, data in photos:
            try:
                images.append(self._photo(row, uri, data))
                errors.append("")
            except Exception as exc:  # a bad photo is reported in its row, never a failed request
                images.append(None)
                errors.append(f"{type(exc).__name__}: {exc}"[:500])
        loaded = [i for i, image in enumerate(images) if image is not None]
        texts = generate(
            self.model,
            self.processor,
            [images[i] for i in loaded],
            max_new_tokens=int(self.settings.get("max_new_tokens", 256)),
            do_sample=bool(self.settings.get("do_sample", False)),
            temperature=float(self.settings.get("temperature", 1.0)),
            top_p=float(self.settings.get("top_p", 1.0)),
        )
        answers = [""] * len(images)
        for i, text in zip(loaded, texts, strict=True):
            answers[i] = text
        p = parse_many(answers)
        return list(zip(p.country, p.state, p.city, p.lat, p.lon, answers, errors, strict=True))

    def _photo(self, row: Any, uri: Any, data: Any) -> Any:
        from geor_core.data.images import decode_image, load_image

        if isinstance(data, bytes | bytearray) and data:
            return decode_image(bytes(data), f"in row {row} ({IMAGE_BYTES})", self.model_cfg)
        if isinstance(uri, str) and uri.strip():
            return load_image(uri, self.model_cfg)
        raise ValueError(f"row {row} has no photo: give it an {IMAGE_URI!r} URI or {IMAGE_BYTES!r}")


def _column(frame: pd.DataFrame, name: str) -> list[Any]:
    return list(frame[name]) if name in frame else [None] * len(frame)


def input_example() -> pd.DataFrame:
    """One row: a small grey PNG as ``image_bytes`` (what a client sends; no file needed)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (56, 56), (128, 128, 128)).save(buffer, format="PNG")
    return pd.DataFrame({IMAGE_BYTES: [buffer.getvalue()]})


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("torch", "transformers", "pillow", "pandas")]


def log_export(cfg: GeorConfig, export_uri: str, name: str) -> dict[str, str]:
    """Log the export at ``export_uri`` as an MLflow model named ``name`` from the active run: the
    wrapper, the export as its artifact, the signature, an input example and the settings.
    Returns the marker keys: the logged model's URI (``models:/m-...``) and id, and the run's id.

    Saved with ``pyfunc.save_model`` and uploaded, rather than ``pyfunc.log_model``, which would
    run the input example through the model in this process: on a cluster that loads the whole
    model on a driver with no GPU."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model

    run_id = mlflow.active_run().info.run_id
    logged = mlflow.initialize_logged_model(
        name=name, source_run_id=run_id, tags={"geor.export_uri": uris.redact_uri(export_uri)}
    )
    with tempfile.TemporaryDirectory(prefix="geor-log-model-") as scratch:
        local = (
            str(uris.copy_to_local(export_uri, Path(scratch) / "export"))
            if uris.is_s3(export_uri)
            else uris.filesystem(export_uri)[1]
        )
        saved = Path(scratch) / "mlflow-model"
        mlflow.pyfunc.save_model(
            saved,
            mlflow_model=Model(  # as Model.log makes it: the MLmodel file names the logged model
                run_id=run_id,
                model_id=logged.model_id,
                model_uuid=logged.model_id,
                artifact_path=logged.artifact_location,
            ),
            python_model=GeoRModel(),
            artifacts={HF_ARTIFACT: local},
            signature=SIGNATURE,
            input_example=input_example(),
            pip_requirements=_requirements(),
            model_config=settings(cfg),
        )
        client = mlflow.MlflowClient()
        client.log_model_artifacts(logged.model_id, str(saved))
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    mlflow.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    return {
        uris.MARKER_MODEL_URI: f"models:/{logged.model_id}",
        uris.MARKER_MODEL_ID: logged.model_id,
        uris.MARKER_RUN_ID: run_id,
    }
