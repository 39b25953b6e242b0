"""Build TRL's GRPOTrainer for geolocation, Ray-free: the same construction runs inside each Ray
Train worker (tasks/grpo.py, rewards from a Ray actor pool) and bare in one process (benchmarks).

Choices:
- TRL implements GRPO (group advantages, clipped loss, k3 KL with ``beta``; ``beta=0`` loads no
  reference model); we only supply data, rewards and settings. Gradient checkpointing is off.
- Rewards: one *scorer* call per batch (completions and their ``Truth``) returns every component
  (geor_core.scoring.rewards' contract). ``combined`` and each component the reward table marks
  ``logged`` (distance, format, chain, region, parse_failed, acc_25/200/750 km, geoscore, ...) is
  exposed to TRL as its own reward function, with weight 1 for ``combined`` and 0 for the rest, so
  TRL logs ``rewards/<name>/mean|std`` for all of them while only the combined reward drives the
  advantage. The scorer runs once per batch: the functions share a memo keyed by the batch's
  completions and truth.
- Validation is TRL's own evaluation on a fixed val subset (sampled, ``num_generations`` per
  prompt): ``eval_reward`` ranks checkpoints and ``eval_rewards/acc_200km/mean`` etc. report
  accuracy.
- Timing: ``timing/generation_s`` (a thin ``_generate`` wrapper) and ``timing/reward_s``.
- The rows a run consumes: TRL's RepeatSampler draws ``generation_batch_size / num_generations``
  prompts per generation, a generation serves ``steps_per_generation x num_iterations``
  micro-steps, ``gradient_accumulation_steps`` of them an optimizer step (GRPOConfig's defaults,
  which we keep: ``steps_per_generation = gradient_accumulation_steps``, ``generation_batch_size =
  per_device x workers x steps_per_generation``, ``num_iterations = 1``). ``grpo_rows_consumed``
  counts the prompts ``max_steps`` steps draw; a dataset of exactly that many rows is drawn whole,
  once, in a seeded order (tasks/grpo.py holds only those).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa

from geor_core.config import GeorConfig, ModelConfig
from geor_core.data.images import load_image
from geor_core.geo.prompts import user_turn
from geor_core.scoring import rewards
from geor_core.scoring.rewards import Truth
from geor_core.training.sft_setup import per_device_batch_size, trainer_arguments

GRPO_COLUMNS = ["id", "image", *rewards.TRUTH_COLUMNS]
Scorer = Callable[[list, Truth], dict[str, np.ndarray]]


def grpo_rows_consumed(
    *,
    max_steps: int,
    generation_batch_size: int,
    num_generations: int,
    steps_per_generation: int,
    num_iterations: int,
    gradient_accumulation_steps: int,
    split_rows: int,
) -> int:
    """Distinct prompts TRL's GRPOTrainer draws in ``max_steps`` optimizer steps, at most
    ``split_rows`` (all of them when ``max_steps <= 0``: the run is epoch-based); the arguments
    are GRPOConfig's fields of the same names (module docstring)."""
    if max_steps <= 0:
        return split_rows
    steps_per_draw = steps_per_generation * num_iterations / gradient_accumulation_steps
    draws = math.ceil(max_steps / steps_per_draw)
    return min(draws * (generation_batch_size // num_generations), split_rows)


def grpo_train_rows(cfg: GeorConfig, split_rows: int) -> int:
    """``grpo_rows_consumed`` for the ``grpo`` section, with GRPOConfig's defaults for what it
    does not set (module docstring), before any trainer exists (the driver's count)."""
    g = cfg.grpo
    accumulation = g.gradient_accumulation_steps
    return grpo_rows_consumed(
        max_steps=g.max_steps,
        generation_batch_size=per_device_batch_size(g) * g.num_workers * accumulation,
        num_generations=g.num_generations,
        steps_per_generation=accumulation,
        num_iterations=1,
        gradient_accumulation_steps=accumulation,
        split_rows=split_rows,
    )


def trainer_rows_consumed(args: Any, split_rows: int) -> int:
    """``grpo_rows_consumed`` from a built trainer's GRPOConfig (the worker's check of the
    driver's count)."""
    return grpo_rows_consumed(
        max_steps=args.max_steps,
        generation_batch_size=args.generation_batch_size,
        num_generations=args.num_generations,
        steps_per_generation=args.steps_per_generation,
        num_iterations=args.num_iterations,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        split_rows=split_rows,
    )


def _examples(batch: dict[str, list], model: ModelConfig) -> dict[str, list]:
    rows = dict(batch)
    rows["prompt"] = [user_turn() for _ in batch["id"]]
    rows["image"] = [load_image(uri, model) for uri in batch["image"]]
    return rows


def grpo_dataset(table: pa.Table, model: ModelConfig) -> Any:
    """Prompt + image + truth columns; images decoded on access straight down to
    ``model.max_pixels`` (geor_core.data.images), never held in memory."""
    import datasets

    dataset = datasets.Dataset(table.select(GRPO_COLUMNS))
    dataset.set_transform(partial(_examples, model=model))
    return dataset


class RewardBoard:
    """Scores each batch once with ``scorer`` and serves its components to TRL's reward functions."""

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer
        self._key: tuple | None = None
        self._scores: dict[str, np.ndarray] = {}
        self.seconds = 0.0

    def components(self, completions: list, kwargs: dict[str, Any]) -> dict[str, np.ndarray]:
        key = (id(completions), len(completions), tuple(kwargs["id"]))
        if key != self._key:
            started = time.perf_counter()
            scores = self.scorer(completions, Truth.from_columns(kwargs))
            elapsed = time.perf_counter() - started
            self.seconds += elapsed
            if "log_metric" in kwargs:
                kwargs["log_metric"]("timing/reward_s", elapsed)
            self._key, self._scores = key, scores
        return self._scores

    def reward_function(self, name: str) -> Callable[..., list[float]]:
        def reward(prompts: list, completions: list, **kwargs: Any) -> list[float]:
            return self.components(completions, kwargs)[name].tolist()

        reward.__name__ = name
        return reward

    def reward_functions(self) -> tuple[list[Callable], list[float]]:
        """TRL ``reward_funcs`` and ``reward_weights``: combined drives learning, the components the
        reward table marks ``logged`` are logged."""
        logged = [c.name for c in rewards.COMPONENTS if c.logged]
        names = (rewards.COMBINED, *logged)
        return [self.reward_function(n) for n in names], [1.0] + [0.0] * len(logged)


def grpo_arguments(cfg: GeorConfig, output_dir: str, *, has_eval: bool, reward_weights: list[float]) -> Any:
    """TRL GRPOConfig from the ``grpo`` section."""
    from trl import GRPOConfig

    g = cfg.grpo
    return GRPOConfig(
        **trainer_arguments(g, output_dir, has_eval=has_eval),
        num_generations=g.num_generations,
        max_completion_length=g.max_completion_length,
        temperature=g.temperature,
        top_p=g.top_p,
        beta=g.beta,
        epsilon=g.epsilon,
        loss_type=g.loss_type,
        use_vllm=g.use_vllm,
        reward_weights=reward_weights,
        log_completions=False,
    )


def timed_grpo_trainer_class() -> type:
    """TRL's GRPOTrainer with generation time recorded as ``timing/generation_s``."""
    from trl import GRPOTrainer

    class TimedGRPOTrainer(GRPOTrainer):
        def _generate(self, prompts: list) -> Any:
            started = time.perf_counter()
            try:
                return super()._generate(prompts)
            finally:
                self._log_metric("timing/generation_s", time.perf_counter() - started)

    return TimedGRPOTrainer


def build_grpo_trainer(
    cfg: GeorConfig,
    model: Any,
    processor: Any,
    train_table: pa.Table,
    eval_table: pa.Table | None,
    output_dir: str,
    scorer: Scorer,
    callbacks: list | None = None,
) -> tuple[Any, RewardBoard]:
    """TRL's GRPOTrainer over prepared rows, rewarded by ``scorer``; also returns the board."""
    board = RewardBoard(scorer)
    reward_funcs, weights = board.reward_functions()
    has_eval = eval_table is not None and eval_table.num_rows > 0
    trainer = timed_grpo_trainer_class()(
        model=model,
        reward_funcs=reward_funcs,
        args=grpo_arguments(cfg, output_dir, has_eval=has_eval, reward_weights=weights),
        train_dataset=grpo_dataset(train_table, cfg.model),
        eval_dataset=grpo_dataset(eval_table, cfg.model) if has_eval else None,
        processing_class=processor,
        callbacks=callbacks or [],
    )
    return trainer, board
