"""`geor sweep [--config P] --data URI --model URI --output URI --space SPACE [key=value ...]`:
hyper-parameter sweeps of GRPO on Ray Tune, each trial a short GRPO run judged on validation.

``--space`` is a YAML of dotted config keys (geor_core/training/sweep_space.py; ``configs/spaces/grpo.yaml``
is shipped as ``--space grpo``); ``sweep.*`` keys set the search, scheduler and concurrency
(tasks/sweep.py). Prints a table of the trials (params, objective, status, error) and one JSON
line (the best trial, its objective, the path of ``best_config.yaml``, which `geor grpo --config`
accepts unchanged). Exit code 0 when the sweep completed with a best trial, 1 when no trial
reported the objective, 130 when interrupted (re-run the same command to resume).

MLflow: the flow owns the sweep's parent run (the space, the trials table, ``best_config.yaml`` as
artifacts; the best objective as a metric); each trial is a child run with its config and curve,
its GRPO stage run nested under it, each tagged ``geor.sweep.status``. A resumed sweep reopens the
same parent run. At the end, the runs of trials the scheduler stopped or an interruption killed
(and of earlier, interrupted attempts) are closed as KILLED.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows.commands.config_args import add_config_arguments, config_from_args, local_paths_absolute
from geor_core.config import GeorConfig
from geor_core.errors import UserFacingError
from geor_core.training.sweep_space import OBJECTIVES, Dimension, SearchSpace

if TYPE_CHECKING:
    from tasks.sweep import SweepResult

INTERRUPTED_EXIT = 130


EXAMPLES = """examples:
  geor sweep --data runs/hard --model runs/sft/model --output runs/sweep --space grpo
  geor sweep --data runs/hard --model runs/sft/model --output runs/sweep-opt --space grpo sweep.search=optuna
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="a `geor prepare` (or `geor mine-hard`) output, local or s3://")
    parser.add_argument(
        "--model", help="the model every trial starts from (an SFT export, dir, s3://, models:/)"
    )
    parser.add_argument("--output", help="where trials, Tune's state and best_config.yaml go")
    parser.add_argument("--space", help="search space: a YAML path or a shipped name (configs/spaces)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start over, deleting what an earlier sweep wrote in --output",
    )
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from geor_core.registry.tracking import tracking_env
    from geor_core.training.sweep_space import load_space
    from tasks.sweep import check_sweep, read_state, run_sweep

    if args.space and Path(args.space).is_file():
        args.space = str(Path(args.space).resolve())
    flags = {
        "data": "data.dataset",
        "model": "model.name_or_path",
        "output": "sweep.output",
        "space": "sweep.space",
    }
    cfg = config_from_args(args, flags)
    for flag, value in (
        ("--data", cfg.data.dataset),
        ("--model", cfg.model.name_or_path),
        ("--output", cfg.sweep.output),
        ("--space", cfg.sweep.space),
    ):
        if not value:
            raise UserFacingError(f"{flag} is required (or set it in the config)")
    space = load_space(cfg.sweep.space)
    space = replace(space, dimensions=tuple(_absolute_paths(d) for d in space.dimensions))
    check_sweep(cfg, space, overwrite=args.overwrite)  # before a run is opened for it
    state = None if args.overwrite else read_state(cfg.sweep.output)
    with sweep_run(cfg, (state or {}).get("parent_run_id")) as run_id:
        if run_id:
            _client(cfg).log_dict(run_id, space.to_dict(), "space.yaml")
        result = run_sweep(
            cfg, space, tracking_env=tracking_env(cfg), parent_run_id=run_id, overwrite=args.overwrite
        )
        table = format_table(result, space)
        if run_id:
            _log_outcome(cfg, run_id, result, table)
    print(table)
    best = result.best
    print(
        json.dumps(
            {
                "best_trial": best.trial_id if best else None,
                "metric": result.objective,
                "value": best.value if best else None,
                "best_config": result.best_config_uri,
                "trials": len(result.trials),
                **{status: sum(t.status == status for t in result.trials) for status in STATUSES},
                "resumed": result.resumed,
                "interrupted": result.interrupted,
            }
        )
    )
    if result.interrupted:
        print(
            f"geor sweep: interrupted; re-run the same command to resume ({cfg.sweep.output})",
            file=sys.stderr,
        )
        return INTERRUPTED_EXIT
    if best is None:
        print(f"geor sweep: no trial reported {result.objective}; see the errors above", file=sys.stderr)
        return 1
    return 0


STATUSES = ("finished", "stopped", "failed", "unfinished")


