"""Schedules: when to prune.

- ``oneshot``: prune to the target once, then fine-tune.
- ``iterative``: R rounds of prune-then-fine-tune; round r reaches s_r = 1 - (1 - s)^(r/R), i.e. the
  same fraction of the *remaining* weights is removed every round (textbook: small steps with
  recovery keep more accuracy than one big cut).
- ``gradual`` (Zhu & Gupta 2017): during training, at steps t = t0, t0 + dt, ..., t0 + n dt the
  masks are recomputed at s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3; training continues
  after the last step (fine-tuning at the final sparsity). Masks only grow (a pruned weight stays
  pruned), and they are applied through the mask parametrization, so no pruned weight regrows.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch.nn as nn

from ...core.errors import ConfigError
from ...core.task import TrainHook
from .granularity import check_ratio

SCHEDULES = ("oneshot", "iterative", "gradual")


def iterative_targets(sparsity: float, rounds: int) -> list[float]:
    check_ratio(sparsity)
    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {rounds}")
    return [1.0 - (1.0 - sparsity) ** (r / rounds) for r in range(1, rounds + 1)]


def cubic_sparsity(t: int, *, final: float, initial: float = 0.0, start: int = 0, n: int = 1, every: int = 1) -> float:
    """Zhu-Gupta sparsity at step t: ``initial`` before ``start``, ``final`` from start + n*every on."""
    if n < 1 or every < 1:
        raise ConfigError(f"the gradual schedule needs n >= 1 pruning steps and frequency >= 1, got n={n}, every={every}")
    if t < start:
        return initial
    frac = min(1.0, (t - start) / (n * every))
    return final + (initial - final) * (1.0 - frac) ** 3


def pruning_steps(start: int, n: int, every: int) -> list[int]:
    """The steps at which the gradual schedule updates the masks: t0, t0 + dt, ..., t0 + n dt."""
    return [start + i * every for i in range(n + 1)]


def train_gradual(model: nn.Module, task, prune: Callable[[float], None], *, final: float, initial: float = 0.0,
                  start: int = 0, n: int = 10, every: int = 1, total_steps: int | None = None,
                  lr: float = 1e-3, seed: int | None = None) -> nn.Module:
    """Train with ``task.train`` for ``total_steps`` optimizer steps (at least t0 + n dt + 1), calling
    ``prune(s_t)`` before the step t of every scheduled update (a step hook via the loss function)."""
    check_ratio(final, "final sparsity")
    check_ratio(initial, "initial sparsity")
    if initial > final:
        raise ConfigError(f"initial sparsity {initial} is above the final sparsity {final}: the schedule only prunes")
    steps_at = set(pruning_steps(start, n, every))
    last = max(steps_at)
    total = max(total_steps or 0, last + 1)
    class Ramp(TrainHook):
        def before_step(self, step: int, model: nn.Module) -> None:
            if step in steps_at:
                prune(cubic_sparsity(step, final=final, initial=initial, start=start, n=n, every=every))

    task.train(model, steps=total, lr=lr, hooks=[Ramp()], seed=seed)
    return model


def epochs_to_steps(epochs: float, per_epoch: int) -> int:
    return int(math.ceil(epochs * per_epoch - 1e-9))
