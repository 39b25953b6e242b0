"""`geor sweep` on Ray Tune: short GRPO trials over a search space, ranked on a validation objective.

- Each trial is tasks/sweep_trial.grpo_trial, a Tune function trainable that launches the GRPO
  TorchTrainer (Train V2's pattern). The trainable itself holds ``sweep.cpus_per_trial`` (it only
  waits); its Train workers and reward actors ask Ray for their own CPUs/GPUs. Before anything
  starts, ``sweep.max_concurrent`` trials at their largest settings must fit the cluster: Ray would
  otherwise wait forever for a worker group that cannot be placed.
- Search: ``random`` (Tune's variant generator, seeded), ``grid`` (every combination of the
  listed values; ``sweep.num_samples`` repeats it) or ``optuna`` (TPE). Scheduler: ``asha`` (async
  successive halving on the objective; a trial always gets ``sweep.grace_period`` validations,
  then must stay in the best 1/``sweep.reduction_factor`` of its rung) or ``fifo``.
- State under ``<output>``: ``tune/`` (Tune's experiment), ``trials/<id>/`` (each trial's GRPO),
  ``sweep.json`` (the config and space it was started with, its MLflow run), ``sweep_result.json``
  (every trial's summary) and, at the end, ``best_config.yaml``. Re-running the same command
  resumes the experiment (``Tuner.restore``): finished and failed trials are kept, unfinished ones
  run again (their GRPO resumes from its own checkpoints). Re-running with another config or space
  is refused (``--overwrite`` starts over, deleting only those entries). The output is claimed
  before Ray starts (geor_core/ownership.py): a folder geor did not write, or one that is or holds
  the data or the start model, is refused.
- At the end: the best trial (highest, or lowest, objective at its last validation, among the
  trials that finished; among all that reported when none did) gives ``best_config.yaml``, its
  full config, which `geor grpo --config` accepts unchanged (``grpo.output`` is the best trial's own
  output, so it finds the trained model there). Checkpoints and exports of the other trials are
  deleted unless ``sweep.keep_checkpoints``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from geor_core import uris
from geor_core.config import ConfigError, GeorConfig, flat_params
from geor_core.errors import UserFacingError
from geor_core.ownership import OwnedOutput, check_output, claim_output
from geor_core.training.sweep_space import SearchSpace, check_space, objective_of, trial_config
from tasks.placement_groups import releasing_placement_groups
from tasks.sweep_trial import TRIALS_DIR, TrialSetup, grpo_trial, read_trial_record, trial_output
from tasks.training_run import MODEL_DIR, RAY_DIR, check_training_inputs

STATE_FILE = "sweep.json"
BEST_CONFIG = "best_config.yaml"
RESULT_FILE = "sweep_result.json"  # every trial's summary, the best one and the best config's URI
TUNE_DIR = "tune"


@dataclass
class TrialSummary:
    """One trial as the sweep reports it. ``status``: finished, stopped (by the scheduler), failed,
    or unfinished (the sweep was interrupted)."""

    trial_id: str
    params: dict[str, Any]
    status: str
    value: float | None  # the objective at the trial's last validation
    step: int | None
    validations: int
    error: str | None
    output: str
    attempts: int
    started_at: float | None
    ended_at: float | None
    run_id: str | None  # the MLflow run of its last attempt


@dataclass
class SweepResult:
    """What a sweep run produced."""

    objective: str
    trials: list[TrialSummary]
    best: TrialSummary | None
    best_config_uri: str | None
    interrupted: bool
    resumed: bool
    deleted_checkpoints: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_state(output_uri: str) -> dict[str, Any] | None:
    """The ``sweep.json`` of the sweep at ``output_uri``, or None when none was started there."""
    uri = uris.join(output_uri, STATE_FILE)
    return json.loads(uris.read_text(uri)) if uris.exists(uri) else None


def _resume_key(cfg: GeorConfig, space: SearchSpace) -> dict[str, Any]:
    """What a re-run must match to resume: every setting but tracking, and the space."""
    params = {k: v for k, v in flat_params(cfg).items() if not k.startswith("tracking.")}
    return {"config": json.loads(json.dumps(params, default=str)), "space": space.to_dict()}


def _check_same_sweep(state: dict[str, Any], cfg: GeorConfig, space: SearchSpace) -> None:
    key = _resume_key(cfg, space)
    old, new = state.get("config", {}), key["config"]
    differs = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if state.get("space") != key["space"]:
        differs.insert(0, "the space")
    if differs:
        raise UserFacingError(
            f"{cfg.sweep.output} holds a sweep started with other settings ({', '.join(differs[:8])} "
            "differ); re-run it unchanged to resume, or pass --overwrite or another --output to start over"
        )


def check_sweep(cfg: GeorConfig, space: SearchSpace, *, overwrite: bool = False) -> None:
    """Everything that can be wrong before a trial starts: the objective, the space's values, the
    data and start model, the cluster's room for the trials, and (unless ``overwrite``) a sweep
    with other settings already at the output."""
    check_output(cfg.sweep.output, "sweep", **_ownership(cfg))  # before Ray starts; nothing written
    objective_of(cfg.sweep)
    check_space(space, cfg, cfg.sweep.search)
    if cfg.sweep.scheduler == "asha":
        asha_max_t(cfg, space)
    check_training_inputs(cfg, "grpo", cfg.data.dataset, cfg.model.name_or_path)
    check_sweep_resources(cfg, space)
    state = None if overwrite else read_state(cfg.sweep.output)
    if state is not None:
        _check_same_sweep(state, cfg, space)


def _ownership(cfg: GeorConfig) -> dict[str, Any]:
    """How ``sweep.output`` is claimed (geor_core/ownership.py): refused when geor did not write
    it, or when it is or holds the data or the start model; an older sweep has its ``sweep.json``."""
    return {"inputs": {"data": cfg.data.dataset, "model": cfg.model.name_or_path}, "legacy": (STATE_FILE,)}


def check_sweep_resources(cfg: GeorConfig, space: SearchSpace) -> None:
    """``sweep.max_concurrent`` trials, each at the largest settings the space allows, fit the cluster."""
    import ray

    from tasks.ray_session import connect_ray

    connect_ray()
    total = ray.cluster_resources()
    g = cfg.grpo
    workers = space.largest("grpo.num_workers", g.num_workers)
    per_worker = space.largest("grpo.cpus_per_worker", g.cpus_per_worker)
    actors = space.largest("grpo.reward_actors", g.reward_actors) * space.largest(
        "grpo.reward_actor_cpus", g.reward_actor_cpus
    )
    per_trial = cfg.sweep.cpus_per_trial + workers * (per_worker + actors)
    shape = (
        f"sweep.cpus_per_trial {cfg.sweep.cpus_per_trial} + grpo.num_workers {workers} x "
        f"(grpo.cpus_per_worker {per_worker} + reward actors {actors:g})"
    )
    cpus = total.get("CPU", 0.0)
    if per_trial > cpus:
        raise UserFacingError(f"one trial needs {per_trial:g} CPUs ({shape}) but the cluster has {cpus:g}")
    if cfg.sweep.max_concurrent * per_trial > cpus + 1e-9:
        fits = int(cpus // per_trial)
        raise UserFacingError(
            f"sweep.max_concurrent={cfg.sweep.max_concurrent} trials x {per_trial:g} CPUs ({shape}) = "
            f"{cfg.sweep.max_concurrent * per_trial:g} CPUs, but the cluster has {cpus:g}: set "
            f"sweep.max_concurrent={fits} or lower grpo.cpus_per_worker / grpo.reward_actor_cpus"
        )
    if space.largest("grpo.use_gpu", g.use_gpu):
        gpus = total.get("GPU", 0.0)
        if cfg.sweep.max_concurrent * workers > gpus:
            raise UserFacingError(
                f"sweep.max_concurrent={cfg.sweep.max_concurrent} trials x {workers} GPUs (grpo.num_workers) "
                f"= {cfg.sweep.max_concurrent * workers} GPUs, but the cluster has {int(gpus)}: set "
                f"sweep.max_concurrent={int(gpus // workers)}"
            )


def validations_per_trial(cfg: GeorConfig, space: SearchSpace) -> int:
    """How many objective reports the longest trial makes (one per checkpoint, ``grpo.save_steps``)."""
    max_steps = space.largest("grpo.max_steps", cfg.grpo.max_steps)
    if max_steps <= 0:
        return 10**6  # epoch-based: unknown up front; ASHA only needs an upper bound
    return math.ceil(max_steps / cfg.grpo.save_steps)


def asha_max_t(cfg: GeorConfig, space: SearchSpace) -> int:
    """ASHA's ``max_t``, in validations; its rungs sit at grace_period x reduction_factor^k up to it.
    One less than a trial's validations, so a trial's last validation is never a rung: a trial that
    got that far finishes and exports."""
    validations = validations_per_trial(cfg, space)
    if cfg.sweep.grace_period > validations:
        raise ConfigError(
            f"sweep.grace_period: got {cfg.sweep.grace_period}, but a trial validates only {validations} "
            "times (grpo.max_steps / grpo.save_steps); lower it or lengthen the trials"
        )
    return max(cfg.sweep.grace_period, validations - 1)


def _tune_param_space(space: SearchSpace, search: str) -> dict[str, Any]:
    from ray import tune

    param_space: dict[str, Any] = {}
    for d in space.dimensions:
        if d.kind == "constant":
            param_space[d.key] = d.values[0]
        elif d.kind == "choice":
            param_space[d.key] = (tune.grid_search if search == "grid" else tune.choice)(list(d.values))
        elif d.kind == "uniform":
            param_space[d.key] = tune.uniform(*d.values)
        elif d.kind == "loguniform":
            param_space[d.key] = tune.loguniform(*d.values)
        else:  # randint, both ends included (Tune's upper end is excluded)
            param_space[d.key] = tune.randint(d.values[0], d.values[1] + 1)
    return param_space


def _tune_config(cfg: GeorConfig, space: SearchSpace, objective: str) -> Any:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    s = cfg.sweep
    if s.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        searcher: Any = OptunaSearch(seed=s.seed)
    else:
        # a variant generator given as search_alg ignores TuneConfig.max_concurrent_trials: set it here
        searcher = BasicVariantGenerator(random_state=s.seed, max_concurrent=s.max_concurrent)
    if s.scheduler == "asha":
        scheduler: Any = ASHAScheduler(
            time_attr="training_iteration",
            max_t=asha_max_t(cfg, space),
            grace_period=s.grace_period,
            reduction_factor=s.reduction_factor,
            stop_last_trials=False,  # a trial that survives every rung finishes (and exports)
        )
    else:
        scheduler = FIFOScheduler()
    return tune.TuneConfig(
        metric=objective,
        mode=s.mode,
        search_alg=searcher,
        scheduler=scheduler,
        num_samples=s.num_samples,
        # the variant generator limits itself (above); Tune wraps a Searcher (optuna) in a limiter
        max_concurrent_trials=s.max_concurrent if s.search == "optuna" else None,
        trial_dirname_creator=lambda trial: trial.trial_id,
    )


def _storage(output_uri: str) -> tuple[str, Any]:
    """Tune's storage path for ``output_uri`` and its pyarrow filesystem (None for local paths)."""
    fs, path = uris.pyarrow_filesystem(output_uri)
    if uris.is_s3(output_uri):
        return path, fs
    return str(Path(path).resolve()), None


