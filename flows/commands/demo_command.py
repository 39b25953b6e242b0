"""`geor demo [--config P] [--output DIR] [key=value ...]`: the README's first command (`make demo`).

Builds the tiny model and the synthetic world (skipped when already built), starts a local MLflow
server (sqlite and artifacts under ``<output>/mlflow``, 127.0.0.1) unless MLFLOW_TRACKING_URI is
set, runs the whole pipeline on local Ray, and prints the comparison table and the MLflow address.
The server is left running for browsing; its pid is in ``<output>/mlflow/server.pid``, and a
later demo reuses only that server: a port held by anything else is refused, naming its holder.
The output is claimed first (geor_core/ownership.py): a non-empty folder geor did not write is
refused. The console shows stage lines, progress bars and compact metric lines; everything is in
``<output>/logs/geor-demo-<time>.log``, and ``--verbose`` shows it all (geor_core/console.py).
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

import psutil

from flows.commands.config_args import add_config_arguments, add_verbose_argument
from geor_core.config import load_config
from geor_core.console import console_log
from geor_core.errors import UserFacingError
from geor_core.ownership import claim_output
from geor_core.registry.stage_state import RECORDS_DIR
from geor_core.uris import MARKER_NAME, redact_uri

DEFAULT_PRESET = "demo"
DEMO_LEFT_BEHIND = ("mlflow/server.pid", f"tiny-model/{MARKER_NAME}", f"{RECORDS_DIR}/*.json")
MLFLOW_PORT = 5000


EXAMPLES = """examples:
  geor demo
  geor demo --config tiny --output runs/demo-tiny
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default="runs/demo", help="where everything goes (default runs/demo)")
    parser.add_argument(
        "--mlflow-port", type=int, default=MLFLOW_PORT, help="port of the local MLflow server"
    )
    add_verbose_argument(parser)
    add_config_arguments(parser, default_preset=DEFAULT_PRESET)


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2):
            return True
    except OSError:
        return False


def _server_command(folder: Path, port: int) -> list[str]:
    return [
        str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination", str(folder / "artifacts"), "--serve-artifacts", "--workers", "1",
    ]  # fmt: skip


def _our_server(folder: Path, port: int) -> bool:
    """Whether the pid in ``<folder>/server.pid`` is alive, is the MLflow server this demo starts
    for ``folder`` on ``port`` (its command line says so) and answers /health."""
    try:
        cmdline = psutil.Process(int((folder / "server.pid").read_text())).cmdline()
    except (OSError, ValueError, psutil.Error):  # no or unreadable pid file, a dead pid, no access
        return False
    command = _server_command(folder, port)  # run as [python, mlflow, server, ...] by its shebang
    return cmdline[-len(command) :] == command and _healthy(f"http://127.0.0.1:{port}")


def _port_holder(port: int) -> str:
    """Who listens on ``port``: its pid and command line where this user can see them."""
    try:
        pids = {c.pid for c in psutil.net_connections("tcp") if c.laddr.port == port and c.status == "LISTEN"}
    except psutil.Error:  # macOS refuses the listing to non-root users
        pids = set()
    holders = []
    for pid in sorted(pid for pid in pids if pid is not None):
        try:
            command = " ".join(" ".join(psutil.Process(pid).cmdline()).split())  # one line
            holders.append(f"pid {pid} ({command[:200]}{'...' if len(command) > 200 else ''})")
        except psutil.Error:
            holders.append(f"pid {pid}")
    return ", ".join(holders) or "a process this user cannot see"


def start_mlflow(folder: Path, port: int) -> str:
    """A local MLflow server on 127.0.0.1:``port``: the one this demo started for ``folder`` when it
    still runs (``<folder>/server.pid``), else a new one; a port held by anything else is refused."""
    uri = f"http://127.0.0.1:{port}"
    if _our_server(folder, port):
        return uri
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise UserFacingError(
                f"port {port} on 127.0.0.1 is taken by {_port_holder(port)}, not by this demo's MLflow "
                f"server ({folder / 'server.pid'}); pass --mlflow-port with a free port, or set "
                "MLFLOW_TRACKING_URI to use a server of your own"
            )
    folder.mkdir(parents=True, exist_ok=True)
    log = open(folder / "server.log", "ab")  # noqa: SIM115 - the server outlives this process
    # No job-runner processes: they would outlive `kill $(cat server.pid)`.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    command = _server_command(folder, port)
    server = subprocess.Popen(command, stdout=log, stderr=log, env=env, start_new_session=True)
    (folder / "server.pid").write_text(str(server.pid))
    deadline = time.monotonic() + 120
    while not _healthy(uri):
        if server.poll() is not None or time.monotonic() > deadline:
            raise UserFacingError(f"the MLflow server did not start; see {folder / 'server.log'}")
        time.sleep(1)
    return uri


def run(args: argparse.Namespace) -> int:
    root = Path(args.output).resolve()
    # first: the root is the demo's (an older geor's demo root is known by what it left there)
    claim_output(str(root), "demo", legacy=DEMO_LEFT_BEHIND)
    with console_log(root, "demo", verbose=args.verbose):
        return _demo(args, root)


def _demo(args: argparse.Namespace, root: Path) -> int:
    from flows.cli import main

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
    print(_champion_line(load_config(preset, list(args.overrides)).registry.model_name))
    uri = redact_uri(os.environ["MLFLOW_TRACKING_URI"])
    print(f"MLflow: {uri}  (experiment 'geo-r'; registered model 'geo-r'; a tour: docs/mlflow.md)")
    return 0


def _champion_line(name: str) -> str:
    """The registered model's champion now and why it became champion (this run's or an earlier one's)."""
    from geor_core.registry import registry

    current = registry.champion(registry.client(os.environ["MLFLOW_TRACKING_URI"]), name)
    if current is None:
        return f"champion: {name} has none"
    made = current.lineage.get("candidate", "model")
    return (
        f"champion: {name} v{current.version} ({made}): {current.tags.get(registry.PROMOTED_REASON_TAG, '')}"
    )
