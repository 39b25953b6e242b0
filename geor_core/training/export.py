"""Publish a finished Hugging Face model directory to its URI, completion marker last.

The export of every training stage is a plain `save_pretrained` directory (weights in
safetensors, config, processor) that transformers loads without this package
(``AutoModelForImageTextToText``; ``AutoProcessor`` with ``trust_remote_code=True`` where the
processor carries its code: geor_core.training.image_processor). The marker records where it came
from so later stages and the registry can check lineage; once the stage's MLflow run has logged
the export as a model (geor_core.training.served_model), the marker also names that model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from geor_core import uris


def publish_model_dir(local_dir: str | Path, uri: str, marker: dict[str, Any]) -> str:
    """Copy ``local_dir`` to ``uri`` (replacing what was there) and write the marker last."""
    local_dir = Path(local_dir)
    uris.remove_tree(uri)
    fs, root = uris.filesystem(uri)
    for path in sorted(local_dir.rglob("*")):
        if path.is_file():
            target = f"{root.rstrip('/')}/{path.relative_to(local_dir).as_posix()}"
            fs.makedirs(os.path.dirname(target), exist_ok=True)
            fs.put_file(str(path), target)
    uris.write_marker(uri, marker)
    return uri
