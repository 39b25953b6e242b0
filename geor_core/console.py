"""What a person sees on the console, and the full log kept beside it.

A run with a root (``geor demo``, ``geor pipeline``) runs inside :func:`console_log`: everything
the process prints also goes to ``<root>/logs/geor-<command>-<time>.log``. Unless ``--verbose``
(or ``GEOR_VERBOSE=1``) asks for everything, the console is quiet: the libraries' INFO lines go to
that file only, their download/save progress bars are off, and Ray worker output is routed to the
file by tasks/ray_session.py, except geor's own lines (``[geor ...]``) and progress bars. Warnings
and errors still reach the console, and a failure still ends with its reason.

Console lines are short: :func:`metric_line` turns a Trainer log dict into one line of the
metrics that matter (``[geor sft] step 50/400 loss 1.238 grad 0.68 lr 1.43e-03 ...``); the full
dicts go to MLflow.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

VERBOSE_ENV = "GEOR_VERBOSE"
LOGS_DIR = "logs"
CONSOLE_PREFIX = "[geor "  # lines that start so are geor's own console lines, shown in quiet mode too

# Trainer log keys shown on the console, in this order, with their short names; the rest go to MLflow.
SHOWN_METRICS = {
    "loss": "loss",
    "eval_loss": "eval_loss",
    "reward": "reward",
    "reward_std": "reward_std",
    "kl": "kl",
    "mean_token_accuracy": "acc",
    "eval_mean_token_accuracy": "eval_acc",
    "grad_norm": "grad",
    "learning_rate": "lr",
    "train_loss": "train_loss",
    "train_runtime": "seconds",
}
# Variables that quiet the libraries' own chatter; set before they are imported and before Ray
# starts, so the local Ray workers inherit them.
QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # save/load bars of transformers and huggingface_hub
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "1",  # "View run at" after every run; the demo prints one
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # "Downloading artifacts" when a model is logged
}
QUIET_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "mlflow", "DeepSpeed", "py.warnings")


def _number(value: float) -> str:
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4g}"
    return f"{value:.2e}"


def format_metrics(logs: dict[str, Any]) -> str:
    """The shown metrics of a Trainer log dict as ``name value`` pairs, in :data:`SHOWN_METRICS` order."""
    pairs = [
        f"{short} {_number(float(logs[key]))}"
        for key, short in SHOWN_METRICS.items()
        if isinstance(logs.get(key), int | float) and not isinstance(logs.get(key), bool)
    ]
    return "  ".join(pairs)


def metric_line(stage: str, step: int, max_steps: int, logs: dict[str, Any]) -> str:
    """One console line for a Trainer log: ``[geor sft] step 50/400  loss 1.238  grad 0.68 ...``."""
    where = f"step {step}/{max_steps}" if max_steps > 0 else f"step {step}"
    metrics = format_metrics(logs)
    return f"{CONSOLE_PREFIX}{stage}] {where}" + (f"  {metrics}" if metrics else "")


def progress_bar(total: int, desc: str, unit: str) -> Any:
    """A console progress bar with rate and ETA (tqdm), for work the driver counts itself."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, mininterval=1.0)


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


class _Tee(io.TextIOBase):
    """A text stream that writes to the console stream and to the log file. Carriage-return
    redraws (progress bars) reach the file as their last state only."""

    def __init__(self, stream: IO[str], log: IO[str]) -> None:
        self.stream, self.log, self._pending = stream, log, ""
        self._lock = threading.Lock()  # Ray prints worker output from its own thread

    def write(self, text: str) -> int:
        with self._lock:
            self.stream.write(text)
            *done, self._pending = (self._pending + text).split("\n")
            for line in done:
                self.log.write(line.rsplit("\r", 1)[-1] + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
        self.log.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", "utf-8")


_log: IO[str] | None = None
_undo: list[Callable[[], None]] = []  # how to put back what console_log changed, newest last


def log_file() -> IO[str] | None:
    """The open full log of this process while a :func:`console_log` block runs."""
    return _log


@contextmanager
def console_log(root: str | Path, command: str, *, verbose: bool = False) -> Iterator[Path | None]:
    """While the block runs, copy everything this process prints into
    ``<root>/logs/geor-<command>-<time>.log`` and, unless ``verbose``, keep the console quiet (see
    the module docstring); everything is put back afterwards. A nested block (the demo runs the
    pipeline) keeps the outer log and yields None. An error leaving the block is written to the log
    with its traceback."""
    global _log
    if _log is not None:
        yield None
        return
    folder = Path(root) / LOGS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"geor-{command}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    _log = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed when the block ends
    if verbose:
        _set_env({VERBOSE_ENV: "1"})
    if not is_verbose():
        _set_env(QUIET_ENV)
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Tee(sys.stdout, _log), _Tee(sys.stderr, _log)
    _undo.append(lambda: (setattr(sys, "stdout", streams[0]), setattr(sys, "stderr", streams[1])))
    quiet_loggers()
    print(
        f"{CONSOLE_PREFIX}{command}] full log: {path}" + ("" if is_verbose() else " (--verbose shows it all)")
    )
    try:
        yield path
    except BaseException:
        traceback.print_exc(file=_log)
        raise
    finally:
        sys.stdout.flush()
        while _undo:
            _undo.pop()()
        _log.close()
        _log = None


def _set_env(values: dict[str, str]) -> None:
    """Set the variables not set already, and remember to unset them."""
    added = [name for name in values if name not in os.environ]
    os.environ.update({name: values[name] for name in added})
    _undo.append(lambda: [os.environ.pop(name, None) for name in added])


class _InfoToLogFile(logging.Filter):
    """On a console handler: records below WARNING go to the full log instead of the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        if _log is not None and not getattr(record, "geor_logged", False):  # once, however many handlers
            _log.write(f"{record.levelname} {record.name}: {record.getMessage()}\n")
            record.geor_logged = True
        return False


def quiet_loggers(names: tuple[str, ...] = ("", *QUIET_LOGGERS)) -> None:
    """Inside :func:`console_log`: point the console handlers of the root logger, Ray, Ray Data,
    MLflow and DeepSpeed (``names``) at the teed streams, so the full log has their lines too, and
    in quiet mode send their INFO lines to the full log only. Applies to the handlers those loggers
    have now: call it again after importing one of them. Undone when the block ends."""
    if _log is None:
        return
    teed = {getattr(stream, "stream", None): stream for stream in (sys.stdout, sys.stderr)}
    for name in names:
        for handler in logging.getLogger(name).handlers:
            if not isinstance(handler, logging.StreamHandler) or isinstance(handler, logging.FileHandler):
                continue
            if handler.stream in teed:
                _undo.append(lambda h=handler, s=handler.stream: h.setStream(s))
                handler.setStream(teed[handler.stream])
            if not is_verbose() and not any(isinstance(f, _InfoToLogFile) for f in handler.filters):
                quiet = _InfoToLogFile()
                handler.addFilter(quiet)
                _undo.append(lambda h=handler, f=quiet: h.removeFilter(f))