def run_sweep(
    cfg: GeorConfig,
    space: SearchSpace,
    *,
    tracking_env: dict[str, str],
    parent_run_id: str | None = None,
    overwrite: bool = False,
) -> SweepResult:
    """Run (or resume) the sweep ``cfg.sweep`` over ``space`` on the GRPO stage of ``cfg``.
    ``tracking_env`` is what trial processes need to log under the sweep's MLflow run."""
    from ray import tune

    output = cfg.sweep.output
    objective = objective_of(cfg.sweep).name
    check_sweep(cfg, space, overwrite=overwrite)
    owned = claim_output(output, "sweep", **_ownership(cfg))
    if overwrite:
        owned.remove(STATE_FILE, RESULT_FILE, BEST_CONFIG, TUNE_DIR, TRIALS_DIR)
    uris.write_text(
        uris.join(output, STATE_FILE),
        json.dumps({**_resume_key(cfg, space), "parent_run_id": parent_run_id}, indent=2) + "\n",
    )
    base = cfg.to_dict()
    base["tracking"]["parent_run_id"] = ""  # trials nest under the sweep's run (tracking_env)
    setup = TrialSetup(base, cfg.data.dataset, cfg.model.name_or_path, output, objective, tracking_env)
    trainable = tune.with_resources(
        tune.with_parameters(grpo_trial, setup=setup), {"CPU": cfg.sweep.cpus_per_trial}
    )
    storage_path, fs = _storage(output)
    experiment = f"{storage_path.rstrip('/')}/{TUNE_DIR}"
    resumed = tune.Tuner.can_restore(experiment, storage_filesystem=fs)
    if resumed:
        print(f"geor sweep: resuming the sweep at {output} (finished and failed trials are kept)")
        tuner = tune.Tuner.restore(
            experiment,
            trainable,
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=False,
            storage_filesystem=fs,
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=_tune_param_space(space, cfg.sweep.search),
            tune_config=_tune_config(cfg, space, objective),
            run_config=tune.RunConfig(
                name=TUNE_DIR,
                storage_path=storage_path,
                storage_filesystem=fs,
                failure_config=tune.FailureConfig(max_failures=0),
                verbose=1,
            ),
        )
    with releasing_placement_groups():  # a Ctrl-C can strand a starting trial's worker group
        results = tuner.fit()
    saved = _saved_statuses(experiment, fs)
    interrupted = any(status not in ("TERMINATED", "ERROR") for status in saved.values())
    trials = [_summary(result, output, objective, saved) for result in results]
    trials.sort(key=lambda t: t.trial_id)
    result = SweepResult(objective, trials, None, None, interrupted, resumed)
    if not interrupted:
        result.best = best_trial(trials, cfg.sweep.mode)
    if result.best is not None:
        result.best_config_uri = _write_best_config(base, result.best, output)
        if not cfg.sweep.keep_checkpoints:
            result.deleted_checkpoints = _delete_checkpoints(owned, trials, result.best)
    uris.write_text(
        uris.join(output, RESULT_FILE), json.dumps(result.to_dict(), indent=2, default=str) + "\n"
    )
    return result


