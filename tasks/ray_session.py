"""Connect to Ray the way every task does: the session in place, else the cluster named by
``RAY_ADDRESS`` (set under ``ray job submit``; ``RAY_ADDRESS=auto`` joins a `ray start` cluster
on this machine), else a new local instance. Never Ray's implicit "join whatever
/tmp/ray/ray_current_cluster names": a cluster that died leaves that file behind and the next
job would wait on it.

A new local instance keeps to itself and keeps the console readable (geor_core/console.py):
- its dashboard process serves Ray's State API on 127.0.0.1, and every worker on the instance is
  told where (``RAY_API_SERVER_ADDRESS``, :func:`start_local_ray`). Ray Train's placement-group
  cleaner asks that API whether the run's controller lives; without it, it warned every second
  ("Failed to query Ray Train Controller actor state") or, with another Ray instance on the
  machine, looked for one among all of them and died with "Found multiple active Ray instances".
Everywhere, Ray Train's patch of ``print`` in its workers is off (``RAY_TRAIN_ENABLE_PRINT_PATCH=0``,
which Ray Train hands on to its workers): it sent each print twice and dumped the bytecode that
dill disassembles into a captured stream. In quiet mode the driver's INFO logs go to the full log
and the workers' output is routed (:func:`route_worker_output`).

Before work is placed, :func:`check_custom_resources` refuses a ``cluster.worker_resources`` that
the cluster cannot give every worker or actor (Ray would wait for it forever).
"""

from __future__ import annotations

import os
import socket
from typing import Any

from geor_core.console import CONSOLE_PREFIX, is_verbose, log_file, quiet_loggers
from geor_core.errors import UserFacingError
from geor_core.uris import redact_uri

RAY_HANDLER = "ray_print_logs"  # the name under which Ray prints worker output on the driver
API_ADDRESS_ENV = "RAY_API_SERVER_ADDRESS"  # where Ray's State API clients (in workers) look first


def connect_ray() -> bool:
    """Make sure a Ray session exists; True when this call started it (the caller shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    quiet = log_file() is not None and not is_verbose()
    if quiet:
        import ray.data
        from ray.util.debug import log_once

        # geor draws the bars that matter (training steps, inference rows); Ray Data's per-dataset
        # bars are off, and so is its warning that they are (it warns once per process)
        ray.data.DataContext.get_current().enable_progress_bars = False
        log_once("ray_data_progress_manager_disabled")
        quiet_loggers()
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, include_dashboard=False)
        started = f"joined the Ray cluster at {redact_uri(address)}"
    else:
        context = start_local_ray()
        started = f"started a local Ray instance; its dashboard: http://{context.dashboard_url}"
    if quiet:  # Ray's own line about it went to the full log
        route_worker_output()
        print(f"{CONSOLE_PREFIX}ray] {started}", flush=True)
    return True


def start_train_coordinator() -> None:
    """Create Ray Data's autoscaling coordinator now, without waiting for it to start.

    Ray Train's controller asks that detached actor (one per cluster) to record its resource
    request and waits up to 5 s for the answer. When the controller is the one creating it, the
    actor's process takes longer than that to start on a busy machine, so a cluster's first
    ``fit()`` waited the whole 5 s (and logged "Failed to send resource request"). Created when
    training is launched, it is up by the time the controller asks: a no-op ``fit()`` on a fresh
    2-CPU local instance took 26.0-26.1 s instead of 31.1-32.8 s (2026-12-04, two runs each). The
    function is Ray's own (``ray.data._internal``, pinned with Ray); if it moves, nothing is done."""
    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )
    except ImportError:
        return
    get_or_create_autoscaling_coordinator()


def start_local_ray(**options: Any) -> Any:
    """``ray.init`` of a new local instance (``options`` passed on) whose dashboard serves the State
    API on 127.0.0.1. The raylet is started with the API's address in its environment, so the
    workers of every job on the instance (the first and any that joins it) find it; this process
    keeps its own environment. Returns the ``ray.init`` context."""
    import ray

    port = _free_port()
    saved = os.environ.get(API_ADDRESS_ENV)
    os.environ[API_ADDRESS_ENV] = f"http://127.0.0.1:{port}"
    try:
        return ray.init(
            address="local",
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            dashboard_port=port,
            **options,
        )
    finally:
        if saved is None:
            os.environ.pop(API_ADDRESS_ENV, None)
        else:
            os.environ[API_ADDRESS_ENV] = saved


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def route_worker_output() -> None:
    """Quiet mode: of what the Ray workers print, the console gets geor's own lines and Ray's
    distributed progress bars; every other line goes to the full log only. A failing worker still
    ends its stage with the error and its traceback, raised on the driver."""
    from ray._private import worker as ray_worker
    from ray.experimental.tqdm_ray import RAY_TQDM_MAGIC

    log = log_file()

    def route(data: dict[str, Any]) -> None:
        shown, hidden = [], []
        lines = data.get("lines", [])
        if data.get("pid") == "autoscaler":  # its status reports; Ray itself shows only its events
            lines = list(ray_worker.filter_autoscaler_events(lines))
        for line in lines:
            (shown if RAY_TQDM_MAGIC in line or line.startswith(CONSOLE_PREFIX) else hidden).append(line)
        if hidden and log is not None:
            who = f"({data.get('actor_name') or data.get('task_name') or 'worker'} pid={data.get('pid')})"
            log.write("".join(f"{who} {line}\n" for line in hidden))
        if shown:
            ray_worker.print_to_stdstream({**data, "lines": shown}, ignore_prefix=True)

    dispatcher = getattr(ray_worker, "global_worker_stdstream_dispatcher", None)
    if dispatcher is None:  # another Ray: leave its own printing in place
        return
    dispatcher.remove_handler(RAY_HANDLER)
    dispatcher.add_handler(RAY_HANDLER, route)


def check_custom_resources(
    total: dict[str, float], resources: dict[str, float] | None, count: int, each: str
) -> None:
    """A UserFacingError unless the cluster's ``total`` holds ``count`` x each amount of
    ``resources`` (``cluster.worker_resources``); ``each`` names the holders, e.g. "per worker for
    2 workers"."""
    for name, amount in (resources or {}).items():
        if count * amount > total.get(name, 0):
            raise UserFacingError(
                f"cluster.worker_resources asks {amount} {name!r} {each}, but the cluster has "
                f"{total.get(name, 0)}; start nodes with `ray start --resources` or lower it"
            )
