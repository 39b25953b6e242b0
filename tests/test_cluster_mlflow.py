"""MLflow in the cluster definitions, checked offline: no server listens beyond loopback without
basic auth; the launcher's server (ray_cluster.yaml) takes its password from the mounted secret
file (its head commands run against a stand-in `mlflow`), and the KubeRay pods take MLflow
credentials from a Secret, never a ConfigMap."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.cluster_files import all_objects, pod_templates, ray_config

# --- MLflow: nothing that can move the champion is open ---------------------------------------

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MLFLOW_SECRET = "geor-mlflow-auth"  # the KubeRay Secret with MLFLOW_TRACKING_USERNAME / _PASSWORD


def _strings(node: Any) -> Iterator[str]:
    """Every string in a parsed document, and every list of strings joined as one command line."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        if node and all(isinstance(value, str) for value in node):
            yield " ".join(node)
        for value in node:
            yield from _strings(value)


def _mlflow_servers() -> list[tuple[str, str]]:
    """``(where, command)`` for every `mlflow server` that ray_cluster.yaml or a manifest starts."""
    sources = [("ray_cluster.yaml", ray_config()), *all_objects()]
    return [
        (where, text)
        for where, doc in sources
        for text in _strings(doc)
        if re.search(r"\bmlflow server\b", text)
    ]


def test_no_mlflow_server_listens_beyond_loopback_without_auth() -> None:
    servers = _mlflow_servers()
    assert any(where == "ray_cluster.yaml" for where, _ in servers), "the launcher starts MLflow on the head"
    for where, command in servers:
        host = re.search(r"(?:--host|-h)[= ](\S+)", command)
        host = host.group(1) if host else "127.0.0.1"  # MLflow's default
        if host not in LOOPBACK:
            assert "--app-name basic-auth" in command, (
                f"{where}: an MLflow server on {host} without auth lets anyone who reaches the port move "
                "the champion; listen on 127.0.0.1 or add --app-name basic-auth"
            )


def test_the_launchers_mlflow_takes_its_password_from_the_secret_file(tmp_path: Path) -> None:
    """The head's commands, run in a scratch home with a stand-in `mlflow`: the server gets basic
    auth whose admin password is the mounted secret, and the clients on every node send it."""
    import configparser
    import subprocess

    config = ray_config()
    secret = "~/.geor/mlflow_password"
    assert config["file_mounts"][secret] == secret  # made on your machine, copied to every node
    home, password = tmp_path / "home", "0123abcd" * 6
    (home / ".geor").mkdir(parents=True)
    (home / ".geor" / "mlflow_password").write_text(password + "\n")
    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "mlflow"  # records what it was started with, as whom, then exits
    fake.write_text(f'#!/bin/bash\n{{ echo $$; echo "$*"; env; }} > {tmp_path}/started\n')
    fake.chmod(0o755)
    (server,) = [command for command in config["head_start_ray_commands"] if "mlflow server" in command]
    env = {"HOME": str(home), "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"}
    for command in [config["setup_commands"][0], server]:
        subprocess.run(["bash", "-c", f"{command}; wait"], env=env, check=True, timeout=30)

    pid, args, *lines = (tmp_path / "started").read_text().splitlines()
    seen = dict(line.split("=", 1) for line in lines if "=" in line)
    assert args.startswith("server --app-name basic-auth ") and "--host 0.0.0.0" in args
    assert (home / "mlflow.pid").read_text().strip() == pid  # ~/mlflow.pid names the server itself
    # what every node's MLflow clients send (geor.env is sourced before `ray start` on every node)
    assert (seen["MLFLOW_TRACKING_USERNAME"], seen["MLFLOW_TRACKING_PASSWORD"]) == ("geor", password)
    auth_ini = Path(seen["MLFLOW_AUTH_CONFIG_PATH"])
    assert auth_ini.stat().st_mode & 0o077 == 0, "the auth config holds the password: owner only"
    parsed = configparser.ConfigParser()
    parsed.read(auth_ini)
    assert dict(parsed["mlflow"]) == {
        "default_permission": "NO_PERMISSIONS",
        "database_uri": "sqlite:////home/ubuntu/mlflow/auth.db",
        "admin_username": "geor",
        "admin_password": password,
    }
    assert len(seen["MLFLOW_FLASK_SERVER_SECRET_KEY"]) >= 32  # the auth app's CSRF key
    assert "mlflow[auth]==" in " ".join(config["head_setup_commands"])  # Flask-WTF, which basic-auth needs


def test_kuberay_pods_get_mlflow_credentials_from_a_secret_and_no_configmap_holds_them() -> None:
    for where, obj in all_objects():
        if obj["kind"] == "ConfigMap":
            for key, value in obj.get("data", {}).items():
                assert "PASSWORD" not in key and not re.search(r"://[^/\s]*@", value), (
                    f"{where}: {key} holds MLflow credentials; they belong in the Secret {MLFLOW_SECRET}"
                )
        for part, template in pod_templates(obj):
            for container in template["spec"]["containers"]:
                sources = container.get("envFrom", [])
                if {"configMapRef": {"name": "geor-env"}} in sources:  # a pod that logs to MLflow
                    assert {"secretRef": {"name": MLFLOW_SECRET, "optional": True}} in sources, (
                        f"{where} {part}: {container['name']} takes geor-env but not the Secret {MLFLOW_SECRET}"
                    )
