"""learn.distill: logit distillation (Hinton et al. 2015), from one teacher or an ensemble.

loss = (1 - alpha) * CE(student, y) + alpha * T^2 * KL(p_teacher || softmax(student/T)), with
p_teacher = softmax(teacher/T), or for an ensemble the mean of the teachers' softened
probabilities. The T^2 factor keeps the soft-target gradients on the same scale as the hard-target
ones when T changes.

Teachers (``teacher``):
- ``"task"`` (default): the Task's reference model, the "improve" step after shrinking, where the
  compressed model learns from its uncompressed self;
- a zoo name such as ``"lenet5"``: ``effdl.zoo.trained(name, teacher_data)``, the cached trained
  baseline (a Task does not know its data set's name, so recipes name it), or that zoo
  architecture built for the task's shape with the safetensors weights in ``teacher_checkpoint``;
- a list of those: an ensemble whose softened probabilities are averaged.
In Python, any modules can teach: ``distill_with(model, task, cfg, teachers=[m1, m2])``.

The augmentation fields (shift, cutout, mixup, cutmix, label_smoothing; see learn.augment) make
the teachers label augmented inputs the student sees too; all off by default.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, model_validator

from ..core.errors import ConfigError, suggest
from ..core.registry import register
from ..core.forms import refuse_quantized
from .augment import AugmentFields, augment_batch


class DistillConfig(AugmentFields):
    """Logit distillation from a teacher (or an ensemble) into the model, optionally on augmented
    batches (the augmentation fields of learn.augment; teacher and student see the same input)."""

    temperature: float = Field(4.0, gt=0.0, description="softmax temperature T (> 0)")
    alpha: float = Field(0.9, ge=0.0, le=1.0, description="weight of the soft-target term, in [0, 1]")
    epochs: float = Field(3.0, gt=0.0, description="training epochs (fractions allowed)")
    lr: float = Field(1e-3, gt=0.0, description="learning rate (AdamW, cosine schedule)")
    teacher: str | tuple[str, ...] = Field(
        "task", description="'task' (the Task's reference model), a zoo model name, or a list of them (ensemble)")
    teacher_data: str | None = Field(
        None, description="data set the zoo teacher(s) were trained on: effdl.zoo.trained(name, teacher_data)")
    teacher_checkpoint: str | None = Field(
        None, description="safetensors weights for a single zoo teacher, built for the task's input shape")

    @model_validator(mode="after")
    def _check_teachers(self):
        from ..zoo import ZOO

        names = self.teacher_names()
        if not names:
            raise ValueError("teacher is an empty list: name at least one teacher ('task' or a zoo model)")
        for n in names:
            if n != "task" and n not in ZOO:
                raise ValueError(f"unknown teacher {n!r}: use 'task' or a zoo model ({', '.join(sorted(ZOO))})."
                                 + suggest(n, [*ZOO, "task"]))
        zoo = [n for n in names if n != "task"]
        if self.teacher_checkpoint is not None and (len(names) != 1 or names[0] == "task"):
            raise ValueError("teacher_checkpoint needs exactly one zoo teacher: set teacher to that zoo name")
        if zoo and self.teacher_checkpoint is None and self.teacher_data is None:
            raise ValueError(f"zoo teacher {zoo[0]!r} needs teacher_data, the data set it was trained on "
                             "(e.g. teacher_data='mnist'), or a teacher_checkpoint")
        return self

    def teacher_names(self) -> tuple[str, ...]:
        return (self.teacher,) if isinstance(self.teacher, str) else tuple(self.teacher)


def teacher_log_probs(teacher_logits: torch.Tensor | Sequence[torch.Tensor], temperature: float) -> torch.Tensor:
    """log of the (mean, for an ensemble) softened teacher probabilities."""
    if isinstance(teacher_logits, torch.Tensor):
        return F.log_softmax(teacher_logits / temperature, dim=1)
    logps = torch.stack([F.log_softmax(t / temperature, dim=1) for t in teacher_logits])
    # log(mean_i p_i) computed in log space, stable for confident teachers
    return torch.logsumexp(logps, dim=0) - torch.log(torch.tensor(float(len(teacher_logits))))


def distillation_loss(student_logits, teacher_logits, labels, temperature: float, alpha: float) -> torch.Tensor:
    """Hinton loss; ``teacher_logits`` is one tensor or a list (ensemble: probabilities averaged);
    ``labels`` are class indices or (N, K) target probabilities."""
    t = temperature
    if t <= 0:
        raise ConfigError(f"distillation temperature must be > 0, got {t}: use e.g. 4")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"distillation alpha must be in [0, 1], got {alpha}: use e.g. 0.9")
    hard = F.cross_entropy(student_logits, labels)
    return (1.0 - alpha) * hard + alpha * soft_kl(student_logits, teacher_logits, t)


def soft_kl(student_logits, teacher_logits, temperature: float) -> torch.Tensor:
    """T^2 * KL(p_teacher || softmax(student/T)) per row, averaged over rows."""
    t = temperature
    return (t * t) * F.kl_div(F.log_softmax(student_logits / t, dim=1), teacher_log_probs(teacher_logits, t),
                              reduction="batchmean", log_target=True)


def resolve_teachers(cfg: DistillConfig, model: nn.Module, task) -> list[nn.Module]:
    """The frozen teacher modules a config names (zoo teachers are loaded or trained once, cached)."""
    from ..core.io import load_state_into, load_weights
    from ..zoo import build, trained

    out = []
    for name in cfg.teacher_names():
        if name == "task":
            teacher = task.model
            if teacher is model:  # inplace on the task's own model: freeze a copy as the teacher
                teacher = copy.deepcopy(model)
        elif cfg.teacher_checkpoint is not None:
            teacher = build(name, input_shape=tuple(task.example_input(1).shape[1:]), num_classes=task.num_classes)
            load_state_into(teacher, load_weights(cfg.teacher_checkpoint), cfg.teacher_checkpoint)
        else:
            teacher = trained(name, cfg.teacher_data)
        out.append(teacher)
    return out


def check_teachers(teachers: Sequence[nn.Module], model: nn.Module, task) -> None:
    """Teachers are put in eval mode; each must share the student's label space."""
    if not teachers:
        raise ConfigError("distillation needs at least one teacher module")
    x = task.example_input(2)
    was = model.training
    with torch.no_grad():
        s_out = model.eval()(x)
        for teacher in teachers:
            teacher.eval()  # forwards run under no_grad; the caller's module is not otherwise touched
            t_out = teacher(x)
            if t_out.shape[-1] != s_out.shape[-1]:
                raise ConfigError(
                    f"the teacher outputs {t_out.shape[-1]} classes but the student {s_out.shape[-1]}: "
                    "distillation needs the same label space"
                )
    model.train(was)


