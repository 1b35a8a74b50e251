"""The accuracy path of a pruning schedule: after every cut and after every fine-tune.

This is the textbook's iterative-vs-one-shot picture (figures 10.5/10.6): one-shot drops once and
recovers once; iterative drops less per step and recovers in between. Each point is
``[fine-tuning epochs so far, amount removed, validation accuracy, "start"|"prune"|"finetune"]``,
measured on the validation split (the test split stays untouched), and is attached to the model
as the ``trajectory`` record so the report can draw it.
"""
from __future__ import annotations

from typing import Literal

import torch.nn as nn

from ...core.records import Record, attach

#: [fine-tuning epochs so far, amount removed, validation quality (None without a task), event]
Point = tuple[float, float, float | None, Literal["start", "prune", "finetune"]]


class TrajectoryRecord(Record):
    """The quality path of a pruning schedule; ``kind`` says what the amount counts."""

    key = "trajectory"
    kind: Literal["weights", "channels"]
    points: list[Point]


class Trajectory:
    def __init__(self, task, kind: str) -> None:
        self.task, self.kind = task, kind
        self.epochs = 0.0
        self.points: list[list] = []

    def _quality(self, model: nn.Module) -> float | None:
        if self.task is None:
            return None
        return float(self.task.evaluate(model, "val")[self.task.metric.name])

    def mark(self, model: nn.Module, amount: float, event: str, epochs: float = 0.0) -> None:
        self.epochs += epochs
        self.points.append([self.epochs, float(amount), self._quality(model), event])

    def attach(self, model: nn.Module) -> None:
        if self.task is not None and any(p[3] == "finetune" for p in self.points):
            attach(model, TrajectoryRecord(kind=self.kind, points=self.points))
