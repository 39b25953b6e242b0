"""Reward actors for GRPO: a pool of Ray actors that score whole batches of completions.

Each :class:`RewardActor` loads the gazetteer once (geor_core.geo.gazetteer caches it per process)
and scores with ``geor_core.scoring.rewards.score_completions``. :class:`RewardActorPool`, made inside
the process that needs rewards (a Ray Train worker), splits a batch into one contiguous chunk
per actor, submits every chunk at once, gathers the parts in order and concatenates them, so
the result equals ``score_completions`` on the whole batch element for element (scoring is
row-wise). A dead actor (killed, crashed, its worker gone) is replaced by a fresh one and its
chunk resubmitted, and so is a hung one: when a chunk has no answer ``timeout_s`` after it was
submitted (``grpo.reward_timeout_s``; a resubmission gets ``start_timeout_s`` on top, as its
fresh actor first loads the gazetteer), the hang is logged with the chunk's bounds, the actor
killed and the chunk resubmitted. At most ``max_retries`` resubmissions per chunk (deaths and
hangs together), then :class:`RewardPoolError` names the chunk; nothing is lost or reordered.
An error raised by the scoring itself (a bad config, say) is not a dead actor: it reaches the
caller unchanged and is not retried.

    pool = RewardActorPool(cfg.reward, cfg.grpo.reward_actors, cfg.grpo.reward_actor_cpus,
                           timeout_s=cfg.grpo.reward_timeout_s,
                           resources=cfg.cluster.worker_resources)
    scores = pool.score(completions, truth)  # a rewards.Truth; returns a dict of float64 arrays
    scores = await pool.score_async(...)  # the same, for TRL's async reward functions
    pool.stats()  # batches, completions, parse_failures, retries, timeouts, actors_replaced, ...
    pool.close()

Actors take fractional CPUs (``grpo.reward_actor_cpus``; on 2 cores a whole CPU each starves
everything else) plus the custom resources of ``cluster.worker_resources`` (``resources``: only
nodes that carry them), and are scheduled outside the caller's placement group: a Ray Train
worker's bundle holds only that worker's own resources. Conversational completions are turned into their
text in the caller (``geor_core.geo.parse.completion_text``, the parse rule's own reading; None where
there is no text), so only strings travel.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only; read at Ray import

import numpy as np  # noqa: E402
import ray  # noqa: E402
from ray.exceptions import GetTimeoutError, ObjectLostError, RayActorError, WorkerCrashedError  # noqa: E402

from geor_core.config import RewardConfig  # noqa: E402
from geor_core.geo.parse import completion_text  # noqa: E402
from geor_core.scoring.rewards import RewardSettings, Truth, needs_truth_names, score_completions  # noqa: E402

# What a dead or unreachable actor raises (ActorDiedError and ActorUnavailableError are
# RayActorErrors); anything else is the scoring's own error and goes to the caller.
DEAD_ACTOR_ERRORS = (RayActorError, WorkerCrashedError, ObjectLostError)
_WARM_UP_ANSWER = (
    "<think>Hokkaido.</think><answer>Country: Japan; State: Hokkaido; City: Biei; "
    "Coordinates: (43.452002, 142.615358)</answer>"
)


class RewardPoolError(RuntimeError):
    """A chunk could not be scored: its actors kept dying or hanging, or the actors never started."""


log = logging.getLogger(__name__)


@ray.remote
class RewardActor:
    """Scores batches with geor_core's rewards; the gazetteer and name caches are warm on creation."""

    def __init__(self, reward_cfg: RewardSettings) -> None:
        from geor_core.geo import gazetteer

        self.reward_cfg = reward_cfg
        gazetteer.lookup(np.zeros(1), np.zeros(1))  # loads the KD-tree once for this process
        score_completions([_WARM_UP_ANSWER], Truth([43.45], [142.62], ["JP"], ["Hokkaido"], ["Biei"]))

    def ready(self) -> bool:
        """True once __init__ has finished (the pool waits on it before the first batch)."""
        return True

    def score(self, completions: list[str | None], truth: Truth) -> dict[str, np.ndarray]:
        """``score_completions`` on one chunk with the actor's config."""
        return score_completions(completions, truth, self.reward_cfg)


