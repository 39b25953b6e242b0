"""The fixed cost of one Ray Train ``fit()``: Ray's default controller poll against the project's.

    python benchmarks/train_fixed_cost.py [--repeats 4]

Each ``TorchTrainer.fit()`` pays for a controller actor, a worker group and its teardown whatever
the training does. Ray Train's controller polls its workers every
``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` (Ray's default 2 s), so a finished run is noticed up to two
polls late. tasks/training_run.py sets the interval to ``TRAIN_POLL_INTERVAL_S`` unless the
variable is already set. This script runs a one-worker fit whose loop reports one metric with a
one-file checkpoint, on one local Ray instance, alternating the two settings ``--repeats`` times
(default 4; the order flips every repeat; the first fit of the session is a warm-up, not
counted), and prints one JSON object: per setting the wall-clock seconds of each fit, their
median and [min, max], the ratio default / project of the medians, and the 1-minute load average
at the start and the end. It exits 1 when the two settings' fits report different results (the
metric), since the setting must change nothing but time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.repeats import Runs, median_and_spread  # noqa: E402
from tasks.training_run import POLL_INTERVAL_ENV, TRAIN_POLL_INTERVAL_S  # noqa: E402

RAY_DEFAULT_S = "2.0"


def train_loop(config: dict) -> None:
    import ray.train

    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "value.json").write_text(json.dumps(config["value"]))
        checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report({"value": float(config["value"])}, checkpoint=checkpoint)


def one_fit(interval: str, storage: str, name: str) -> tuple[float, float]:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    os.environ[POLL_INTERVAL_ENV] = interval  # read by the controller the trainer starts
    started = time.monotonic()
    result = TorchTrainer(
        train_loop,
        train_loop_config={"value": 42},
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(storage_path=storage, name=name),
    ).fit()
    return time.monotonic() - started, float(result.metrics["value"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    import ray

    from tasks.ray_session import start_local_ray

    load_at_start = round(os.getloadavg()[0], 2)
    start_local_ray(log_to_driver=False)  # as `geor` starts one
    settings = {"ray_default": RAY_DEFAULT_S, "project": str(TRAIN_POLL_INTERVAL_S)}
    runs: Runs = {name: [] for name in settings}
    results: dict[str, set[float]] = {name: set() for name in settings}
    try:
        with tempfile.TemporaryDirectory(prefix="geor-fit-bench-") as storage:
            one_fit(RAY_DEFAULT_S, storage, "warmup")
            for repeat in range(args.repeats):
                order = list(settings) if repeat % 2 == 0 else list(reversed(settings))
                for name in order:
                    took, value = one_fit(settings[name], storage, f"{name}-{repeat}")
                    runs[name].append({"seconds": round(took, 2)})
                    results[name].add(value)
    finally:
        ray.shutdown()
    median, spread = median_and_spread(runs, ("seconds",))
    report = {
        "repeats": args.repeats,
        "poll_interval_s": settings,
        "fit_seconds": {name: [run["seconds"] for run in found] for name, found in runs.items()},
        "median_s": {name: median[name]["seconds"] for name in settings},
        "spread_s": {name: spread[name]["seconds"] for name in settings},
        "load_average_1m_start_end": [load_at_start, round(os.getloadavg()[0], 2)],
    }
    report["ratio_default_over_project"] = round(
        report["median_s"]["ray_default"] / report["median_s"]["project"], 3
    )
    same = results["ray_default"] == results["project"] and len(results["project"]) == 1
    report["same_results"] = same
    print(json.dumps(report, indent=1))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
