"""A training stage's time budget: the first step that ends at or past it stops training, on every rank;
and a learning-rate schedule laid over the budget's seconds, in a real Hugging Face Trainer."""

from __future__ import annotations

import multiprocessing
import socket
from types import SimpleNamespace

import pytest

from geor_core.training.time_budget import TimeBudgetCallback, schedule_factor


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
    steps = steps_until_stop(callback, clock, 2.0 if rank == 0 else 1.0)
    results.put((rank, (steps, callback.progress)))
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
    # both stop after step 3, and agree on the budget's share spent (rank 0's 6 s of 5): the share a
    # schedule over the clock reads, so their learning rates stay equal
    assert stopped == {0: (3, 1.2), 1: (3, 1.2)}


@pytest.mark.parametrize(
    ("kind", "progress", "expected"),
    [
        ("cosine", 0.1, 0.5),  # warming up: half of the 20% warm-up
        ("cosine", 0.6, 0.5),  # half-way through the decay
        ("cosine", 1.0, 0.0),
        ("linear", 0.6, 0.5),
        ("constant_with_warmup", 0.9, 1.0),
        ("constant", 0.0, 1.0),  # Hugging Face's constant ignores the warm-up
    ],
)
def test_schedule_factors_follow_hugging_faces_formulas(kind, progress, expected):
    assert schedule_factor(kind, 0.2, progress) == pytest.approx(expected, abs=1e-12)


def test_a_schedule_over_the_clock_ends_with_the_budget_in_a_real_trainer(tmp_path):
    """A Trainer with max_steps 1000 and a 10 s budget of 1 s steps: its cosine (20% warm-up) runs
    over the 10 s, not the 1000 steps; each step's rate is the factor of the share spent before it."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Toy(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Linear(2, 1)

        def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"loss": ((self.weight(x).squeeze(-1) - labels) ** 2).mean()}

    clock = [0.0]

    class OneSecondSteps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock[0] += 1.0

    budget = TimeBudgetCallback(10.0, clock=lambda: clock[0], lr_schedule=("cosine", 0.2))
    arguments = TrainingArguments(
        output_dir=str(tmp_path), max_steps=1000, learning_rate=0.1, lr_scheduler_type="cosine",
        warmup_steps=0.2, logging_steps=1, per_device_train_batch_size=4, save_strategy="no",
        use_cpu=True, report_to="none", disable_tqdm=True,
    )  # fmt: skip
    rows = [{"x": torch.ones(2), "labels": torch.tensor(1.0)}] * 64
    trainer = Trainer(model=Toy(), args=arguments, train_dataset=rows, callbacks=[OneSecondSteps(), budget])
    trainer.train()
    assert trainer.state.global_step == 10 and budget.stopped_at_step == 10
    logged = [(e["step"], e["learning_rate"]) for e in trainer.state.log_history if "learning_rate" in e]
    expected = [(step, 0.1 * schedule_factor("cosine", 0.2, (step - 1) / 10)) for step in range(1, 11)]
    assert [step for step, _ in logged] == [step for step, _ in expected]
    assert [rate for _, rate in logged] == pytest.approx([rate for _, rate in expected], abs=1e-12)
    assert max(rate for _, rate in logged) == pytest.approx(0.1)  # the peak, at the end of the warm-up
