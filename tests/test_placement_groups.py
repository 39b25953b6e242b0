"""A block's leftover placement groups are released when it ends; groups made before it are not."""

from __future__ import annotations

import ray
from ray.util.placement_group import placement_group, remove_placement_group

from tasks.placement_groups import live_placement_groups, releasing_placement_groups


def test_a_group_left_held_by_the_block_is_released_and_named(ray_cluster, capsys):
    earlier = placement_group([{"CPU": 0.1}])
    ray.get(earlier.ready(), timeout=30)
    try:
        with releasing_placement_groups(grace_s=1.0):
            left = placement_group([{"CPU": 0.1}])
            ray.get(left.ready(), timeout=30)
            tidy = placement_group([{"CPU": 0.1}])
            remove_placement_group(tidy)
        live = live_placement_groups()
        assert left.id.hex() not in live and earlier.id.hex() in live
        assert f"released 1 placement group(s) left held: ['{left.id.hex()}']" in capsys.readouterr().out
    finally:
        remove_placement_group(earlier)
