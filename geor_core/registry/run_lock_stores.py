"""Where a run lock lives: one small JSON record at a local path or an ``s3://`` object, with the
atomic operations :mod:`geor_core.registry.run_lock` builds its lease from.

Each store offers the same five operations; ``version`` names exactly one incarnation of the lock
(the S3 ETag, or the local file's device and inode), so nobody renews, takes over or deletes a
lock that changed since they looked at it.

- S3: create is a PUT with ``If-None-Match: *``; renew and take-over are PUTs with ``If-Match`` on
  the version last seen (of two takers of one stale lock, exactly one matches); delete is a
  DELETE with ``If-Match``. Age is the response's ``Date`` minus ``LastModified``: the server's
  clock on both sides (1 s resolution), so the holders' clocks need not agree.
- Local: create writes the record to a temp file and hard-links it to the lock name (``link``
  fails when the name exists, and a reader never sees half a record); the holder keeps that file
  open and renews by touching its mtime. Renew, take-over and delete run under an ``flock`` on
  ``<lock>.guard`` (the kernel drops it when a process dies, so it never goes stale): each
  re-checks, under the guard, that the lock is still the version it expects. Age is now minus
  mtime.

A lock whose content is not a lock record (garbled, not JSON, nested too deeply, larger than
``MAX_RECORD_BYTES``, a time that is no date, a ``ttl_s`` that is not a positive finite number)
is read as a corrupt record: ``FoundLock.record`` is None and ``FoundLock.problem`` says why. Its
age still comes from the store's timestamp, which a live holder's heartbeat renews whatever the
content, so :mod:`geor_core.registry.run_lock` can treat it as held until that age passes a TTL. A local
lock path that is a directory is refused with a message (it is never deleted).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Protocol

from fsspec.asyn import sync

from geor_core import uris
from geor_core.errors import UserFacingError

MAX_RECORD_BYTES = 64 * 1024  # a record is ~200 bytes; anything far larger is not one
MAX_OWNER_CHARS = 200  # of a holder's name, as shown to others


@dataclass(frozen=True)
class LockRecord:
    """What a lock says about its holder (``acquired_at`` and ``heartbeat_at`` on its own clock)."""

    owner: str
    token: str  # unique per acquisition: tells "still mine" from "someone else's"
    acquired_at: float
    heartbeat_at: float
    ttl_s: float
    beats: int = 0  # changes the content, hence the S3 ETag, on every renewal

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> LockRecord:
        """The record; :class:`CorruptRecord`, saying why, when the bytes are not one (garbled,
        foreign, half-written, or with values no live holder writes)."""
        if len(data) > MAX_RECORD_BYTES:
            raise CorruptRecord(f"{len(data)} bytes, more than a lock record's {MAX_RECORD_BYTES}")
        try:
            fields = json.loads(data)
        except RecursionError:
            raise CorruptRecord("JSON nested too deeply") from None
        except ValueError:  # UnicodeDecodeError too
            raise CorruptRecord("not JSON") from None
        if not isinstance(fields, dict):
            raise CorruptRecord(f"a JSON {type(fields).__name__}, not an object")
        try:
            record = cls(
                owner=str(fields["owner"])[:MAX_OWNER_CHARS],
                token=str(fields["token"]),
                acquired_at=_time(fields, "acquired_at"),
                heartbeat_at=_time(fields, "heartbeat_at"),
                ttl_s=float(fields["ttl_s"]),
                beats=int(fields.get("beats", 0)),
            )
        except KeyError as exc:
            raise CorruptRecord(f"no {exc.args[0]!r}") from None
        except (ValueError, TypeError, OverflowError) as exc:
            raise CorruptRecord(str(exc)) from None
        if not (math.isfinite(record.ttl_s) and record.ttl_s > 0):
            raise CorruptRecord(f"ttl_s {fields['ttl_s']!r} is not a positive number of seconds")
        return record


class CorruptRecord(ValueError):
    """The bytes where a lock lives are not a lock record; the message says why."""


def _time(fields: dict[str, Any], name: str) -> float:
    """A record's timestamp, which must name a date (it is shown as one)."""
    value = float(fields[name])
    try:
        datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"{name} {fields[name]!r} is not a time") from None
    return value


@dataclass(frozen=True)
class FoundLock:
    """A lock as read from its store."""

    record: LockRecord | None  # None: the object there is not a readable lock record
    version: str
    age_s: float  # seconds since its last renewal, on the store's clock
    problem: str = ""  # why ``record`` is None

    @classmethod
    def of(cls, data: bytes, version: str, age_s: float) -> FoundLock:
        """The lock read as ``data``: its record, or None and the problem with it."""
        try:
            return cls(LockRecord.from_bytes(data), version, age_s)
        except CorruptRecord as exc:
            return cls(None, version, age_s, str(exc))


class LockStore(Protocol):
    """The atomic operations a run lock needs; ``None``/``False`` means "not as expected"."""

    def create(self, body: bytes) -> str | None: ...  # the new version, None if a lock exists
    def read(self) -> FoundLock | None: ...  # None when there is no lock
    def take_over(self, stale: FoundLock, ttl_s: float, body: bytes) -> str | None: ...
    def renew(self, version: str, body: bytes) -> str | None: ...  # None: no longer that version
    def delete(self, version: str) -> bool: ...
    def break_hint(self) -> str: ...  # the shell command that breaks the lock by hand


