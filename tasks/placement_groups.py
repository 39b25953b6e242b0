"""Placement groups a block of this job left behind: listed, and released when the block ends.

Ray Tune and Ray Train remove the placement groups they create, and Ray removes a job's groups
when the job ends. One case escapes all three: a Ctrl-C'd `geor sweep` whose trial was starting
its Train worker group at that moment. Its group stayed CREATED after the driver had exited (two
suite runs in three on a session cluster), holding its CPUs from every later job on a
`ray start` cluster. :func:`releasing_placement_groups` waits for Ray's own clean-up, then removes
what this job created inside the block and still holds, and says so.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from geor_core.console import CONSOLE_PREFIX


def live_placement_groups(job_id: str | None = None) -> dict[str, str]:
    """Each placement group not removed yet (of ``job_id``'s, when given): its state, the job that
    made it and its bundles."""
    import ray

    return {
        pg_id: f"{info['state']}, job {pg_id[-8:]}, bundles {list(info['bundles'].values())}"
        for pg_id, info in ray.util.placement_group_table().items()
        if info["state"] != "REMOVED" and (job_id is None or pg_id.endswith(job_id))
    }


def remove_placement_groups(pg_ids: list[str]) -> None:
    """Remove the placement groups with these hex ids."""
    import ray
    from ray.util.placement_group import PlacementGroup

    for pg_id in pg_ids:
        ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))


@contextmanager
def releasing_placement_groups(grace_s: float = 5.0) -> Iterator[None]:
    """On the way out of the block, the placement groups this job created inside it and still holds
    ``grace_s`` later are removed, with a line naming them."""
    import ray

    job = ray.get_runtime_context().get_job_id()
    before = set(live_placement_groups(job))
    try:
        yield
    finally:
        deadline = time.monotonic() + grace_s
        while (left := set(live_placement_groups(job)) - before) and time.monotonic() < deadline:
            time.sleep(0.5)
        if left:
            remove_placement_groups(sorted(left))
            print(f"{CONSOLE_PREFIX}ray] released {len(left)} placement group(s) left held: {sorted(left)}")