@dataclass
class ScoringJob:
    """A submitted batch: its chunks' bounds and arguments, and the pending result of each."""

    n: int
    bounds: list[tuple[int, int]]  # [start, stop) of chunk i, scored by actor i
    chunk_args: list[tuple]  # what chunk i was submitted with (resubmitted on a retry)
    refs: list[Any]  # ObjectRef of chunk i's scores
    actors: list[Any]  # the actor handle chunk i was last submitted to
    attempts: list[int]
    submitted: list[float]  # time.monotonic() when chunk i's current attempt was submitted


class RewardActorPool:
    """A fixed number of RewardActors scoring batches in parallel; dead and hung actors are replaced."""

    def __init__(
        self,
        reward_cfg: RewardSettings | None,
        num_actors: int,
        cpus_per_actor: float,
        *,
        max_retries: int = 3,
        start_timeout_s: float = 120.0,
        timeout_s: float = 120.0,
        resources: dict[str, float] | None = None,
    ) -> None:
        if not isinstance(num_actors, int) or num_actors < 1:
            raise ValueError(f"num_actors (grpo.reward_actors) must be an integer >= 1, got {num_actors!r}")
        if not cpus_per_actor > 0:
            raise ValueError(f"cpus_per_actor (grpo.reward_actor_cpus) must be > 0, got {cpus_per_actor!r}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s (grpo.reward_timeout_s) must be > 0, got {timeout_s!r}")
        self.reward_cfg = reward_cfg if reward_cfg is not None else RewardConfig()
        self.num_actors = num_actors
        self.cpus_per_actor = float(cpus_per_actor)
        self.max_retries = max_retries
        self.start_timeout_s = start_timeout_s
        self.timeout_s = float(timeout_s)
        self.resources = dict(resources or {})
        self._actors: list[Any] = []
        self._closed = False
        self._counters = {
            "batches": 0,
            "completions": 0,
            "parse_failures": 0,
            "retries": 0,
            "timeouts": 0,
            "actors_replaced": 0,
            "wait_seconds": 0.0,
        }

    @property
    def actors(self) -> tuple[Any, ...]:
        """The current actor handles, actor i scoring chunk i (empty until the first batch or start())."""
        return tuple(self._actors)

    def start(self) -> None:
        """Create the actors and wait until each has loaded the gazetteer (the first batch does this)."""
        if self._closed:
            raise RewardPoolError("this RewardActorPool is closed")
        if self._actors:
            return
        actors = [self._new_actor() for _ in range(self.num_actors)]
        try:
            ray.get([actor.ready.remote() for actor in actors], timeout=self.start_timeout_s)
        except GetTimeoutError as exc:
            for actor in actors:
                ray.kill(actor)
            raise RewardPoolError(
                f"{self.num_actors} reward actors of {self.cpus_per_actor} CPU did not start within "
                f"{self.start_timeout_s:.0f} s; the cluster has {ray.available_resources().get('CPU', 0)} "
                f"CPU free{_cpu_holders()}: lower grpo.reward_actors or grpo.reward_actor_cpus"
                + (f" (each also needs {self.resources}: cluster.worker_resources)" if self.resources else "")
            ) from exc
        except DEAD_ACTOR_ERRORS as exc:
            for actor in actors:
                ray.kill(actor)
            raise RewardPoolError(f"a reward actor died while starting: {type(exc).__name__}: {exc}") from exc
        self._actors = actors

    def submit(self, completions: Sequence[object], truth: Truth) -> ScoringJob:
        """Validate the batch and send one chunk to each actor; returns at once (see gather)."""
        started = time.perf_counter()
        texts = self._checked_batch(completions, truth)
        self.start()
        n = len(texts)
        bounds = _chunk_bounds(n, self.num_actors)
        chunk_args = [(texts[a:b], truth[a:b]) for a, b in bounds]
        actors = self._actors[: len(bounds)]
        refs = [actor.score.remote(*args) for actor, args in zip(actors, chunk_args, strict=True)]
        submitted = [time.monotonic()] * len(bounds)
        self._counters["wait_seconds"] += time.perf_counter() - started
        return ScoringJob(n, bounds, chunk_args, refs, list(actors), [1] * len(bounds), submitted)

    def gather(self, job: ScoringJob) -> dict[str, np.ndarray]:
        """Wait for every chunk of ``job`` (retrying those whose actor died or hung) and concatenate them."""
        started = time.perf_counter()
        parts: dict[int, dict[str, np.ndarray]] = {}
        while len(parts) < len(job.bounds):
            waiting = {job.refs[i]: i for i in range(len(job.bounds)) if i not in parts}
            refs = list(waiting)
            ready, _ = ray.wait(refs, num_returns=1, timeout=self._wait_s(job, waiting.values()))
            if ready:  # and whatever else is ready by now, so that none of it is taken for hung
                ready += ray.wait(refs, num_returns=len(refs), timeout=0)[0]
            for ref in set(ready):
                try:
                    parts[waiting[ref]] = ray.get(ref)
                except DEAD_ACTOR_ERRORS as exc:
                    self._resubmit(job, waiting[ref], exc)
            self._resubmit_overdue(job, parts)
        return self._finish(job, [parts[i] for i in range(len(job.bounds))], started)

    async def gather_async(self, job: ScoringJob) -> dict[str, np.ndarray]:
        """``gather`` for an event loop: awaits the chunks instead of blocking the thread."""
        started = time.perf_counter()
        parts: dict[int, dict[str, np.ndarray]] = {}
        futures: dict[Any, asyncio.Future] = {}  # an ObjectRef's asyncio future, made once per ref
        while len(parts) < len(job.bounds):
            waiting = {}
            for i in range(len(job.bounds)):
                if i not in parts:
                    if job.refs[i] not in futures:
                        futures[job.refs[i]] = asyncio.wrap_future(job.refs[i].future())
                    waiting[futures[job.refs[i]]] = i
            done, _ = await asyncio.wait(
                waiting, timeout=self._wait_s(job, waiting.values()), return_when=asyncio.FIRST_COMPLETED
            )
            for future in done:
                try:
                    parts[waiting[future]] = future.result()
                except DEAD_ACTOR_ERRORS as exc:
                    self._resubmit(job, waiting[future], exc)
            self._resubmit_overdue(job, parts)
        return self._finish(job, [parts[i] for i in range(len(job.bounds))], started)

    def score(self, completions: Sequence[object], truth: Truth) -> dict[str, np.ndarray]:
        """Score a batch: equals ``score_completions`` on the whole batch with the pool's config."""
        return self.gather(self.submit(completions, truth))

    async def score_async(self, completions: Sequence[object], truth: Truth) -> dict[str, np.ndarray]:
        """``score`` for async reward functions (TRL runs them on its own event loop)."""
        return await self.gather_async(self.submit(completions, truth))

    def stats(self) -> dict[str, float]:
        """Counters since creation: batches, completions, parse_failures, retries (chunks resubmitted),
        timeouts (attempts given up on because their actor hung), actors_replaced, wait_seconds (time
        callers spent in submit and gather), and the pool's size."""
        return {**self._counters, "num_actors": self.num_actors, "cpus_per_actor": self.cpus_per_actor}

    def close(self) -> None:
        """Kill the actors; the pool cannot be used afterwards."""
        for actor in self._actors:
            ray.kill(actor)
        self._actors = []
        self._closed = True

    def _new_actor(self) -> Any:
        # "DEFAULT": never captured by the caller's placement group (a Train worker's bundle).
        options = {"num_cpus": self.cpus_per_actor, "scheduling_strategy": "DEFAULT"}
        if self.resources:  # cluster.worker_resources: only on the nodes that carry them
            options["resources"] = self.resources
        return RewardActor.options(**options).remote(self.reward_cfg)

    def _resubmit(self, job: ScoringJob, i: int, error: Exception) -> None:
        """Chunk i's actor died or hung: replace it (unless that happened already) and send the chunk
        again. A hung actor is killed at once, so that it holds no CPU and no later batch waits on it."""
        start, stop = job.bounds[i]
        chunk = f"reward chunk {i + 1} of {len(job.bounds)} (completions {start}..{stop - 1} of a batch of {job.n})"
        if self._closed:
            raise RewardPoolError("this RewardActorPool was closed while a batch was being scored") from error
        reason = f"{type(error).__name__}: {error}"
        if isinstance(error, TimeoutError):  # the actor is alive but hung
            reason = f"{error} (grpo.reward_timeout_s)"
            log.warning("%s: %s on attempt %d; killing its reward actor", chunk, reason, job.attempts[i])
            ray.kill(job.actors[i])
            self._counters["timeouts"] += 1
        if job.attempts[i] > self.max_retries:
            raise RewardPoolError(
                f"{chunk} failed on {job.attempts[i]} actors in a row; last error: {reason}"
            ) from error
        if self._actors[i] is job.actors[i]:  # another caller may have replaced it already
            ray.kill(job.actors[i])
            self._actors[i] = self._new_actor()
            self._counters["actors_replaced"] += 1
        job.actors[i] = self._actors[i]
        job.refs[i] = job.actors[i].score.remote(*job.chunk_args[i])
        job.submitted[i] = time.monotonic()
        job.attempts[i] += 1
        self._counters["retries"] += 1

    def _resubmit_overdue(self, job: ScoringJob, parts: dict[int, dict[str, np.ndarray]]) -> None:
        """Resubmit every unfinished chunk whose actor has not answered in time (a hung actor)."""
        for i in range(len(job.bounds)):
            if i not in parts and self._time_left(job, i) <= 0:
                limit = self._limit_s(job.attempts[i])
                self._resubmit(job, i, TimeoutError(f"no answer within {limit:.0f} s"))

    def _limit_s(self, attempt: int) -> float:
        """How long attempt ``attempt`` (1-based) of a chunk may take; a resubmission goes to an actor
        that may still be starting (loading the gazetteer), which gets ``start_timeout_s`` on top."""
        return self.timeout_s + (self.start_timeout_s if attempt > 1 else 0.0)

    def _time_left(self, job: ScoringJob, i: int) -> float:
        return job.submitted[i] + self._limit_s(job.attempts[i]) - time.monotonic()

    def _wait_s(self, job: ScoringJob, chunks: Iterable[int]) -> float:
        """How long to wait for any of ``chunks``: until the first of them is overdue."""
        return max(0.0, min(self._time_left(job, i) for i in chunks))

    def _finish(
        self, job: ScoringJob, parts: list[dict[str, np.ndarray]], started: float
    ) -> dict[str, np.ndarray]:
        if parts:
            scores = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
        else:  # an empty batch: geor_core's own empty result
            scores = score_completions([], Truth([], [], [], [], []), self.reward_cfg)
        self._counters["batches"] += 1
        self._counters["completions"] += job.n
        self._counters["parse_failures"] += int(scores["parse_failed"].sum())
        self._counters["wait_seconds"] += time.perf_counter() - started
        return scores

    def _checked_batch(self, completions: Sequence[object], truth: Truth) -> list[str | None]:
        """The completions as the actors take them, or a ValueError naming what does not match."""
        if self._closed:
            raise RewardPoolError("this RewardActorPool is closed")
        if isinstance(completions, str | bytes) or not isinstance(completions, Sequence | np.ndarray):
            raise ValueError(f"completions must be a list of completions, got {type(completions).__name__}")
        truth.check(len(completions), names=needs_truth_names(self.reward_cfg))
        return [_text_or_none(c) for c in completions]


