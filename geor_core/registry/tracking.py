"""MLflow helpers: one run per stage, nested under a flow's parent run, with lineage tags.

- No tracking URI (``cfg.tracking.uri``, else ``MLFLOW_TRACKING_URI``) or a rank other than 0:
  every helper is a no-op and MLflow is not even imported.
- ``stage_run`` opens the stage's run; under a flow it is a child of the parent run whose id
  travels as ``cfg.tracking.parent_run_id`` or ``GEOR_PARENT_RUN_ID`` (``tracking_env`` gives the
  variables to put in a Ray runtime_env). The run ends FAILED when the body raises.
- Every run carries ``geor.stage``, ``geor.config_hash`` and ``geor.code_version``, plus the
  caller's ``geor.data_fingerprint`` / ``geor.upstream.*`` tags, and the full resolved config as
  the artifact ``config.yaml``. A stage's params are the config it reads
  (``geor_core.config.logged_params.STAGE_READS``) plus its real inputs and output
  (``input.model``, ``input.data``, ``output``) and the run that produced each input
  (``input.<name>.run_id``, from the input's completion marker). Config values and tags whose key
  names a secret are never logged, and every URI in a param, tag or message is logged with its
  credentials masked (``uris.redact_uri``); only ``tracking_env`` hands on the real URI, so that
  Ray workers can connect.
- A file store (``file:///...`` or a plain path), which MLflow 3 refuses unless
  ``MLFLOW_ALLOW_FILE_STORE=true``, is a one-line error naming stores that work
  (``sqlite:///path/mlflow.db`` or an ``http://`` server).
- ``MetricLogger`` logs every ``tracking.log_every_n_steps`` steps, asynchronously: one HTTP
  call per step costs about 0.7 s here.
- System metrics of a training run come from its rank-0 worker (``start_system_metrics``), where
  the accelerators are, not from the driver (on a cluster, the head node).
"""

from __future__ import annotations

import base64
import functools
import os
import socket
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

from geor_core import uris
from geor_core.config import GeorConfig, flat_params, is_secret_key
from geor_core.config.logged_params import config_yaml, stage_params
from geor_core.errors import UserFacingError
from geor_core.registry.lineage import CODE_VERSION_ENV, code_version

if TYPE_CHECKING:
    from mlflow import ActiveRun, MlflowClient

PARENT_RUN_ENV = "GEOR_PARENT_RUN_ID"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
PARENT_RUN_TAG = "mlflow.parentRunId"
CONFIG_ARTIFACT = "config.yaml"
SYSTEM_METRICS_TAG = "geor.system_metrics_from"
MAX_TAG_CHARS = 5000
ALLOW_FILE_STORE_ENV = "MLFLOW_ALLOW_FILE_STORE"
# MLflow prints "View run ... at: <tracking URI>/..." when a run ends; off when the URI has credentials.
SUPPRESS_URL_PRINTING_ENV = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"


def tracking_uri(cfg: GeorConfig) -> str:
    """The tracking URI in force: ``cfg.tracking.uri``, else ``MLFLOW_TRACKING_URI``, else "".

    A file store MLflow would refuse is a :class:`UserFacingError` naming stores that work."""
    uri = cfg.tracking.uri or os.environ.get(TRACKING_URI_ENV, "")
    _refuse_file_store(uri)
    return uri


def _refuse_file_store(uri: str) -> None:
    scheme = urlsplit(uri).scheme
    is_file_store = bool(uri) and (scheme in ("", "file") or len(scheme) == 1)  # C:/... is a path
    allowed = os.environ.get(ALLOW_FILE_STORE_ENV, "").strip().lower() in ("true", "1")
    if is_file_store and not allowed:
        raise UserFacingError(
            f"MLflow tracking URI {uris.redact_uri(uri)!r} (tracking.uri or {TRACKING_URI_ENV}) is a file "
            "store, which MLflow 3 refuses; use a database store such as sqlite:///path/to/mlflow.db or a "
            f"tracking server such as http://127.0.0.1:5000 (or set {ALLOW_FILE_STORE_ENV}=true)"
        )


def parent_run_id(cfg: GeorConfig) -> str:
    """The flow's parent run id: ``cfg.tracking.parent_run_id``, else ``GEOR_PARENT_RUN_ID``, else ""."""
    return cfg.tracking.parent_run_id or os.environ.get(PARENT_RUN_ENV, "")


def current_rank(rank: int | None = None) -> int:
    """``rank`` when given, else the ``RANK`` environment variable, else 0."""
    if rank is not None:
        return rank
    raw = os.environ.get("RANK", "0") or "0"
    try:
        return int(raw)
    except ValueError as exc:
        raise UserFacingError(f"environment variable RANK={raw!r} is not an integer") from exc


