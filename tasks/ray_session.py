"""Connect to Ray the way every task does: the session in place, else the cluster named by
``RAY_ADDRESS`` (set under ``ray job submit``), else a new local one."""

from __future__ import annotations

import os


def connect_ray() -> bool:
    """Make sure a Ray session exists; True when this call started it (the caller shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(address=os.environ.get("RAY_ADDRESS") or None, include_dashboard=False)
    return True
