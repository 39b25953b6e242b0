"""Run a command and sample the CPU time of its whole process tree (driver, Ray daemons, workers),
grouped by process name; read back how many cores each group used in a time window."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def process_group(proc: Any) -> str:
    """A short name for a process of a run's tree: driver, gcs_server, raylet, a Ray worker's title."""
    try:
        words = proc.cmdline()
    except Exception:
        return "?"
    first = words[0] if words else proc.name()
    if first.startswith("ray::"):
        return first.split(" ")[0][:40]
    if first.endswith(("python", "python3", "python3.11")) and len(words) > 1:
        script = next((w for w in words[1:] if w.endswith(".py")), words[1])
        return f"python {Path(script).name}"
    return Path(first).name[:40]


def measure(command: list[str], env: dict[str, str], log: Path) -> tuple[float, list]:
    """Run ``command`` (plus ``--launched-at <its start time>``); return its wall seconds and CPU
    samples ``[(time, {group: cpu_s})]`` of its whole process tree, every 0.5 s (each process's CPU
    counted under its latest name)."""
    import psutil

    samples: list[tuple[float, dict[str, float]]] = []
    cpu_by_pid: dict[int, tuple[str, float]] = {}
    started = time.time()
    with log.open("w") as output:
        proc = subprocess.Popen(command + ["--launched-at", str(started)], stdout=output, stderr=output,
                                env=env, cwd=ROOT, start_new_session=True)  # fmt: skip
    root = psutil.Process(proc.pid)
    try:
        while proc.poll() is None:
            try:
                family = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for member in family:
                try:
                    times = member.cpu_times()
                    cpu_by_pid[member.pid] = (process_group(member), times.user + times.system)
                except psutil.Error:
                    continue
            groups: dict[str, float] = {}
            for group, seconds in cpu_by_pid.values():
                groups[group] = groups.get(group, 0.0) + seconds
            samples.append((time.time(), groups))
            time.sleep(0.5)
        proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)  # a Ray driver shuts its cluster down on SIGINT
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
        raise
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit code {proc.returncode}; see {log}")
    return time.time() - started, samples


def cores_in_window(samples: list, start: float, end: float) -> dict[str, float]:
    """Average cores used by each process group between ``start`` and ``end`` (from CPU samples)."""
    before = max((s for s in samples if s[0] <= start), key=lambda s: s[0], default=samples[0])
    after = min((s for s in samples if s[0] >= end), key=lambda s: s[0], default=samples[-1])
    span = max(after[0] - before[0], 1e-9)
    used = {g: (after[1].get(g, 0.0) - before[1].get(g, 0.0)) / span for g in after[1]}
    return {g: round(c, 3) for g, c in sorted(used.items(), key=lambda kv: -kv[1]) if c >= 0.005}
