"""Ray Data reads of Parquet files with one read task, hence one block, per file: block boundaries
that do not depend on the cluster's size, and a block never larger than its file. (Ray's
datasource V2 reader plans its own blocks, and may read every file into one.)"""

from __future__ import annotations

from typing import Any


def read_files(files: list[str], filesystem: Any, num_cpus: float = 0) -> Any:
    """A Ray Dataset of ``files`` (paths inside the pyarrow ``filesystem``), in their order; each
    read task reserves ``num_cpus`` (0: reads never hold a CPU a trainer waits for; a read fused
    with CPU work should reserve its CPU, or Ray starts a worker for every file at once)."""
    import ray.data

    context = ray.data.DataContext.get_current()
    v2, context.use_datasource_v2 = context.use_datasource_v2, False  # the reader is chosen here
    try:
        return ray.data.read_parquet(
            files, filesystem=filesystem, num_cpus=num_cpus, override_num_blocks=len(files)
        )
    finally:
        context.use_datasource_v2 = v2