def logit_loss(cfg: DistillConfig, teachers: Sequence[nn.Module], task) -> Callable:
    """Task.train's ``loss_fn(student, x, y)``: Hinton distillation against ``teachers``.

    Class logits: the Hinton loss (with augmentation on, the batch is augmented first and the
    teachers label the augmented input, "consistent teaching", Beyer et al. 2022; the hard term uses
    the soft targets). Per-token logits (language models): the same softened KL per token, and the
    task's own loss as the hard term. Embeddings: 1 - cosine to the (mean) teacher embedding."""
    kind = task.output_kind

    def loss(student: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if cfg.augmenting():
            x, y = augment_batch(cfg, x, y, task.num_classes)
        with torch.no_grad():
            tl = [t(x) for t in teachers]
        out = student(x)
        if kind == "logits":
            return distillation_loss(out, tl[0] if len(tl) == 1 else tl, y, cfg.temperature, cfg.alpha)
        if kind == "embedding":
            soft = 1.0 - F.cosine_similarity(out, torch.stack(tl).mean(0), dim=-1).mean()
        else:  # token logits [B, T, V]: one distribution per token
            v = out.shape[-1]
            soft = soft_kl(out.reshape(-1, v), [t.reshape(-1, v) for t in tl], cfg.temperature)
        return (1.0 - cfg.alpha) * task.output_loss(out, y) + cfg.alpha * soft

    return loss


def distill_with(model: nn.Module, task, cfg: DistillConfig, teachers: nn.Module | Sequence[nn.Module] | None = None) -> nn.Module:
    """Distil into ``model`` in place. ``teachers``: module(s) to learn from; None = those ``cfg`` names."""
    refuse_quantized(model, "learn.distill")
    if task.kind != "classification" and (cfg.augmenting() or cfg.teacher_names() != ("task",)):
        raise ConfigError(f"learn.distill on a {task.kind} task distils from the task's own model only and without "
                          "image augmentation: set teacher='task' and leave the augmentation fields off")
    if teachers is None:
        teachers = resolve_teachers(cfg, model, task)
    elif isinstance(teachers, nn.Module):
        teachers = [teachers]
    teachers = list(teachers)
    check_teachers(teachers, model, task)
    return task.train(model, epochs=cfg.epochs, lr=cfg.lr, loss_fn=logit_loss(cfg, teachers, task),
                      keep_sparsity=True)


@register("learn.distill", DistillConfig, needs="training", models=("cnn", "mlp", "encoder", "decoder"), example=lambda: DistillConfig(epochs=0.25))
def distill(model: nn.Module, cfg: DistillConfig, task) -> nn.Module:
    """Logit distillation with temperature T and weight alpha (loss scaled by T^2); teacher ensembles average probabilities."""
    return distill_with(model, task, cfg)
