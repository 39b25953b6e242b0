"""A training stage's time budget: the first step that ends at or past it stops training, on every rank."""

from __future__ import annotations

import multiprocessing
import socket
from types import SimpleNamespace

from geor_core.training.time_budget import TimeBudgetCallback


def steps_until_stop(callback: TimeBudgetCallback, clock: list[float], step_seconds: float) -> int:
    """Run steps of ``step_seconds`` each until the callback stops training; how many ran."""
    state, control = SimpleNamespace(global_step=0), SimpleNamespace(should_training_stop=False)
    callback.on_train_begin(None, state, control)
    while not control.should_training_stop and state.global_step < 100:
        clock[0] += step_seconds
        state.global_step += 1
        callback.on_step_end(None, state, control)
    return state.global_step


def test_the_step_that_spends_the_budget_is_the_last():
    clock = [1000.0]
    callback = TimeBudgetCallback(10.0, clock=lambda: clock[0])
    assert steps_until_stop(callback, clock, 3.0) == 4  # 3, 6, 9 s go on; 12 s >= 10 s stops
    assert callback.stopped_at_step == 4
    exact = TimeBudgetCallback(9.0, clock=lambda: clock[0])
    assert steps_until_stop(exact, clock, 3.0) == 3


def test_no_budget_never_stops():
    clock = [0.0]
    callback = TimeBudgetCallback(0.0, clock=lambda: clock[0])
    assert steps_until_stop(callback, clock, 1000.0) == 100 and callback.stopped_at_step is None


def _rank(rank: int, port: int, results: multiprocessing.Queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    clock = [0.0]
    callback = TimeBudgetCallback(5.0, clock=lambda: clock[0])
    # rank 0's steps take 2 s, rank 1's 1 s: rank 0 spends the budget at its 3rd step, and rank 1
    # (at 3 s of its own) must stop after that same step, not go on to a collective alone
    results.put((rank, steps_until_stop(callback, clock, 2.0 if rank == 0 else 1.0)))
    dist.destroy_process_group()


def test_every_rank_stops_after_the_same_step():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    ranks = [context.Process(target=_rank, args=(rank, port, results)) for rank in range(2)]
    for process in ranks:
        process.start()
    stopped = dict(results.get(timeout=120) for _ in ranks)
    for process in ranks:
        process.join(timeout=30)
    assert stopped == {0: 3, 1: 3}
