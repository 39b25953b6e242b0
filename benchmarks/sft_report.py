"""The report of `benchmarks/sft.py`: one run's marks turned into per-step and fixed costs, and the
keys compared across configurations (median and spread of the repeats, from benchmarks/repeats.py;
ratios of the medians to the bare baseline) and the check that every configuration learned the
same (each run's mean train loss within ``LOSS_TOLERANCE`` of the baseline's median, same seed
and data)."""

from __future__ import annotations

from typing import Any

from benchmarks.process_tree_cpu import cores_in_window
from benchmarks.repeats import median_and_spread


def summarise(
    record: dict[str, Any], seconds: float, samples: list, steps: int, warmup: int
) -> dict[str, Any]:
    """Per-step and fixed costs of one run, from its marks (all wall-clock, same machine)."""
    worker, marks = record["worker"], record["marks"]
    w_marks, ends, cpu, waits = worker["marks"], worker["step_ends"], worker["step_cpu"], worker["step_waits"]
    if len(ends) != steps:
        raise SystemExit(f"expected {steps} step timestamps, got {len(ends)}")
    steady = (ends[-1] - ends[warmup - 1]) / (steps - warmup)
    gaps = sorted(b - a for a, b in zip(ends[warmup - 1 : -1], ends[warmup:], strict=True))
    cores = cores_in_window(samples, ends[warmup - 1], ends[-1])
    launched = marks["launched"]
    phases = {"python_start_and_imports": marks.get("driver_ready", w_marks["loop_entry"]) - launched}
    if "ray_ready" in marks:
        phases.update(
            ray_init=marks["ray_ready"] - marks["driver_ready"],
            worker_group_start=w_marks["loop_entry"] - marks["ray_ready"],
        )
    phases.update(
        model_and_data_load=w_marks["build_start"] - w_marks["loop_entry"],
        trainer_build=w_marks["trainer_built"] - w_marks["build_start"],
        deepspeed_init=w_marks["train_begin"] - w_marks["trainer_built"],
        steps=ends[-1] - w_marks["train_begin"],
        final_save_and_train_end=w_marks["train_end"] - ends[-1],
        export=w_marks["loop_exit"] - w_marks["train_end"],
    )
    if "ray_ready" in marks:
        phases.update(
            worker_group_stop=marks["run_returned"] - w_marks["loop_exit"],
            ray_shutdown=marks["ray_shutdown"] - marks["run_returned"],
        )
    phases["process_exit"] = launched + seconds - marks.get("ray_shutdown", w_marks["loop_exit"])
    metrics = record["train_metrics"]
    return {
        "steady_s_per_step": round(steady, 5),
        "median_s_per_step": round(gaps[len(gaps) // 2], 5),
        "worker_cpu_s_per_step": round((cpu[-1] - cpu[warmup - 1]) / (steps - warmup), 5),
        "worker_runqueue_wait_s_per_step": round((waits[-1] - waits[warmup - 1]) / (steps - warmup), 5),
        "first_steps_s": round(ends[warmup - 1] - w_marks["train_begin"], 2),
        "trainer_s_per_step": round(metrics["train_runtime"] / steps, 5),  # includes the final save
        "train_loss": metrics["train_loss"],
        "end_to_end_s": round(seconds, 2),
        "fixed_s": round(seconds - steady * steps, 2),
        "phases_s": {k: round(v, 2) for k, v in phases.items()},
        "tree_cpu_s_per_step": round(sum(cores.values()) * steady, 5),  # every process of the run
        "cores_during_steady_steps": cores,
        "setup": worker["setup"],
    }


LOSS_TOLERANCE = 0.02  # relative: equal seeds and global batch, so only float reduction order differs
COMPARED = (
    "steady_s_per_step",
    "median_s_per_step",
    "worker_cpu_s_per_step",
    "tree_cpu_s_per_step",
    "end_to_end_s",
    "fixed_s",
)
RATIOS = {
    "per_step": "steady_s_per_step",
    "per_step_median": "median_s_per_step",
    "cpu_per_step": "worker_cpu_s_per_step",
    "tree_cpu_per_step": "tree_cpu_s_per_step",
    "end_to_end": "end_to_end_s",
}


def compare(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Median and [min, max] of each compared key per configuration, the ratios of the medians to
    ``bare`` (when it ran) and the train-loss check: every run's loss, not only the median."""
    keys = (*COMPARED, "train_loss")
    median, spread = median_and_spread(runs, keys)
    report: dict[str, Any] = {
        "median": {name: {k: round(v, 5) for k, v in found.items()} for name, found in median.items()},
        "spread": spread,
    }
    if "bare" in runs:
        base = median["bare"]
        for name in (n for n in runs if n != "bare"):
            report[f"{name}/bare"] = {ratio: round(median[name][key] / base[key], 3)
                                      for ratio, key in RATIOS.items()}  # fmt: skip
        off = [
            name
            for name in runs
            if any(abs(loss / base["train_loss"] - 1) > LOSS_TOLERANCE for loss in spread[name]["train_loss"])
        ]
        losses = {name: report["median"][name]["train_loss"] for name in runs}
        report["same_learning"] = {"train_loss": losses, "tolerance": LOSS_TOLERANCE, "ok": not off}
    return report