def _saved_statuses(experiment: str, fs: Any) -> dict[str, str]:
    """Each trial's status as Tune saved it last. After an interruption Tune marks the trials it
    stopped TERMINATED in memory, but its saved state (what a resume reads) keeps them RUNNING."""
    from ray.tune import ExperimentAnalysis

    return {t.trial_id: t.status for t in ExperimentAnalysis(experiment, storage_filesystem=fs).trials}


def _summary(result: Any, output: str, objective: str, saved: dict[str, str]) -> TrialSummary:
    trial_id = Path(result.path).name
    record = read_trial_record(output, trial_id) or {}
    error = record.get("error")
    if saved.get(trial_id) not in ("TERMINATED", "ERROR"):
        status = "unfinished"
    elif result.error is not None:
        status = "failed"
        error = error or str(result.error).strip().splitlines()[-1]
    elif record.get("status") == "finished":
        status = "finished"
    else:  # stopped by the scheduler; what its killed trainer raised on the way out is no error
        status, error = "stopped", None
    metrics = result.metrics or {}
    return TrialSummary(
        trial_id=trial_id,
        params=dict(result.config or record.get("params") or {}),
        status=status,
        value=metrics.get(objective),
        step=metrics.get("step"),
        validations=int(metrics.get("training_iteration", 0) or 0),
        error=" ".join(error.split()) if error else None,  # one line, for the table
        output=trial_output(output, trial_id),
        attempts=int(record.get("attempts", 0)),
        started_at=record.get("started_at"),
        ended_at=record.get("ended_at"),
        run_id=record.get("run_id"),
    )


