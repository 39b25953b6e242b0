"""A lease that lets exactly one run (a retrain) hold a lock at a time, on a local path or on S3.

    with RunLock("s3://bucket/geo-r/retrain.lock"):
        ...  # only one process anywhere gets here at a time

Entering takes the lock with an exclusive create, or raises :class:`LockHeld`, whose message names
the holder (user@host pid N), since when it holds the lock, how long ago it last renewed it, and
how to break it. While the holder lives, a daemon thread renews the lock every ``heartbeat_s``. A
lock not renewed for its ``ttl_s`` belongs to a dead holder: the next run takes it over
atomically (of two takers exactly one wins; see :mod:`geor_core.registry.run_lock_stores`). Leaving stops
the renewals and deletes the lock only if it is still this run's.

A holder that stalls past its TTL may find at its next renewal that another run took the lock;
the lock is then lost: :meth:`RunLock.ensure_held` raises :class:`LockLost`, and leaving does not
touch the new holder's lock. On S3 ages have 1 s resolution: keep ``ttl_s`` at least
``heartbeat_s`` + 2 s.

A corrupt lock record (not JSON, nested too deeply, a time that is no date, a ``ttl_s`` that is
NaN, infinite or not positive, ...; see :mod:`geor_core.registry.run_lock_stores`) is never taken over
at once, since it may still belong to a live holder: its age comes from the store's timestamp,
which a live holder's heartbeat keeps fresh whatever the content, and it counts as held until
that age passes this run's own ``ttl_s`` (the TTL every run of one workflow shares). Until then
:class:`LockHeld` says the record is unreadable, why, and how to break it. A local lock path
that is a directory is refused with a message and left alone.
"""

from __future__ import annotations

import getpass
import logging
import math
import os
import socket
import threading
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from types import TracebackType

from geor_core.errors import UserFacingError
from geor_core.registry.run_lock_stores import FoundLock, LockRecord, lock_store

log = logging.getLogger(__name__)

# Attempts at create / read / take over before giving up on a lock that keeps changing hands.
_ATTEMPTS = 3


class LockHeld(UserFacingError):
    """Another live run holds the lock; the message names it and says how to break a stale lock."""


class LockLost(UserFacingError):
    """This run held the lock, stalled past its TTL, and another run took the lock over."""


