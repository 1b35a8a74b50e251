"""learn.distill: logit distillation (Hinton et al. 2015).

loss = (1 - alpha) * CE(student, y) + alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)).
The T^2 factor keeps the soft-target gradients on the same scale as the hard-target ones when T
changes. The default teacher is the Task's reference model: the "improve" step after shrinking,
where the compressed model learns from its uncompressed self.
"""
from __future__ import annotations

from typing import Literal

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from ..core.config import TechniqueConfig
from ..core.errors import ConfigError
from ..core.registry import register


class DistillConfig(TechniqueConfig):
    """Logit distillation from a teacher into the model."""

    temperature: float = Field(4.0, gt=0.0, description="softmax temperature T (> 0)")
    alpha: float = Field(0.9, ge=0.0, le=1.0, description="weight of the soft-target term")
    epochs: float = Field(3.0, gt=0.0)
    lr: float = Field(1e-3, gt=0.0)
    teacher: Literal["task"] = Field("task", description="'task': the Task's reference (uncompressed) model")


def distillation_loss(student_logits, teacher_logits, labels, temperature: float, alpha: float) -> torch.Tensor:
    t = temperature
    soft = F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.log_softmax(teacher_logits / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    hard = F.cross_entropy(student_logits, labels)
    return (1.0 - alpha) * hard + alpha * (t * t) * soft


@register("learn.distill", DistillConfig, needs="training")
def distill(model: nn.Module, cfg: DistillConfig, task) -> nn.Module:
    """Logit distillation with temperature T and weight alpha (loss scaled by T^2)."""
    if type(model).__name__ == "QuantizedModel":
        raise ConfigError("learn.distill must come before quantize.ptq in a recipe (the model is already quantized)")
    teacher = task.model
    if teacher is model:  # inplace on the task's own model: freeze a copy as the teacher
        teacher = copy.deepcopy(model)
    teacher.eval()
    x = task.example_input(2)
    with torch.no_grad():
        t_out, s_out = teacher(x), model.eval()(x)
    if t_out.shape[-1] != s_out.shape[-1]:
        raise ConfigError(
            f"the teacher outputs {t_out.shape[-1]} classes but the student {s_out.shape[-1]}: "
            "distillation needs the same label space"
        )

    def loss_fn(student: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            tl = teacher(xb)
        return distillation_loss(student(xb), tl, yb, cfg.temperature, cfg.alpha)

    return task.train(model, epochs=cfg.epochs, lr=cfg.lr, loss_fn=loss_fn, keep_sparsity=True)
