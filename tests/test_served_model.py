"""The export as an MLflow model: logged from a run with its signature and input example, registered
from that logged model, loaded through ``mlflow.pyfunc`` and served by ``mlflow models serve``.

Uses the session's MLflow server and tiny model; no training run (the tiny model stands in for a
stage's export: both are written by the same ``save_pretrained``).
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import urllib.request
import uuid
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from geor_core import uris
from geor_core.config import ModelConfig, load_config
from geor_core.errors import UserFacingError
from geor_core.registry import registry
from geor_core.training import served_model
from tests.plugins.servers import BIN, LOCALHOST, console_script, free_port, start_server, stop_process_group

STREETSCAPES = Path(__file__).parent / "fixtures" / "streetscapes"
OUTPUTS = ["country", "state", "city", "lat", "lon", "answer", "error"]


def _png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (60, 40), color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def logged(tiny_model_dir, mlflow_server):
    """The tiny model logged as the MLflow model of a run, like a training stage's export."""
    import mlflow

    cfg = load_config("test", [f"model.name_or_path={tiny_model_dir}", "eval.max_new_tokens=6"])
    mlflow.set_tracking_uri(mlflow_server)
    experiment = mlflow.MlflowClient().create_experiment(f"served-{uuid.uuid4().hex[:8]}")
    with mlflow.start_run(experiment_id=experiment) as run:
        keys = served_model.log_export(cfg, str(tiny_model_dir), "sft")
    return keys, run.info.run_id


def test_logged_model_registers_predicts_and_serves(logged, mlflow_server, tmp_path, monkeypatch):
    import mlflow

    keys, run_id = logged
    model_uri, model_id = keys[uris.MARKER_MODEL_URI], keys[uris.MARKER_MODEL_ID]
    assert model_uri == f"models:/{model_id}" and keys[uris.MARKER_RUN_ID] == run_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    client = registry.client(mlflow_server)
    info = mlflow.models.get_model_info(model_uri)
    assert info.signature.inputs.input_names() == ["image", "image_bytes"]
    assert info.signature.outputs.input_names() == OUTPUTS
    assert info.saved_input_example_info is not None and info.run_id == run_id
    assert [o.model_id for o in client.get_run(run_id).outputs.model_outputs] == [model_id]

    name = f"geo-r-{uuid.uuid4().hex[:8]}"
    version = registry.register_logged_model(client, name, model_uri, {"geor.stage": "sft"}, "SFT of tiny")
    mv = client.get_model_version(name, version.version)
    # the version's source is the logged model (an OSS store keeps no separate model_id column)
    assert (mv.source, mv.run_id, mv.description) == (model_uri, run_id, "SFT of tiny")
    listed = json.loads(client.get_logged_model(model_id).tags["mlflow.modelVersions"])
    assert listed == [{"name": name, "version": version.version}]
    with pytest.raises(UserFacingError, match="cannot register models:/m-0000: not on http://127.0.0.1"):
        registry.register_logged_model(client, name, "models:/m-0000", {})
    client.set_registered_model_alias(name, registry.CHAMPION, version.version)
    champion = f"models:/{name}@{registry.CHAMPION}"
    assert mlflow.models.get_model_info(champion).model_id == model_id

    # the project's own loader still reads a registered version (the HF directory inside the model)
    from geor_core.training.model_loading import load_model

    loaded = load_model(ModelConfig(name_or_path=champion, cache_dir=str(tmp_path)))
    assert loaded.config.model_type == "qwen2_5_vl"

    model = mlflow.pyfunc.load_model(champion)
    photo = str(STREETSCAPES / pd.read_csv(STREETSCAPES / "manifest.csv")["image"].iloc[0])
    frame = pd.DataFrame(
        {"image": [photo, str(tmp_path / "missing.jpg"), None], "image_bytes": [None, None, _png((9, 90, 9))]}
    )
    out = model.predict(frame)
    assert list(out.columns) == OUTPUTS and len(out) == 3
    assert list(out["error"][[0, 2]]) == ["", ""] and all(out["answer"][[0, 2]])
    assert "missing.jpg" in out["error"][1] and out["answer"][1] == "" and math.isnan(out["lat"][1])

    # the answer is parsed by the project's rule
    answer = "<answer>Country: Japan; State: Hokkaido; City: Biei; Coordinates: (43.45, 142.62)</answer>"
    monkeypatch.setattr(
        "geor_core.training.generation.generate", lambda m, p, images, **kw: [answer] * len(images)
    )
    parsed = model.predict(pd.DataFrame({"image_bytes": [_png((1, 2, 3))]})).iloc[0]
    fields = (parsed.country, parsed.state, parsed.city, parsed.lat, parsed.lon)
    assert fields == ("Japan", "Hokkaido", "Biei", 43.45, 142.62)
    with pytest.raises(mlflow.exceptions.MlflowException, match="no photo column"):
        model.unwrap_python_model().predict(None, pd.DataFrame({"photo": ["x.jpg"]}))

    # served over HTTP, as from the activated virtualenv (`mlflow models serve` runs the `uvicorn` on PATH)
    url = f"http://{LOCALHOST}:{free_port()}"
    host, port = url.removeprefix("http://").split(":")
    cmd = [console_script("mlflow", "mlflow"), "models", "serve", "-m", champion, "--env-manager", "local"]
    path = f"{BIN}{os.pathsep}{os.environ['PATH']}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "PATH": path}
    log = tmp_path / "serve.log"
    server = start_server("mlflow models serve", [*cmd, "-h", host, "-p", port], f"{url}/ping", log, env, 120)
    try:
        rows = [[photo, ""], ["", base64.b64encode(_png((200, 9, 9))).decode()]]  # JSON: "" for none
        payload = {"dataframe_split": {"columns": ["image", "image_bytes"], "data": rows}}
        request = urllib.request.Request(
            f"{url}/invocations", json.dumps(payload).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            predictions = json.loads(response.read())["predictions"]
    finally:
        stop_process_group(server)
    assert [set(row) for row in predictions] == [set(OUTPUTS)] * 2
    assert [row["error"] for row in predictions] == ["", ""] and all(row["answer"] for row in predictions)