def default_owner() -> str:
    """``user@host pid N``: who holds a lock, as another user reads it."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no USER variable (some containers)
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"


class RunLock:
    """A lock at ``uri`` held for a ``with`` block, renewed every ``heartbeat_s`` (default
    ``ttl_s / 4``) and taken over by others once not renewed for ``ttl_s`` seconds."""

    def __init__(
        self, uri: str, ttl_s: float = 60.0, heartbeat_s: float | None = None, owner: str | None = None
    ) -> None:
        if not _positive(ttl_s):
            raise ValueError(f"run lock ttl_s: got {ttl_s!r}, must be a positive number of seconds")
        heartbeat_s = ttl_s / 4 if heartbeat_s is None else heartbeat_s
        if not _positive(heartbeat_s) or heartbeat_s >= ttl_s:
            raise ValueError(f"run lock heartbeat_s: got {heartbeat_s!r}, must be > 0 and < ttl_s ({ttl_s})")
        self.uri = uri
        self.ttl_s = float(ttl_s)
        self.heartbeat_s = float(heartbeat_s)
        self.owner = owner or default_owner()
        self._store = lock_store(uri)
        self._record: LockRecord | None = None
        self._version: str | None = None
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    @property
    def held(self) -> bool:
        """True between a successful acquire and release, unless the lock was lost."""
        return self._version is not None and not self._lost.is_set()

    def acquire(self) -> None:
        """Take the lock (or an expired one), or raise :class:`LockHeld` naming the holder."""
        if self._version is not None:
            raise RuntimeError(f"{self.uri}: this RunLock is already held")
        now = time.time()
        self._record = LockRecord(self.owner, uuid.uuid4().hex, now, now, self.ttl_s)
        found: FoundLock | None = None
        for _ in range(_ATTEMPTS):
            version = self._store.create(self._record.to_bytes())
            if version is None:
                found = self._store.read()
                version = self._adopt_or_take(found) if found is not None else None
            if version is not None:
                self._start(version)
                return
        raise LockHeld(self._describe_holder(found))

    def _adopt_or_take(self, found: FoundLock) -> str | None:
        """The version to hold: ours already (a retried create), a taken-over expired lock, or None."""
        if found.record is not None and found.record.token == self._record.token:
            return found.version
        ttl_s = found.record.ttl_s if found.record is not None else self.ttl_s
        if not found.age_s > ttl_s:
            raise LockHeld(self._describe_holder(found))
        version = self._store.take_over(found, ttl_s, self._record.to_bytes())
        if version is not None:
            log.warning(
                "%s: took over an expired lock from %s (no heartbeat for %.0f s, TTL %.0f s)",
                self.uri,
                found.record.owner if found.record is not None else f"an unreadable record ({found.problem})",
                found.age_s,
                ttl_s,
            )
        return version

    def _start(self, version: str) -> None:
        self._version = version
        self._stop.clear()
        self._lost.clear()
        self._thread = threading.Thread(
            target=self._renew_until_stopped, name="run-lock-heartbeat", daemon=True
        )
        self._thread.start()

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(self.heartbeat_s) and not self._lost.is_set():
            try:
                self._renew_once()
            except Exception as exc:  # a transient store error: the next beat tries again
                log.warning(
                    "%s: could not renew the lock (%s); retrying in %.1f s", self.uri, exc, self.heartbeat_s
                )

    def _renew_once(self) -> None:
        record = replace(self._record, heartbeat_at=time.time(), beats=self._record.beats + 1)
        version = self._store.renew(self._version, record.to_bytes())
        if version is None:  # not the version we hold: unless our own write landed twice, lost
            found = self._store.read()
            if found is None or found.record is None or found.record.token != record.token:
                self._lost.set()
                log.error(
                    "%s: lost the lock; %s",
                    self.uri,
                    self._describe_holder(found) if found is not None else "someone deleted it",
                )
                return
            version = found.version
        self._record, self._version = record, version

    def ensure_held(self) -> None:
        """Raise :class:`LockLost` when another run took the lock over (this run stalled past its
        TTL); call it between long steps so that two runs never go on at once."""
        if self._lost.is_set():
            raise LockLost(
                f"this run lost the lock {self.uri}: it was not renewed for more than {self.ttl_s:.0f} s "
                f"and another run took it over; stopping so that two runs do not go on at once"
            )
        if self._version is None:
            raise RuntimeError(f"{self.uri}: the lock is not held (acquire it first)")

    def release(self) -> None:
        """Stop renewing and delete the lock if it is still this run's; idempotent."""
        if self._version is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()  # waits out a renewal in flight
        try:
            if not self._store.delete(self._version) and not self._lost.is_set():
                log.warning("%s: the lock was no longer this run's at release; left as it is", self.uri)
        except OSError as exc:
            log.warning(
                "%s: could not delete the lock (%s); it expires %.0f s after its last heartbeat",
                self.uri,
                exc,
                self.ttl_s,
            )
        finally:
            self._version = None
            self._thread = None

    def _describe_holder(self, found: FoundLock | None) -> str:
        if found is None:
            return f"the lock {self.uri} kept changing hands; try again"
        record = found.record
        ttl_s = record.ttl_s if record is not None else self.ttl_s
        holder = (
            f"{record.owner}, since {datetime.fromtimestamp(record.acquired_at, UTC):%Y-%m-%d %H:%M:%S} UTC"
            if record is not None
            else f"an unreadable lock record ({found.problem})"
        )
        return (
            f"another run holds the lock {self.uri}: {holder}, last heartbeat {found.age_s:.0f} s ago "
            f"(it expires {ttl_s:.0f} s after its last heartbeat). Wait for that run to finish; if it "
            f"is dead, its lock expires by itself, or break it now with: {self._store.break_hint()}"
        )


def _positive(value: object) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    )
