"""The reward actor pool (tasks/reward_actors.py): geor_core's exact numbers through Ray, garbage
included, with dead and hung actors replaced and their chunks retried so that no batch is lost."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np
import pytest
import ray

from geor_core.config import RewardConfig
from geor_core.geo import gazetteer
from geor_core.geo.countries import country_name
from geor_core.scoring.rewards import Truth, reward_keys, score_completions
from tasks.reward_actors import RewardActorPool, RewardPoolError

# 6 shared actors (0.6 CPU) + a test's own 2 leave the 2-CPU cluster room for what other tests
# are still releasing (at 0.25 each, 8 actors took the whole cluster, and a leftover made a test's
# pool wait out its start timeout)
ACTOR_CPUS = 0.1
CONFIGS = {
    "product_text": RewardConfig(),  # the paper's combination; region reported from the text
    "product_no_region": RewardConfig(w_country=0.0, w_state=0.0, w_city=0.0),  # no truth names needed
    "weighted_sum_point": RewardConfig(mode="weighted_sum", w_chain=0.1, region_source="point"),
    "weighted_sum_text_exp": RewardConfig(
        mode="weighted_sum", w_chain=0.1, region_source="text", distance_shape="exp", tau_km=300.0
    ),
}


def mixed_batch(n: int, seed: int) -> tuple[list[object], Truth]:
    """N completions against gazetteer-labelled truth rows: valid answers between every kind of garbage."""
    rng = np.random.default_rng(seed)
    lat, lon = rng.uniform(-50.0, 65.0, n), rng.uniform(-170.0, 170.0, n)
    place = gazetteer.lookup(lat, lon)
    truth = Truth(lat, lon, list(place["country_code"]), list(place["admin1"]), list(place["city"]))
    completions: list[object] = []
    for i in range(n):
        country, state, city = country_name(place["country_code"][i]), place["admin1"][i], place["city"][i]
        p_lat, p_lon = lat[i] + rng.normal(0, 2), lon[i] + rng.normal(0, 2)
        answer = f"Country: {country}; State: {state}; City: {city}; Coordinates: ({p_lat:.5f}, {p_lon:.5f})"
        completions.append(
            [
                f"<think>It looks like {country}.</think><answer>{answer}</answer>",
                [{"role": "assistant", "content": f"<answer>{answer}</answer>"}],
                f"<answer>Country: {country} State: {state} City: Nowhere Coordinates: "
                f"({abs(p_lat):.2f} {'N' if p_lat >= 0 else 'S'}, {abs(p_lon):.2f} {'E' if p_lon >= 0 else 'W'})"
                "</answer>",  # the paper's space-separated form with N/S/E/W suffixes
                f"<answer>Country: {country}; Coordinates: ({p_lat:.3f}, {p_lon:.3f}) or (1.5, 2.5)</answer>",
                None,
                "",
                "   \n",
                "x" * 1024,
                "(" * 400 + "1, 2" + "<answer>" * 50 + "Country: " * 40,  # 1 KB of junk: no complete pair
                f"<answer>Country: {country}; Coordinates: (123.4, {p_lon:.2f})</answer>",  # out of range
                f"<think>{country}</think><answer>Country: {country}; State: {state}; Ci",  # cut off
                42,
                b"<answer>(1, 2)</answer>",
                [{"role": "user", "content": f"<answer>{answer}</answer>"}],  # no assistant message
                [{"role": "assistant", "content": [{"type": "text", "text": f"<answer>{answer}</answer>"}]}],
                {"role": "assistant", "content": answer},
                [{"role": "assistant", "content": None}],
            ][i % 17]
        )
    return completions, truth


def assert_same_scores(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert list(got) == list(expected)
    for key, values in expected.items():
        assert got[key].dtype == values.dtype, key
        np.testing.assert_array_equal(got[key], values, err_msg=key)  # NaN equals NaN; nothing else is lax


def wait_until_dead(actor: object) -> None:
    """ray.kill returns before the actor is gone: wait until a call on it fails."""
    for _ in range(300):
        try:
            ray.get(actor.ready.remote(), timeout=30)
        except ray.exceptions.RayActorError:
            return
    raise AssertionError(f"{actor} still answers after ray.kill")


@pytest.fixture(scope="module")
def shared_pools(ray_cluster) -> Iterator[dict[str, RewardActorPool]]:
    """One pool per config in CONFIGS for the whole module (actors take about a second to start)."""
    two_actors = {"product_text", "weighted_sum_point"}  # chunking; one actor elsewhere starts faster
    pools = {
        name: RewardActorPool(cfg, 2 if name in two_actors else 1, ACTOR_CPUS)
        for name, cfg in CONFIGS.items()
    }
    yield pools
    for pool in pools.values():
        pool.close()


@pytest.fixture
def make_pool(ray_cluster) -> Iterator:
    """Build RewardActorPools that are closed when the test ends."""
    pools: list[RewardActorPool] = []

    def make(cfg: object, num_actors: int, **kwargs: object) -> RewardActorPool:
        pools.append(RewardActorPool(cfg, num_actors, ACTOR_CPUS, **kwargs))
        return pools[-1]

    yield make
    for pool in pools:
        pool.close()


def counted(pool: RewardActorPool, work: object) -> tuple[object, dict[str, float]]:
    """Run ``work()`` and return its result with how much each of the pool's counters grew."""
    before = pool.stats()
    result = work()
    return result, {key: value - before[key] for key, value in pool.stats().items()}


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
def test_pool_scores_exactly_as_geor_core_garbage_included(shared_pools, config_name):
    cfg = CONFIGS[config_name]
    completions, truth = mixed_batch(85, seed=1)  # 5 of each kind; 43 + 42 over 2 actors
    if config_name == "product_no_region":
        truth = Truth(truth.lat, truth.lon)
    expected = score_completions(completions, truth, cfg)
    assert 0 < expected["parse_failed"].sum() < len(completions)  # the batch really mixes both
    if cfg.w_country:
        assert expected["region"].max() > 0
    pool = shared_pools[config_name]

    def score_twice() -> list[dict[str, np.ndarray]]:
        return [pool.score(completions, truth), asyncio.run(pool.score_async(completions, truth))]

    results, grew = counted(pool, score_twice)
    for got in results:
        assert_same_scores(got, expected)
    assert grew["batches"] == 2 and grew["completions"] == 2 * len(completions)
    assert grew["parse_failures"] == 2 * int(expected["parse_failed"].sum())
    assert grew["retries"] == 0 and grew["actors_replaced"] == 0 and grew["wait_seconds"] > 0


