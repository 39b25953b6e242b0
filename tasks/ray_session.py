"""Connect to Ray the way every task does: the session in place, else the cluster named by
``RAY_ADDRESS`` (set under ``ray job submit``; ``RAY_ADDRESS=auto`` joins a `ray start` cluster
on this machine), else a new local instance. Never Ray's implicit "join whatever
/tmp/ray/ray_current_cluster names": a cluster that died leaves that file behind and the next
job would wait on it."""

from __future__ import annotations

import os


def connect_ray() -> bool:
    """Make sure a Ray session exists; True when this call started it (the caller shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(address=os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False)
    return True
