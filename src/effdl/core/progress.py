"""Progress of long work, reported by whoever does it and shown by whoever listens.

Stages (building a candidate, fine-tuning, lowering and checking a runtime, timing, evaluating)
call ``report(stage, done, total)``; nothing is printed unless a listener is installed with
``listening(fn)`` (the CLI draws a progress bar from it). Library code never prints.
"""
from __future__ import annotations

import contextlib
import time
from contextvars import ContextVar
from typing import Any, Callable, Iterator

Listener = Callable[[str, int, "int | None"], None]
_LISTENER: ContextVar[Listener | None] = ContextVar("effdl_progress", default=None)
#: called with (task, model in eval mode, epochs trained so far) at each epoch boundary of Task.train
EpochCheck = Callable[[Any, Any, float], None]
_EPOCH_CHECK: ContextVar[EpochCheck | None] = ContextVar("effdl_epoch_check", default=None)


def report(stage: str, done: int, total: int | None = None) -> None:
    """``done`` of ``total`` units of ``stage`` are finished (``total`` None: unknown)."""
    fn = _LISTENER.get()
    if fn is not None:
        fn(stage, done, total)


@contextlib.contextmanager
def listening(fn: Listener) -> Iterator[None]:
    """Send every ``report`` made inside the block to ``fn(stage, done, total)``."""
    token = _LISTENER.set(fn)
    try:
        yield
    finally:
        _LISTENER.reset(token)


class StageTimer:
    """Wall seconds per named stage; ``with timer.stage("apply"):`` also reports the stage's start."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        report(name, 0, None)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t0, 3)


def epoch_trained(task, model, epochs: float) -> None:
    """Training reached an epoch boundary: run the installed check (a search's pruner evaluates the
    model and may raise to stop a hopeless trial). The model is in eval mode during the check."""
    fn = _EPOCH_CHECK.get()
    if fn is None:
        return
    was_training = model.training
    model.eval()
    try:
        fn(task, model, epochs)
    finally:
        model.train(was_training)


@contextlib.contextmanager
def checking_epochs(fn: EpochCheck) -> Iterator[None]:
    """Call ``fn(task, model, epochs)`` at every epoch boundary of training inside the block."""
    token = _EPOCH_CHECK.set(fn)
    try:
        yield
    finally:
        _EPOCH_CHECK.reset(token)