def test_batches_smaller_than_the_pool_and_empty_batches(shared_pools):
    cfg = CONFIGS["product_text"]
    pool = shared_pools["product_text"]
    completions, truth = mixed_batch(1, seed=2)
    one, grew = counted(pool, lambda: pool.score(completions, truth))
    assert_same_scores(one, score_completions(completions, truth, cfg))
    empty = truth[:0]
    got = pool.score([], empty)
    assert_same_scores(got, score_completions([], empty, cfg))
    assert list(got) == list(reward_keys())
    assert grew["batches"] == 1 and grew["completions"] == 1


def test_an_actor_killed_between_batches_is_replaced_and_the_batch_retried(shared_pools):
    cfg = CONFIGS["weighted_sum_point"]
    pool = shared_pools["weighted_sum_point"]
    completions, truth = mixed_batch(40, seed=3)
    expected = score_completions(completions, truth, cfg)
    assert_same_scores(pool.score(completions, truth), expected)
    dead, alive = pool.actors
    ray.kill(dead)
    wait_until_dead(dead)
    got, grew = counted(pool, lambda: pool.score(completions, truth))
    assert_same_scores(got, expected)
    assert pool.actors[0] is not dead and pool.actors[1] is alive
    assert (grew["actors_replaced"], grew["retries"], grew["batches"]) == (1, 1, 1)


