"""`geor demo [--config P] [--output DIR] [key=value ...]`: the README's first command (`make demo`).

Builds the tiny model and the synthetic world (skipped when already built), starts a local MLflow
server (sqlite and artifacts under ``<output>/mlflow``, 127.0.0.1) unless MLFLOW_TRACKING_URI is
set, runs the whole pipeline on local Ray, and prints the comparison table and the MLflow address.
The server is left running for browsing; its pid is in ``<output>/mlflow/server.pid``.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from flows.config_args import add_config_arguments

DEFAULT_PRESET = "demo"
MLFLOW_PORT = 5000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default="runs/demo", help="where everything goes (default runs/demo)")
    parser.add_argument(
        "--mlflow-port", type=int, default=MLFLOW_PORT, help="port of the local MLflow server"
    )
    add_config_arguments(parser)


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2):
            return True
    except OSError:
        return False


def start_mlflow(folder: Path, port: int) -> str:
    """A local MLflow server on 127.0.0.1:``port`` (reused when one already answers there)."""
    uri = f"http://127.0.0.1:{port}"
    if _healthy(uri):
        return uri
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise SystemExit(f"geor demo: port {port} is taken by something else; pass --mlflow-port")
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination", str(folder / "artifacts"), "--serve-artifacts", "--workers", "1",
    ]  # fmt: skip
    log = open(folder / "server.log", "ab")  # noqa: SIM115 - the server outlives this process
    server = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
    (folder / "server.pid").write_text(str(server.pid))
    deadline = time.monotonic() + 120
    while not _healthy(uri):
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"geor demo: the MLflow server did not start; see {folder / 'server.log'}")
        time.sleep(1)
    return uri


def run(args: argparse.Namespace) -> int:
    from flows.cli import main

    root = Path(args.output).resolve()
    preset = args.config or DEFAULT_PRESET
    started = time.monotonic()
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        os.environ["MLFLOW_TRACKING_URI"] = start_mlflow(root / "mlflow", args.mlflow_port)
    steps = [
        ["make-tiny-model", "--config", preset, "--output", str(root / "tiny-model")],
        ["make-world", "--config", preset, "--output", str(root / "world")],
        ["pipeline", "--config", preset, "--output", str(root), "--manifest", str(root / "world" / "manifest.csv"),
         "--model", str(root / "tiny-model"), *args.overrides],
    ]  # fmt: skip
    for step in steps:
        code = main(step)
        if code:
            return code
    print(f"\ngeor demo: done in {time.monotonic() - started:.0f} s")
    print(f"MLflow: {os.environ['MLFLOW_TRACKING_URI']}  (experiment 'geo-r'; registered model 'geo-r')")
    return 0
