"""The cluster definitions are checked offline, by the validators their tools use (the MLflow
checks are in test_cluster_mlflow.py):

- ray_cluster.yaml: Ray's own cluster-config validator (what `ray up` runs before any AWS call),
  plus what is asked of it (CPU head, GPU and CPU workers, token auth, the project on every
  node, MLflow serving artifacts to S3) and that the GPU presets fit its nodes;
- clusters/*.yaml (KubeRay): every ray.io object against the operator's v1.6.0 CRD schemas
  (tests/fixtures/kuberay, pod templates trimmed), unknown fields refused as `kubectl apply`
  does; every pod template wrapped as a Pod, and every built-in object, against the Kubernetes
  schema of a pinned version (kubernetes-validate, strict);
- every entrypoint is a real `geor` subcommand (flows.cli.COMMANDS) whose parser accepts its
  arguments, with an existing preset and valid key=value overrides.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import io
import json
import re
import shlex
import tomllib
from typing import Any

import pytest

from flows.cli import COMMANDS
from geor_core.config import load_config, preset_names
from tests.cluster_files import (
    MANIFESTS,
    RAY_CLUSTER,
    ROOT,
    all_objects,
    cases,
    load_manifest,
    pod_templates,
    ray_config,
    ray_job_specs,
)

CRD_DIR = ROOT / "tests" / "fixtures" / "kuberay"
K8S_VERSION = "1.33"  # the Kubernetes API the manifests are checked against
CRD_FILES = {"RayCluster": "rayclusters", "RayJob": "rayjobs", "RayCronJob": "raycronjobs"}
COMMAND_MENTION = re.compile(r"(?:\bgeor|python -m flows)[ \t]+([a-z][a-z0-9-]*)")


def _strict(schema: Any) -> Any:
    """A CRD schema that refuses unknown fields, as `kubectl apply` (strict field validation) does."""
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        open_ended = "additionalProperties" in schema or schema.get("x-kubernetes-preserve-unknown-fields")
        if "properties" in schema and not open_ended:
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(value) for value in schema]
    return schema


def _entrypoints() -> list[tuple[str, str]]:
    return [(where, job["entrypoint"]) for where, obj in all_objects() for job in ray_job_specs(obj)]


# --- ray_cluster.yaml -------------------------------------------------------------------------


def test_ray_cluster_yaml_passes_rays_validator_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3
    from ray.autoscaler._private.util import prepare_config, validate_config

    def no_aws(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the offline check must not call AWS")

    for name in ("client", "resource", "Session"):
        monkeypatch.setattr(boto3, name, no_aws)
    prepared = prepare_config(copy.deepcopy(ray_config()))
    validate_config(prepared)  # raises on any schema or consistency error
    assert prepared["available_node_types"]["head"]["max_workers"] == 0


def test_ray_cluster_yaml_has_the_cpu_head_gpu_and_cpu_workers_auth_install_and_mlflow() -> None:
    config = ray_config()
    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]
    workers = {name: node for name, node in nodes.items() if node is not head}
    assert head["resources"].get("CPU") == 0 and not head["resources"].get("GPU"), (
        "the head must run no tasks"
    )
    gpu = [node for node in workers.values() if node["resources"].get("GPU", 0) >= 8]
    cpu = [node for node in workers.values() if not node["resources"].get("GPU")]
    assert gpu and cpu, "wants autoscaling 8-GPU workers and CPU-only workers"
    assert all(node["min_workers"] == 0 < node["max_workers"] for node in gpu + cpu)

    setup = "\n".join(config["setup_commands"])
    assert "export RAY_AUTH_MODE=token" in setup
    assert "~/.ray/auth_token" in config["file_mounts"]  # the token every node authenticates with
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    ray_starts = [command for command in starts if "ray start" in command]
    assert len(ray_starts) == 2 and all("source ~/geor.env" in command for command in ray_starts)
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert re.search(rf"pip install .*geor-{re.escape(version)}-py3-none-any\.whl", setup), (
        f"every node must install this project (the geor {version} wheel)"
    )
    mlflow = [command for command in config["head_start_ray_commands"] if "mlflow server" in command]
    assert len(mlflow) == 1
    assert "--serve-artifacts" in mlflow[0] and "--artifacts-destination s3://" in mlflow[0]
    assert "MLFLOW_TRACKING_URI=http://$RAY_HEAD_IP:5000" in " ".join(config["worker_setup_commands"])


def _gpu_presets() -> list[str]:
    return [name for name in preset_names() if load_config(name).model.device == "cuda"]


def _fits(nodes: list[tuple[float, float, int]], count: int, gpus: float, cpus: float) -> bool:
    """Whether ``count`` workers of (gpus, cpus) pack onto nodes given as (GPU, CPU, how many)."""
    per_node = [(min(gpu // gpus, cpu // cpus) if gpus else cpu // cpus) * many for gpu, cpu, many in nodes]
    return sum(per_node) >= count


@pytest.mark.parametrize("preset", _gpu_presets())
def test_gpu_presets_fit_both_clusters(preset: str) -> None:
    cfg = load_config(preset)
    launcher = [
        (node["resources"].get("GPU", 0), node["resources"].get("CPU", 0), node["max_workers"])
        for name, node in ray_config()["available_node_types"].items()
        if node["resources"].get("GPU")
    ]
    (cluster,) = [obj for _, obj in load_manifest(ROOT / "clusters" / "raycluster.yaml")]
    kuberay = []
    for group in cluster["spec"]["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        if "nvidia.com/gpu" in limits:
            kuberay.append((float(limits["nvidia.com/gpu"]), float(limits["cpu"]), group["maxReplicas"]))
    for name, nodes in (("ray_cluster.yaml", launcher), ("clusters/raycluster.yaml", kuberay)):
        for stage in (cfg.sft, cfg.grpo):
            assert _fits(nodes, stage.num_workers, 1, stage.cpus_per_worker), (
                f"{preset} training does not fit {name}"
            )
        assert _fits(nodes, cfg.eval.num_actors, cfg.eval.gpus_per_actor, cfg.eval.cpus_per_actor), (
            f"{preset} evaluation does not fit {name}"
        )


# --- KubeRay manifests ------------------------------------------------------------------------


def test_manifests_parse_and_hold_the_expected_objects() -> None:
    kinds = {(path.name, obj["kind"]) for path in MANIFESTS for _, obj in load_manifest(path)}
    for expected in [
        ("raycluster.yaml", "RayCluster"),
        ("rayjob-pipeline.yaml", "RayJob"),
        ("raycronjob-retrain.yaml", "RayCronJob"),
        ("cronjob-retrain.yaml", "CronJob"),
        ("cronjob-retrain.yaml", "Role"),
        ("cronjob-retrain.yaml", "RayJob"),  # the one its ConfigMap carries
    ]:
        assert expected in kinds, f"{expected[0]} has no {expected[1]}"
    (cronjob,) = [obj for _, obj in all_objects() if obj["kind"] == "CronJob"]
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"


@pytest.mark.parametrize("where,obj", cases([item for item in all_objects() if item[1]["kind"] in CRD_FILES]))
def test_kuberay_objects_match_the_operators_crd(where: str, obj: dict[str, Any]) -> None:
    import jsonschema

    crd = json.loads((CRD_DIR / f"{CRD_FILES[obj['kind']]}.v1.json").read_text())
    assert obj["apiVersion"] == crd["apiVersion"], where
    errors = sorted(
        jsonschema.Draft7Validator(_strict(crd["openAPIV3Schema"])).iter_errors(obj),
        key=lambda e: e.json_path,
    )
    assert not errors, f"{where}: " + "; ".join(f"{e.json_path}: {e.message}" for e in errors)


def test_the_crd_check_refuses_an_unknown_field() -> None:
    import jsonschema

    (cron,) = [obj for _, obj in all_objects() if obj["kind"] == "RayCronJob"]
    cron = copy.deepcopy(cron)
    cron["spec"]["concurrencyPolicy"] = "Forbid"  # a batch/v1 CronJob field RayCronJob lacks
    schema = json.loads((CRD_DIR / "raycronjobs.v1.json").read_text())["openAPIV3Schema"]
    with pytest.raises(jsonschema.ValidationError, match="concurrencyPolicy"):
        jsonschema.validate(cron, _strict(schema))


@pytest.mark.parametrize("where,obj", cases(all_objects()))
def test_pod_templates_and_builtin_objects_pass_the_kubernetes_schema(
    where: str, obj: dict[str, Any]
) -> None:
    import kubernetes_validate

    checked = []
    if obj["kind"] not in CRD_FILES:
        checked.append((where, obj))
    for part, template in pod_templates(obj):
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "check", **template.get("metadata", {})},
        }
        checked.append((f"{where} {part}", {**pod, "spec": template["spec"]}))
    for label, manifest in checked:
        try:
            kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{label}: {'.'.join(map(str, exc.path))}: {exc.message}")


def test_both_retrain_schedules_run_the_same_job() -> None:
    retrain_jobs = [
        (where, job)
        for where, obj in all_objects()
        for job in ray_job_specs(obj)
        if job["entrypoint"].startswith("geor retrain")
    ]
    assert len(retrain_jobs) == 2, retrain_jobs  # the RayCronJob's template and the CronJob's RayJob
    (_, first), (_, second) = retrain_jobs
    assert first == second


def test_ray_version_is_the_same_in_pyproject_manifests_and_image() -> None:
    import ray

    pin = re.search(r'"ray\[[^\]]*\]==([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert pin == ray.__version__
    versions = {obj["spec"]["rayVersion"] for _, obj in all_objects() if obj["kind"] == "RayCluster"}
    assert versions == {pin}
    base = re.search(r"^FROM rayproject/ray:([\d.]+)-", (ROOT / "clusters" / "Dockerfile").read_text(), re.M)
    assert base.group(1) == pin


# --- entrypoints ------------------------------------------------------------------------------


def _registered(command: str, where: str) -> None:
    assert command in COMMANDS, (
        f"{where} runs `geor {command}`, which flows/cli.py COMMANDS does not register ({sorted(COMMANDS)})"
    )


@pytest.mark.parametrize("where,entrypoint", cases(_entrypoints()))
def test_entrypoints_run_a_real_subcommand_with_a_real_preset(where: str, entrypoint: str) -> None:
    argv = shlex.split(entrypoint)
    assert argv[0] == "geor", f"{where}: the entrypoint should run geor: {entrypoint!r}"
    command, arguments = argv[1], argv[2:]
    _registered(command, where)
    parser = argparse.ArgumentParser(prog=f"geor {command}")
    importlib.import_module(COMMANDS[command][0]).add_arguments(parser)
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            args = parser.parse_args(arguments)
    except SystemExit:
        pytest.fail(f"{where}: `geor {command}` refuses {arguments}: {errors.getvalue().strip()}")
    assert args.config in preset_names(), (
        f"{where}: --config {args.config!r} is not a preset ({preset_names()})"
    )
    load_config(args.config, args.overrides)  # raises ConfigError naming a bad key or value


def test_every_geor_command_the_cluster_files_mention_exists() -> None:
    mentioned = {
        (path.name, command)
        for path in [RAY_CLUSTER, *sorted((ROOT / "clusters").iterdir())]
        for command in COMMAND_MENTION.findall(path.read_text())
    }
    assert {command for _, command in mentioned} >= {"pipeline", "retrain"}
    for where, command in sorted(mentioned):
        _registered(command, where)