def lock_store(uri: str) -> LockStore:
    """The store for a lock URI: an ``s3://`` object or a local file."""
    if uris.is_s3(uri):
        return S3LockStore(uri)
    if "://" in uri and not uri.startswith("file://"):
        raise ValueError(f"lock URI {uri!r}: a run lock lives on a local path or s3://")
    return LocalLockStore(Path(uris.filesystem(uri)[1]))


def _inode_version(stat: os.stat_result) -> str:
    return f"{stat.st_dev}:{stat.st_ino}"


class LocalLockStore:
    """A lock file on a local (or shared POSIX) filesystem."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None  # the holder's open descriptor of its own lock file

    def break_hint(self) -> str:
        return f"rm {self.path}"

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        fd = os.open(f"{self.path}.guard", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    def _stat(self) -> os.stat_result | None:
        try:
            return os.stat(self.path)
        except FileNotFoundError:
            return None

    def create(self, body: bytes) -> str | None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, staging = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".new", dir=self.path.parent)
        except OSError as exc:
            raise UserFacingError(f"cannot create the lock {self.path}: {exc}") from exc
        try:
            os.fchmod(fd, 0o644)  # others must read the record to name the holder
            os.write(fd, body)
            os.fsync(fd)
            os.link(staging, self.path)
        except FileExistsError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        finally:
            os.unlink(staging)
        self._close()
        self._fd = fd
        return _inode_version(os.fstat(fd))

    def read(self) -> FoundLock | None:
        try:
            with open(self.path, "rb") as handle:
                stat = os.fstat(handle.fileno())
                data = handle.read(MAX_RECORD_BYTES + 1)
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            raise UserFacingError(
                f"the lock path {self.path} is a directory, not a lock file; point the lock elsewhere "
                "(retrain.lock) or remove that directory if nothing in it is needed"
            ) from None
        age_s = max(0.0, time.time() - stat.st_mtime)
        return FoundLock.of(data, _inode_version(stat), age_s)

    def take_over(self, stale: FoundLock, ttl_s: float, body: bytes) -> str | None:
        with self._guard():
            stat = self._stat()
            if stat is not None:
                if _inode_version(stat) != stale.version or time.time() - stat.st_mtime <= ttl_s:
                    return None  # renewed, or already taken by another taker
                os.unlink(self.path)
            return self.create(body)

    def renew(self, version: str, body: bytes) -> str | None:
        with self._guard():
            stat = self._stat()
            if self._fd is None or stat is None or _inode_version(stat) != version:
                return None
            os.utime(self._fd)  # the holder's own inode, whatever name it has now
            return version

    def delete(self, version: str) -> bool:
        try:
            with self._guard():
                stat = self._stat()
                if stat is None or _inode_version(stat) != version:
                    return False
                os.unlink(self.path)
                return True
        finally:
            self._close()

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _s3_error_code(exc: BaseException) -> str:
    """The S3 error code behind an s3fs exception ('' when it came from elsewhere)."""
    response = getattr(exc.__cause__, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


# Another conditional write to the same key was in flight (AWS answers 409 instead of 412).
_CONFLICT = "ConditionalRequestConflict"


class S3LockStore:
    """A lock object on S3 (or any store that honours conditional PUT and DELETE)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.fs, path = uris.filesystem(uri)
        self.bucket, _, self.key = path.partition("/")
        if not self.key:
            raise ValueError(f"lock URI {uri!r} names a bucket, not an object inside one")

    def break_hint(self) -> str:
        return f"aws s3 rm {self.uri}"

    def _put(self, body: bytes, **condition: str) -> str:
        response = self.fs.call_s3("put_object", Bucket=self.bucket, Key=self.key, Body=body, **condition)
        return response["ETag"]

    def create(self, body: bytes) -> str | None:
        try:
            return self._put(body, IfNoneMatch="*")
        except FileExistsError:
            return None
        except OSError as exc:
            if _s3_error_code(exc) == _CONFLICT:
                return None
            raise

    async def _get(self) -> tuple[dict[str, Any], bytes]:
        response = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self.key)
        try:
            return response, await response["Body"].read(MAX_RECORD_BYTES + 1)
        finally:
            response["Body"].close()

    def read(self) -> FoundLock | None:
        try:
            response, data = sync(self.fs.loop, self._get)
        except FileNotFoundError:
            return None
        date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        now = parsedate_to_datetime(date) if date else datetime.now(UTC)
        age_s = max(0.0, (now - response["LastModified"]).total_seconds())
        return FoundLock.of(data, response["ETag"], age_s)

    def _put_if_match(self, version: str, body: bytes) -> str | None:
        try:
            return self._put(body, IfMatch=version)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if _s3_error_code(exc) == "PreconditionFailed":
                return None
            raise

    def take_over(self, stale: FoundLock, ttl_s: float, body: bytes) -> str | None:
        try:
            return self._put_if_match(stale.version, body)
        except OSError as exc:
            if _s3_error_code(exc) == _CONFLICT:
                return None  # another taker's write was in flight; it wins or both retry
            raise

    def renew(self, version: str, body: bytes) -> str | None:
        return self._put_if_match(version, body)  # a 409 propagates: transient, renewed next beat

    def delete(self, version: str) -> bool:
        try:
            self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key, IfMatch=version)
        except FileNotFoundError:
            return False
        except OSError as exc:
            if _s3_error_code(exc) == "PreconditionFailed":
                return False
            raise
        return True