def _text_or_none(completion: object) -> str | None:
    """What the parser would read; None (scored as not_text) where there is no text to read."""
    if type(completion) is str:
        return completion
    try:
        text = completion_text(completion)
    except Exception:  # the parser counts such a completion as unparseable too (internal_error)
        return None
    return None if text is None else str(text)


def _chunk_bounds(n: int, num_chunks: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) ranges of near-equal size, at most ``num_chunks``, none empty."""
    num_chunks = min(num_chunks, n)
    size, extra = divmod(n, num_chunks) if num_chunks else (0, 0)
    bounds, start = [], 0
    for i in range(num_chunks):
        stop = start + size + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def _cpu_holders() -> str:
    """`` (held by: 6 x RewardActor, 1 x Geolocator)``: the live actors, to say who took the CPUs;
    "" when Ray's state API cannot answer (no dashboard)."""
    from ray.util.state import list_actors
    from ray.util.state.exception import RayStateApiException

    try:
        alive = list_actors(filters=[("state", "=", "ALIVE")], limit=1000, raise_on_missing_output=False)
    except (RayStateApiException, ConnectionError, RuntimeError, ValueError):
        return ""
    counts = Counter(actor.class_name for actor in alive)
    return f" (held by: {', '.join(f'{n} x {name}' for name, n in counts.most_common())})" if counts else ""
