"""geor demo's MLflow server (flows/demo.start_mlflow): the demo reuses only the server it started
for its folder (``server.pid`` alive, an mlflow server for that folder and port, answering
/health); a port that anything else holds is refused, naming the port and the holder's pid.

No MLflow server is started here: the servers are a few lines of http.server answering /health.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from flows.commands import demo_command as demo
from geor_core.errors import UserFacingError
from tests.plugins.servers import LOCALHOST, free_port, start_server, stop_process_group

# Answers every GET with 200 "OK" on the port after --port, whatever else its arguments say.
HEALTH_SERVER = """
import http.server, sys
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"OK")
    def log_message(self, *args):
        pass
port = int(sys.argv[sys.argv.index("--port") + 1])
http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start HEALTH_SERVER processes with the given arguments; each is stopped when the test ends."""
    started: list[subprocess.Popen] = []

    def start(port: int, *args: str) -> subprocess.Popen:
        cmd = [sys.executable, "-c", HEALTH_SERVER, *args]
        log = tmp_path / f"server-{len(started)}.log"
        started.append(start_server("health server", cmd, f"http://{LOCALHOST}:{port}/health", log, {}, 30))
        return started[-1]

    yield start
    for proc in started:
        stop_process_group(proc)


@pytest.fixture
def no_new_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if start_mlflow tries to start a server."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"start_mlflow started a server: {args}")

    monkeypatch.setattr(demo, "subprocess", SimpleNamespace(Popen=refuse))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_foreign_server_on_the_port_is_refused_naming_port_and_pid(tmp_path, serve, no_new_server):
    port = free_port()
    foreign = serve(port, "--port", str(port))
    folder = tmp_path / "mlflow"
    with pytest.raises(UserFacingError) as refused:
        demo.start_mlflow(folder, port)
    message = str(refused.value)
    assert f"port {port} on 127.0.0.1 is taken by pid {foreign.pid} ({sys.executable} -c " in message
    assert "--mlflow-port" in message and "MLFLOW_TRACKING_URI" in message
    assert not folder.exists()  # nothing started, nothing written


@pytest.mark.parametrize("recorded", ["dead pid", "the foreign server's pid"])
def test_a_pid_file_that_is_not_a_running_demo_server_is_not_reused(tmp_path, serve, no_new_server, recorded):
    port = free_port()
    foreign = serve(port, "--port", str(port))
    folder = tmp_path / "mlflow"
    folder.mkdir()
    (folder / "server.pid").write_text(str(dead_pid() if recorded == "dead pid" else foreign.pid))
    with pytest.raises(UserFacingError, match=rf"port {port} on 127\.0\.0\.1 is taken by pid {foreign.pid} "):
        demo.start_mlflow(folder, port)


def test_the_server_the_demo_started_for_this_folder_is_reused(tmp_path, serve, no_new_server):
    port = free_port()
    folder = tmp_path / "mlflow"
    folder.mkdir()
    ours = serve(port, *demo._server_command(folder, port))  # the command line the demo runs
    (folder / "server.pid").write_text(str(ours.pid))
    assert demo.start_mlflow(folder, port) == f"http://127.0.0.1:{port}"
    # the same server, recorded for another demo folder, is someone else's
    other = tmp_path / "other"
    other.mkdir()
    (other / "server.pid").write_text(str(ours.pid))
    with pytest.raises(UserFacingError, match=f"taken by pid {ours.pid} "):
        demo.start_mlflow(other, port)
    assert os.path.exists(folder / "server.pid")