def scrub(values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``values`` without secret-named keys (recursively, for nested mappings)."""
    clean: dict[str, Any] = {}
    for key, value in values.items():
        if is_secret_key(str(key)):
            continue
        clean[key] = scrub(value) if isinstance(value, Mapping) else value
    return clean


def lineage_tags(cfg: GeorConfig, stage: str, extra: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The tags every run carries, plus ``extra`` (secret-named keys removed)."""
    tags = {
        "geor.stage": stage,
        "geor.config_hash": cfg.fingerprint(),
        "geor.code_version": code_version(),
    }
    tags.update(
        {key: uris.redact_uri(str(value))[:MAX_TAG_CHARS] for key, value in scrub(extra or {}).items()}
    )
    return tags


@functools.lru_cache(maxsize=8)
def _require_reachable(uri: str) -> None:
    """Fail fast, with the URI in the message, when an HTTP tracking server does not answer
    (MLflow's own retries would otherwise stall a job for minutes). Successes are cached."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(_health_request(uri), timeout=5):
            return
    except (OSError, ValueError) as exc:
        raise UserFacingError(
            uris.redact_uri(
                f"MLflow tracking server {uri} is not reachable ({exc}); start it, or unset "
                f"tracking.uri and {TRACKING_URI_ENV} to run without tracking"
            )
        ) from None  # the chained exception would show the URI with its credentials


def _health_request(uri: str) -> urllib.request.Request:
    """GET <server>/health; ``user:password@`` in the URI becomes a basic-auth header (as MLflow's
    own client sends it), since urllib cannot connect to a URL with credentials in it."""
    parts = urlsplit(uri)
    netloc = parts.netloc.rpartition("@")[2]
    url = urlunsplit((parts.scheme, netloc, f"{parts.path.rstrip('/')}/health", "", ""))
    headers = {}
    if "@" in parts.netloc:
        credentials = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        headers["Authorization"] = f"Basic {base64.b64encode(credentials.encode()).decode()}"
    return urllib.request.Request(url, headers=headers)


def _client(uri: str) -> MlflowClient:
    import mlflow

    _require_reachable(uri)
    if uris.redact_uri(uri) != uri:  # credentials in the URI: MLflow must not print it
        os.environ[SUPPRESS_URL_PRINTING_ENV] = "true"
    mlflow.set_tracking_uri(uri)
    return mlflow.MlflowClient(uri)


def _experiment_id(client: MlflowClient, cfg: GeorConfig, parent: str) -> str:
    """The parent's experiment when there is a parent, else ``cfg.tracking.experiment`` (created
    on first use; two processes creating it at once is fine)."""
    from mlflow.exceptions import MlflowException

    if parent:
        try:
            return client.get_run(parent).info.experiment_id
        except MlflowException as exc:
            raise UserFacingError(
                f"parent run {parent!r} (tracking.parent_run_id or {PARENT_RUN_ENV}) does not exist "
                f"on {uris.redact_uri(client.tracking_uri)}: {uris.redact_uri(exc.message)}"
            ) from exc
    name = cfg.tracking.experiment
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name)
        except MlflowException:
            experiment = client.get_experiment_by_name(name)  # created by someone else meanwhile
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise UserFacingError(
            f"MLflow experiment {name!r} is deleted; restore it or set tracking.experiment to another name"
        )
    return experiment.experiment_id


def _failure_tag(exc: BaseException) -> dict[str, str]:
    return {"geor.error": uris.redact_uri(f"{type(exc).__name__}: {exc}")[:MAX_TAG_CHARS]}


def io_params(inputs: Mapping[str, str] | None, output: str | None) -> dict[str, str]:
    """A run's real inputs and output as params: ``input.<name>`` (with ``input.<name>.run_id``
    when the input's marker names the run that wrote it) and ``output``."""
    params: dict[str, str] = {}
    for name, uri in (inputs or {}).items():
        params[f"input.{name}"] = uris.redact_uri(uri)
        try:
            marker = uris.read_marker(uri) if uri and not uri.startswith("models:/") else None
        except (OSError, ValueError):  # a hub id or an unreadable folder: no producing run to name
            marker = None
        if marker and marker.get(uris.MARKER_RUN_ID):
            params[f"input.{name}.run_id"] = str(marker[uris.MARKER_RUN_ID])
    if output:
        params["output"] = uris.redact_uri(output)
    return params