def test_an_actor_killed_while_scoring_loses_nothing(shared_pools):
    cfg = CONFIGS["weighted_sum_text_exp"]
    pool = shared_pools["weighted_sum_text_exp"]
    small, small_truth = mixed_batch(85, seed=4)
    repeat = 400  # 34,000 completions keep the actor busy far longer than a kill takes
    completions = small * repeat
    truth = Truth(*(np.tile(getattr(small_truth, field.name), repeat) for field in fields(Truth)))
    expected = score_completions(completions, truth, cfg)
    pool.start()

    def kill_after_submission() -> dict[str, np.ndarray]:
        job = pool.submit(completions, truth)
        ray.kill(pool.actors[0])  # the whole batch was just submitted to it
        return asyncio.run(pool.gather_async(job))

    got, grew = counted(pool, kill_after_submission)
    assert_same_scores(got, expected)
    assert grew["actors_replaced"] == 1 and grew["retries"] == 1
    assert grew["parse_failures"] == int(expected["parse_failed"].sum())


class ConfigThatCrashesItsScorer:
    """A reward config whose ``mode`` kills the process reading it, unless that is the test process."""

    def __init__(self) -> None:
        fields = asdict(RewardConfig(w_country=0.0, w_state=0.0, w_city=0.0))
        fields.pop("mode")
        self.__dict__.update(fields, test_pid=os.getpid())

    @property
    def mode(self) -> str:
        if os.getpid() != self.test_pid:
            os._exit(1)  # a worker crash, as a segfault or the OOM killer would cause
        return "product"


def test_a_chunk_whose_actors_keep_dying_fails_with_its_name(make_pool):
    completions, truth = mixed_batch(6, seed=5)
    pool = make_pool(ConfigThatCrashesItsScorer(), 1, max_retries=1)
    with pytest.raises(
        RewardPoolError, match=r"reward chunk 1 of 1 \(completions 0\.\.5 of a batch of 6\) failed on 2"
    ):
        pool.score(completions, Truth(truth.lat, truth.lon))
    assert pool.stats()["retries"] == 1 and pool.stats()["actors_replaced"] == 1


class ConfigThatHangsItsScorer:
    """A reward config whose ``mode`` hangs the actor reading it: only the first one to read it when
    ``marker`` is given (an actor on a cluster node that stops answering), every one otherwise."""

    def __init__(self, marker: Path | None = None) -> None:
        fields = asdict(RewardConfig(w_country=0.0, w_state=0.0, w_city=0.0))
        fields.pop("mode")
        self.__dict__.update(fields, test_pid=os.getpid(), marker=marker)

    @property
    def mode(self) -> str:
        if os.getpid() != self.test_pid and (self.marker is None or first_to_make(self.marker)):
            while True:
                time.sleep(60)
        return "product"


