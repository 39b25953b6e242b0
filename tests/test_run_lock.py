"""The retrain lock: one holder at a time, named to whoever else tries; renewed while its holder
lives, taken over once it dies; of concurrent takers exactly one wins. Every behaviour runs on a
local path and on S3 (the moto server), whose conditional PUT/DELETE the S3 lock relies on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from geor_core import uris
from geor_core.errors import UserFacingError
from geor_core.registry.run_lock import LockHeld, LockLost, RunLock
from geor_core.registry.run_lock_stores import lock_store

ROOT = Path(__file__).resolve().parents[1]

# A process that takes the lock, says so, and holds it until it is killed.
HOLDER = """
import sys, time
from geor_core.registry.run_lock import RunLock
RunLock(sys.argv[1], ttl_s=float(sys.argv[2]), heartbeat_s=float(sys.argv[3])).acquire()
print("held", flush=True)
time.sleep(300)
"""


@dataclass(frozen=True)
class LockPlace:
    """Where a test's lock lives, with TTL and heartbeat suited to that store's clock."""

    kind: str
    uri: str
    ttl_s: float
    heartbeat_s: float

    def lock(self, owner: str | None = None, ttl_s: float | None = None) -> RunLock:
        return RunLock(self.uri, ttl_s=ttl_s or self.ttl_s, heartbeat_s=self.heartbeat_s, owner=owner)

    def holder_owner(self) -> str | None:
        found = lock_store(self.uri).read()
        return found.record.owner if found is not None and found.record is not None else None

    def plant(self, owner: str, age_s: float = 0.0, ttl_s: float = 60.0, raw: bytes | None = None) -> None:
        """Write a lock record (or ``raw`` bytes) as another process would, ``age_s`` old (local
        only: S3 sets LastModified itself, so S3 tests wait instead)."""
        now = time.time()
        record = {"owner": owner, "token": uuid.uuid4().hex, "acquired_at": now - age_s}
        record |= {"heartbeat_at": now - age_s, "ttl_s": ttl_s, "beats": 0}
        uris.write_atomic(self.uri, raw if raw is not None else json.dumps(record).encode())
        if age_s:
            assert self.kind == "local", "S3 cannot back-date an object"
            os.utime(self.uri, (now - age_s, now - age_s))


@pytest.fixture(params=["local", "s3"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> LockPlace:
    if request.param == "local":
        return LockPlace("local", str(tmp_path / "locks" / "retrain.lock"), ttl_s=2.0, heartbeat_s=0.2)
    # S3 ages have 1 s resolution (Date minus LastModified): the TTL leaves room for it.
    s3_prefix = request.getfixturevalue("s3_prefix")
    return LockPlace("s3", f"{s3_prefix}/retrain.lock", ttl_s=3.0, heartbeat_s=0.3)


def test_acquire_then_release_leaves_no_lock(place: LockPlace) -> None:
    with place.lock(owner="alice@node-1 pid 7") as lock:
        assert lock.held
        assert place.holder_owner() == "alice@node-1 pid 7"
        lock.ensure_held()
    assert not lock.held
    assert lock_store(place.uri).read() is None
    with place.lock() as again:  # free again, and reusable
        assert again.held


def test_second_acquirer_is_refused_with_the_holders_name(place: LockPlace) -> None:
    with place.lock(owner="alice@node-1 pid 4242"):
        second = place.lock(owner="bob@node-2 pid 1")
        with pytest.raises(LockHeld) as refused:
            second.acquire()
        message = str(refused.value)
        assert isinstance(refused.value, UserFacingError)
        for part in ("alice@node-1 pid 4242", place.uri, "since", "last heartbeat", "expires"):
            assert part in message, f"{part!r} missing from: {message}"
        assert f"{'aws s3 rm' if place.kind == 's3' else 'rm'} {place.uri}" in message  # how to break it
        assert not second.held
        assert place.holder_owner() == "alice@node-1 pid 4242"  # the refusal touched nothing


def test_heartbeat_keeps_a_live_lock_past_its_ttl(place: LockPlace) -> None:
    with place.lock(owner="long-runner") as lock:
        time.sleep(1.75 * place.ttl_s)  # without renewals the lock would now be expired
        with pytest.raises(LockHeld, match="long-runner"):
            place.lock(owner="intruder").acquire()
        found = lock_store(place.uri).read()
        assert found.age_s < place.ttl_s
        lock.ensure_held()
    assert lock_store(place.uri).read() is None


def test_killed_holder_expires_after_its_ttl_and_is_taken_over(place: LockPlace) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, place.uri, str(place.ttl_s), str(place.heartbeat_s)],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env=os.environ.copy(),
    )
    try:
        assert holder.stdout.readline().strip() == b"held"
        with pytest.raises(LockHeld, match=f"pid {holder.pid}"):
            place.lock().acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        killed_at = time.monotonic()
        with pytest.raises(LockHeld, match=f"pid {holder.pid}"):  # dead, but not expired yet
            place.lock().acquire()
        taker = place.lock(owner="next-retrain")
        while not taker.held:
            assert time.monotonic() - killed_at < place.ttl_s + 3.0, "a dead holder's lock never expired"
            try:
                taker.acquire()
            except LockHeld:
                time.sleep(0.1)
        # Expired by the TTL, not earlier: the last heartbeat came up to heartbeat_s before the kill,
        # and S3 ages may read up to 1 s high.
        assert time.monotonic() - killed_at >= place.ttl_s - place.heartbeat_s - 1.1
        assert place.holder_owner() == "next-retrain"
        taker.release()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=10)


@pytest.mark.parametrize("content", ["record", "garbage"])
def test_expired_lock_file_is_taken_over_and_a_fresh_one_is_not(tmp_path: Path, content: str) -> None:
    place = LockPlace("local", str(tmp_path / "retrain.lock"), ttl_s=5.0, heartbeat_s=1.0)
    raw = b"\x00not a lock record" if content == "garbage" else None
    place.plant("crashed@node-9 pid 99", age_s=1.0, ttl_s=5.0, raw=raw)
    with pytest.raises(LockHeld, match="crashed@node-9 pid 99" if raw is None else "unreadable lock record"):
        place.lock().acquire()
    place.plant("crashed@node-9 pid 99", age_s=30.0, ttl_s=5.0, raw=raw)
    with place.lock(owner="successor"):
        assert place.holder_owner() == "successor"


def _race_for(place: LockPlace, takers: int) -> tuple[list[RunLock], list[str]]:
    """``takers`` threads acquire at once; returns the winners' locks and the losers' messages."""
    start = threading.Barrier(takers)
    winners: list[RunLock] = []
    refusals: list[str] = []

    def take(index: int) -> None:
        lock = place.lock(owner=f"taker-{index}", ttl_s=30.0)
        start.wait()
        try:
            lock.acquire()
            winners.append(lock)
        except LockHeld as exc:
            refusals.append(str(exc))

    threads = [threading.Thread(target=take, args=(index,)) for index in range(takers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return winners, refusals


def test_concurrent_takers_of_an_expired_lock_exactly_one_wins(place: LockPlace) -> None:
    for _ in range(3 if place.kind == "local" else 2):
        if place.kind == "local":
            place.plant("dead@node-0 pid 1", age_s=60.0, ttl_s=0.5)
        else:
            place.plant("dead@node-0 pid 1", ttl_s=0.5)
            time.sleep(1.5)  # LastModified has 1 s resolution: at least 1 s old > the 0.5 s TTL
        winners, refusals = _race_for(place, takers=6)
        assert len(winners) == 1, f"{len(winners)} takers won: {[lock.owner for lock in winners]}"
        assert len(refusals) == 5
        assert place.holder_owner() == winners[0].owner
        assert all(winners[0].owner in message for message in refusals), refusals
        winners[0].release()


def test_concurrent_first_acquirers_exactly_one_wins(place: LockPlace) -> None:
    winners, refusals = _race_for(place, takers=6)
    assert len(winners) == 1 and len(refusals) == 5
    assert all(winners[0].owner in message for message in refusals), refusals
    winners[0].release()


def test_a_taken_over_holder_notices_and_leaves_the_new_lock_alone(place: LockPlace) -> None:
    lock = place.lock(owner="stalled").__enter__()
    place.plant("successor")  # what a taker does once the stalled holder's TTL passes
    deadline = time.monotonic() + 5 * place.heartbeat_s + 2.0
    while lock.held and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(LockLost, match="lost the lock"):
        lock.ensure_held()
    lock.__exit__(None, None, None)
    assert place.holder_owner() == "successor"


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"ttl_s": 0}, "ttl_s: got 0"),
        ({"ttl_s": float("nan")}, "ttl_s: got nan"),
        ({"ttl_s": 10, "heartbeat_s": 10}, "heartbeat_s: got 10"),
        ({"ttl_s": 10, "heartbeat_s": -1}, "heartbeat_s: got -1"),
        ({"uri": "gs://bucket/retrain.lock"}, "gs://bucket/retrain.lock"),
        ({"uri": "s3://bucket-only"}, "names a bucket"),
    ],
)
def test_bad_settings_are_refused_by_name(tmp_path: Path, kwargs: dict, named: str) -> None:
    settings = {"uri": str(tmp_path / "retrain.lock"), **kwargs}
    with pytest.raises(ValueError, match=named.replace("(", r"\(")):
        RunLock(**settings)
