"""Reading the cluster definitions for the tests that check them: ray_cluster.yaml, and every
object of the KubeRay manifests in clusters/ (RayJob manifests a ConfigMap carries unpacked), with
their RayJob specs and pod templates."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RAY_CLUSTER = ROOT / "ray_cluster.yaml"
# Kubernetes manifests; runtime_env.yaml is a Ray job's runtime env (checked in tests/test_docs.py)
MANIFESTS = sorted(p for p in (ROOT / "clusters").glob("*.yaml") if p.name != "runtime_env.yaml")


def load_manifest(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(where, object)`` for every object in a manifest file, with RayJob manifests that a
    ConfigMap carries as text (the CronJob alternative) unpacked as objects of their own."""
    found = []
    for doc in yaml.safe_load_all(path.read_text()):
        if doc is None:
            continue
        where = (
            f"{path.name}:{doc['kind']}/{doc['metadata'].get('name') or doc['metadata'].get('generateName')}"
        )
        found.append((where, doc))
        if doc["kind"] == "ConfigMap":
            for key, text in doc.get("data", {}).items():
                embedded = yaml.safe_load(text)
                if isinstance(embedded, dict) and "apiVersion" in embedded:
                    found.append((f"{where}[{key}]", embedded))
    return found


def all_objects() -> list[tuple[str, dict[str, Any]]]:
    """``(where, object)`` for every object of every manifest in clusters/."""
    return [item for path in MANIFESTS for item in load_manifest(path)]


def ray_job_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """The RayJob specs an object defines (a RayCronJob's is its jobTemplate)."""
    if obj["kind"] == "RayJob":
        return [obj["spec"]]
    if obj["kind"] == "RayCronJob":
        return [obj["spec"]["jobTemplate"]]
    return []


def pod_templates(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(part, pod template)`` for every pod an object starts (head, worker groups, submitter, job)."""
    cluster_specs = [obj["spec"]] if obj["kind"] == "RayCluster" else []
    for job in ray_job_specs(obj):
        cluster_specs += [job["rayClusterSpec"]] if "rayClusterSpec" in job else []
        if "submitterPodTemplate" in job:
            yield "submitter", job["submitterPodTemplate"]
    for spec in cluster_specs:
        yield "head", spec["headGroupSpec"]["template"]
        for group in spec.get("workerGroupSpecs", []):
            yield f"worker group {group['groupName']}", group["template"]
    if obj["kind"] == "CronJob":
        yield "job", obj["spec"]["jobTemplate"]["spec"]["template"]


def cases(items: list[tuple[str, Any]]) -> list[Any]:
    """Parametrize cases named by where they come from."""
    return [pytest.param(*item, id=item[0]) for item in items]


def ray_config() -> dict[str, Any]:
    """ray_cluster.yaml, parsed."""
    return yaml.safe_load(RAY_CLUSTER.read_text())
