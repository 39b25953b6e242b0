"""Tracking and registry: MLflow runs and lineage, the model registry and champion gate, the run lock and pipeline stage records."""
