"""A complete dataset as an input of the active MLflow run: source URI, the marker's fingerprint as
digest (so a URI has one digest, whichever run logs it), row count and splits as profile, and the
schema of its rows. Logged only once the dataset's completion marker exists; no data is read.
"""

from __future__ import annotations

import json
import sys
import warnings
from typing import Any

from geor_core import uris
from geor_core.registry.lineage import data_fingerprint


def log_dataset(uri: str, name: str, context: str, schema: Any = None) -> str | None:
    """Record the complete dataset at ``uri`` as an input of the active run: its source URI, its
    marker's fingerprint as digest, its row count and splits (from the marker's stats) as profile,
    and ``schema`` (a pyarrow schema of its rows) as an MLflow schema; no data is read. Returns
    the fingerprint, or None when no run is active. A dataset without its completion marker is
    not complete: ValueError (its fingerprint would change once the marker is written)."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is None or mlflow.active_run() is None:
        return None
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import Dataset as DatasetEntity
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    marker = uris.read_marker(uri)
    if marker is None:
        raise ValueError(f"dataset {uri} has no {uris.MARKER_NAME}: log it once it is complete")
    fingerprint = data_fingerprint(uri)
    source_uri = uri if uris.is_s3(uri) else uris.filesystem(uri)[1]
    with warnings.catch_warnings():
        # Local paths match the "" and "file" sources, which are the same class: not ambiguous.
        warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways")
        source = resolve_dataset_source(source_uri)
    config = MetaDataset(source, name=name, digest=fingerprint, schema=_mlflow_schema(schema)).to_dict()
    stats = marker.get("stats", marker)
    profile = {"num_rows": stats.get("rows_out", stats.get("rows")), "splits": stats.get("splits")}
    entity = DatasetEntity(
        name=config["name"],
        digest=config["digest"],
        source_type=config["source_type"],
        source=config["source"],
        schema=config.get("schema"),
        profile=json.dumps({k: v for k, v in profile.items() if v is not None}),
    )
    client = mlflow.MlflowClient()
    client.log_inputs(
        mlflow.active_run().info.run_id,
        [DatasetInput(entity, [InputTag(MLFLOW_DATASET_CONTEXT, context)])],
    )
    return fingerprint


def _mlflow_schema(schema: Any) -> Any:
    """A pyarrow schema as an MLflow column schema (None stays None)."""
    if schema is None:
        return None
    import pyarrow as pa
    from mlflow.types import ColSpec, DataType, Schema

    def kind(arrow: Any) -> DataType:
        checks = (
            (pa.types.is_boolean, DataType.boolean),
            (pa.types.is_integer, DataType.long),
            (pa.types.is_float32, DataType.float),
            (pa.types.is_floating, DataType.double),
            (pa.types.is_timestamp, DataType.datetime),
            (lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t), DataType.binary),
        )
        return next((dtype for check, dtype in checks if check(arrow)), DataType.string)

    return Schema([ColSpec(kind(field.type), field.name, required=not field.nullable) for field in schema])