def first_to_make(path: Path) -> bool:
    """Whether this call created ``path`` (atomically: one process of many wins)."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


@pytest.mark.parametrize("gather", ["sync", "async"])
def test_a_hung_actor_is_killed_and_its_chunk_resubmitted(make_pool, tmp_path, caplog, gather):
    completions, truth = mixed_batch(40, seed=7)  # 20 + 20 over 2 actors; one of them hangs
    coordinates = Truth(truth.lat, truth.lon)
    expected = score_completions(
        completions, coordinates, RewardConfig(w_country=0.0, w_state=0.0, w_city=0.0)
    )
    timeout_s = 2.0
    pool = make_pool(
        ConfigThatHangsItsScorer(tmp_path / "hung"), 2, timeout_s=timeout_s, start_timeout_s=60.0
    )
    pool.start()
    before = pool.actors
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="tasks.reward_actors"):
        if gather == "sync":
            got = pool.score(completions, coordinates)
        else:
            got = asyncio.run(pool.score_async(completions, coordinates))
    elapsed = time.monotonic() - started
    assert_same_scores(got, expected)  # every row, in order
    assert timeout_s <= elapsed < timeout_s + 30, elapsed  # waited for the timeout, then a fresh actor
    stats = pool.stats()
    assert (stats["timeouts"], stats["retries"], stats["actors_replaced"]) == (1, 1, 1)
    (hung,) = [actor for actor in before if actor not in pool.actors]
    wait_until_dead(hung)  # killed, not left sleeping on a CPU
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "tasks.reward_actors"]
    assert re.fullmatch(
        r"reward chunk [12] of 2 \(completions (0\.\.19|20\.\.39) of a batch of 40\): no answer within 2 s "
        r"\(grpo\.reward_timeout_s\) on attempt 1; killing its reward actor",
        warning,
    ), warning


def test_a_chunk_whose_actors_keep_hanging_fails_with_its_name(make_pool):
    completions, truth = mixed_batch(6, seed=8)
    pool = make_pool(ConfigThatHangsItsScorer(), 1, max_retries=0, timeout_s=1.0)
    pool.start()
    (actor,) = pool.actors
    with pytest.raises(
        RewardPoolError,
        match=r"reward chunk 1 of 1 \(completions 0\.\.5 of a batch of 6\) failed on 1 actors in a row; "
        r"last error: no answer within 1 s \(grpo\.reward_timeout_s\)",
    ):
        pool.score(completions, Truth(truth.lat, truth.lon))
    assert pool.stats()["timeouts"] == 1 and pool.stats()["retries"] == 0
    wait_until_dead(actor)


def test_a_scoring_error_reaches_the_caller_unretried_and_close_kills_the_actors(make_pool):
    pool = make_pool(RewardConfig(mode="sum", w_country=0.0, w_state=0.0, w_city=0.0), 1)
    with pytest.raises(ValueError, match="reward.mode must be 'product' or 'weighted_sum', got 'sum'"):
        pool.score(["(1, 2)"], Truth([1.0], [2.0]))
    assert pool.stats()["retries"] == 0 and pool.stats()["actors_replaced"] == 0
    (actor,) = pool.actors
    pool.close()
    wait_until_dead(actor)
    with pytest.raises(RewardPoolError, match="closed"):
        pool.score(["(1, 2)"], Truth([1.0], [2.0]))


def test_actors_that_cannot_start_fail_naming_who_holds_the_cluster(make_pool):
    holder = make_pool(RewardConfig(), 1)
    holder.start()
    stuck = make_pool(RewardConfig(), 2, start_timeout_s=2.0)
    stuck.resources = {"a-resource-no-node-has": 1.0}  # never schedulable: waits out the timeout
    with pytest.raises(RewardPoolError) as raised:
        stuck.start()
    message = str(raised.value)
    assert re.search(
        r"2 reward actors of 0\.1 CPU did not start within 2 s; the cluster has [\d.]+ CPU free", message
    )
    assert re.search(r"\(held by: (.+, )?\d+ x RewardActor", message), message
    assert "cluster.worker_resources" in message


def test_bad_batches_are_named_before_any_actor_starts():
    pool = RewardActorPool(RewardConfig(), num_actors=2, cpus_per_actor=0.25)
    completions, truth = mixed_batch(4, seed=6)
    with pytest.raises(ValueError, match="got 4 completions but 4 truth_lat and 3 truth_lon values"):
        pool.score(completions, replace(truth, lon=truth.lon[:3]))
    with pytest.raises(ValueError, match="got 4 completions but 2 truth_state values"):
        pool.score(completions, replace(truth, state=truth.state[:2]))
    with pytest.raises(ValueError, match="needs truth_city, one value per completion \\(4\\); got None"):
        pool.score(completions, replace(truth, city=None))
    with pytest.raises(ValueError, match=r"truth row 2 is not a valid coordinate: \(91\.0"):
        pool.score(completions, replace(truth, lat=[0.0, 0.0, 91.0, 0.0]))
    with pytest.raises(ValueError, match="completions must be a list"):
        pool.score("<answer>(1, 2)</answer>", Truth([1.0], [2.0], ["JP"], ["Tokyo"], ["Tokyo"]))
    assert pool.actors == ()
    with pytest.raises(ValueError, match="num_actors"):
        RewardActorPool(RewardConfig(), num_actors=0, cpus_per_actor=0.25)
    with pytest.raises(ValueError, match="cpus_per_actor"):
        RewardActorPool(RewardConfig(), num_actors=1, cpus_per_actor=0.0)