@contextmanager
def stage_run(
    cfg: GeorConfig,
    stage: str,
    *,
    tags: Mapping[str, Any] | None = None,
    inputs: Mapping[str, str] | None = None,
    output: str | None = None,
    rank: int | None = None,
) -> Iterator[ActiveRun | None]:
    """Open the MLflow run of one stage; yields the active run, or None when not tracking.

    A child of the flow's parent run when there is one. Logs as params the config the stage reads
    (secrets removed) and its ``inputs``/``output`` (see ``io_params``), the full config as
    ``config.yaml``, and the lineage tags. Ends FAILED (KILLED on Ctrl-C) and re-raises when the
    body raises."""
    uri = tracking_uri(cfg)
    if not uri or current_rank(rank) != 0:
        yield None
        return
    import mlflow

    client = _client(uri)
    parent = parent_run_id(cfg)
    run = mlflow.start_run(
        experiment_id=_experiment_id(client, cfg, parent),
        run_name=stage,
        parent_run_id=parent or None,
        nested=mlflow.active_run() is not None,
        tags=lineage_tags(cfg, stage, tags),
    )
    try:
        mlflow.log_params({**stage_params(cfg, stage), **io_params(inputs, output)})
        mlflow.log_text(config_yaml(cfg), CONFIG_ARTIFACT)
        yield run
    except BaseException as exc:
        try:
            mlflow.set_tags(_failure_tag(exc))
        finally:
            mlflow.end_run("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    mlflow.end_run("FINISHED")


def start_system_metrics(cfg: GeorConfig, run_id: str | None) -> Any | None:
    """Start MLflow's system-metrics monitor (CPU, memory, disk, network, GPU) for ``run_id`` in
    this process: a training stage's rank-0 worker, where the accelerators are. Returns the
    monitor (call ``finish()`` on it), or None when not tracking or ``tracking.system_metrics``
    is off. The run's tag ``geor.system_metrics_from`` names the host and process."""
    uri = tracking_uri(cfg)
    if not run_id or not uri or not cfg.tracking.system_metrics:
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    client = _client(uri)
    monitor = SystemMetricsMonitor(run_id, resume_logging=True, tracking_uri=uri)
    monitor.start()
    client.set_tag(
        run_id, SYSTEM_METRICS_TAG, f"rank-0 training worker on {socket.gethostname()}, pid {os.getpid()}"
    )
    return monitor


@contextmanager
def parent_run(cfg: GeorConfig, name: str, *, tags: Mapping[str, Any] | None = None) -> Iterator[str | None]:
    """Open a flow's parent run; yields its id (None when not tracking).

    While open, ``GEOR_PARENT_RUN_ID`` names it, so stages run here, and Ray workers given
    ``tracking_env(cfg)``, open child runs. A parent opened under another parent (a sweep trial
    inside a sweep) becomes its child. The run is not made the active MLflow run of this process."""
    uri = tracking_uri(cfg)
    if not uri:
        yield None
        return
    from mlflow.entities import Param
    from mlflow.tracking.context.registry import resolve_tags

    client = _client(uri)
    grandparent = parent_run_id(cfg)
    run_tags = lineage_tags(cfg, name, tags)
    if grandparent:
        run_tags[PARENT_RUN_TAG] = grandparent
    run = client.create_run(
        _experiment_id(client, cfg, grandparent), run_name=name, tags=resolve_tags(run_tags)
    )
    run_id = run.info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in flat_params(cfg).items()])
    client.log_text(run_id, config_yaml(cfg), CONFIG_ARTIFACT)
    previous = os.environ.get(PARENT_RUN_ENV)
    os.environ[PARENT_RUN_ENV] = run_id
    try:
        yield run_id
    except BaseException as exc:
        try:
            client.set_tag(run_id, "geor.error", _failure_tag(exc)["geor.error"])
        finally:
            client.set_terminated(run_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    else:
        client.set_terminated(run_id, "FINISHED")
    finally:
        if previous is None:
            os.environ.pop(PARENT_RUN_ENV, None)
        else:
            os.environ[PARENT_RUN_ENV] = previous


def tracking_env(cfg: GeorConfig) -> dict[str, str]:
    """Environment variables that let Ray workers track like this process (for ``runtime_env``):
    the tracking URI, the parent run id and the code version. Empty when not tracking."""
    uri = tracking_uri(cfg)
    if not uri:
        return {}
    env = {TRACKING_URI_ENV: uri, CODE_VERSION_ENV: code_version()}
    parent = parent_run_id(cfg)
    if parent:
        env[PARENT_RUN_ENV] = parent
    return env


class MetricLogger:
    """Logs training metrics to a stage run every ``every_n_steps`` steps; a no-op when ``run``
    is None (not tracking, or a rank other than 0: ``stage_run`` yields None there)."""

    def __init__(self, run: ActiveRun | None, every_n_steps: int) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps: got {every_n_steps!r}, must be >= 1")
        self.run_id = run.info.run_id if run is not None else None
        self.every_n_steps = every_n_steps

    def log(self, step: int, metrics: Mapping[str, float], *, force: bool = False) -> bool:
        """Log ``metrics`` at ``step`` when it is due (or ``force``); True when something was sent."""
        if self.run_id is None or (step % self.every_n_steps and not force):
            return False
        values: dict[str, float] = {}
        for key, value in metrics.items():
            try:
                values[key] = float(value)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"metric {key!r}: got {value!r}, expected a number") from exc
        import mlflow

        mlflow.log_metrics(values, step=step, run_id=self.run_id, synchronous=False)
        return True