def _absolute_paths(dimension: Dimension) -> Dimension:
    """Local paths among a dimension's values made absolute (trials run in other directories)."""
    if dimension.kind not in ("choice", "constant"):
        return dimension
    return replace(dimension, values=tuple(local_paths_absolute(dimension.key, v) for v in dimension.values))


def _client(cfg: GeorConfig) -> Any:
    from mlflow import MlflowClient

    from geor_core.registry.tracking import tracking_uri

    return MlflowClient(tracking_uri(cfg))


@contextmanager
def sweep_run(cfg: GeorConfig, previous_run_id: str | None) -> Iterator[str | None]:
    """The sweep's MLflow parent run: the one a previous, interrupted attempt opened (reopened), or
    a new one (geor_core.registry.tracking.parent_run). Yields its id, None when not tracking."""
    from geor_core.registry.tracking import PARENT_RUN_ENV, parent_run, tracking_uri

    if not tracking_uri(cfg) or not previous_run_id or not _run_exists(cfg, previous_run_id):
        with parent_run(cfg, "sweep", tags={"geor.sweep.output": cfg.sweep.output}) as run_id:
            yield run_id
        return
    client = _client(cfg)
    client.update_run(previous_run_id, status="RUNNING")
    before = os.environ.get(PARENT_RUN_ENV)
    os.environ[PARENT_RUN_ENV] = previous_run_id
    status = "FAILED"
    try:
        yield previous_run_id
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        client.set_terminated(previous_run_id, status)
        if before is None:
            os.environ.pop(PARENT_RUN_ENV, None)
        else:
            os.environ[PARENT_RUN_ENV] = before


def _run_exists(cfg: GeorConfig, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        return _client(cfg).get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException:
        return False


def _log_outcome(cfg: GeorConfig, run_id: str, result: SweepResult, table: str) -> None:
    """The trials table and best config on the parent run; stale child runs closed."""
    from geor_core import uris

    client = _client(cfg)
    client.log_text(run_id, table, "trials.txt")
    client.log_dict(run_id, result.to_dict(), "sweep_result.json")
    for status in STATUSES:
        client.log_metric(run_id, f"trials_{status}", sum(t.status == status for t in result.trials))
    if result.best is not None and result.best_config_uri:
        client.log_text(run_id, uris.redact_uri(uris.read_text(result.best_config_uri)), "best_config.yaml")
        client.set_tag(run_id, "geor.sweep.best_trial", result.best.trial_id)
        client.set_tag(run_id, "geor.sweep.best_config", result.best_config_uri)
        client.log_metric(run_id, f"best/{result.objective}", float(result.best.value))
    _close_trial_runs(client, run_id, result)


def _close_trial_runs(client: Any, parent_id: str, result: SweepResult) -> None:
    """Each trial run tagged with its sweep status. A trial the scheduler stopped (or an interruption
    killed) was killed mid-call: its runs end KILLED, whatever state the kill left them in; so do
    runs still RUNNING from earlier, interrupted attempts."""
    killed = set()
    for trial in result.trials:
        if trial.run_id:
            client.set_tag(trial.run_id, "geor.sweep.status", trial.status)
            if trial.status in ("stopped", "unfinished"):
                killed.add(trial.run_id)
    experiment = client.get_run(parent_id).info.experiment_id

    def close(run_id: str, kill_all: bool) -> None:
        for child in client.search_runs([experiment], f"tags.mlflow.parentRunId = '{run_id}'"):
            child_id = child.info.run_id
            kill = kill_all or child_id in killed
            if child.info.status == "RUNNING" or (kill and child.info.status != "KILLED"):
                client.set_terminated(child_id, "KILLED")
            close(child_id, kill)

    close(parent_id, False)


def format_table(result: SweepResult, space: SearchSpace) -> str:
    """The trials as a text table: id, status, objective, step, validations, each swept key, error."""
    swept = [d.key for d in space.dimensions if d.kind != "constant"]
    header = ["trial", "status", result.objective, "step", "validations", *swept, "error"]
    rows = [header]
    for t in result.trials:
        value = "-" if t.value is None else f"{t.value:.4g}"
        params = [_short(t.params.get(key)) for key in swept]
        marker = " *" if result.best is not None and t.trial_id == result.best.trial_id else ""
        row = [t.trial_id + marker, t.status, value, str(t.step or "-"), str(t.validations), *params]
        rows.append([*row, (t.error or "")[:120]])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1]
        for row in rows
    ]
    note = f"{result.objective}: {OBJECTIVES[result.objective].doc}, on grpo.val_rows val rows; * best"
    return "\n".join([*lines, note])


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