def best_trial(trials: list[TrialSummary], mode: str) -> TrialSummary | None:
    """The trial with the best objective among those that finished (else among all that reported)."""
    for pool in ([t for t in trials if t.status == "finished"], trials):
        scored = [t for t in pool if t.value is not None and not math.isnan(t.value)]
        if scored:
            return (max if mode == "max" else min)(scored, key=lambda t: t.value)
    return None


def _write_best_config(base: dict[str, Any], best: TrialSummary, output: str) -> str:
    cfg = trial_config(base, best.params)
    cfg.grpo.output = best.output
    uri = uris.join(output, BEST_CONFIG)
    header = (
        f"# geor sweep: the best trial ({best.trial_id}); run it with `geor grpo --config {BEST_CONFIG}`\n"
    )
    uris.write_text(uri, header + cfg.to_yaml())
    return uri


def _delete_checkpoints(owned: OwnedOutput, trials: list[TrialSummary], best: TrialSummary) -> list[str]:
    """Remove the GRPO checkpoints (``ray/``) and exports (``model/``) of every trial but ``best``,
    inside the sweep's own output only."""
    deleted = []
    for trial in trials:
        if trial.trial_id == best.trial_id:
            continue
        for part in (RAY_DIR, MODEL_DIR):
            entry = f"{TRIALS_DIR}/{trial.trial_id}/{part}"
            if uris.exists(uris.join(owned.uri, entry)):
                owned.remove(entry)
                deleted.append(uris.join(trial.output, part))
    return deleted
