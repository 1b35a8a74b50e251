"""learn.hint: feature distillation, added to the logit distillation loss of learn.distill.

Pairs of layers (student name, teacher name) are tapped with forward hooks; per pair:
- ``loss="mse"``: FitNets hints (Romero et al. 2015): MSE between the teacher's activation and the
  student's mapped by a learned adapter (1x1 conv for conv maps, Linear for vectors and tokens)
  when the widths differ, divided by the teacher activation's mean square (so beta does not
  depend on the layer's scale). Adapters train with the student and are dropped afterwards.
  Unlike FitNets' two stages (hints first, then KD), both losses are trained at once.
- ``loss="attention"``: attention transfer (Zagoruyko & Komodakis 2017): the attention map of an
  activation is the mean over channels of its square, flattened and L2-normalised; the loss is
  || a_s / |a_s| - a_t / |a_t| ||_2 averaged over the batch. No adapter: the channel mean
  removes the width. Maps must have the same spatial size.
``channel_dim=1`` reads activations as (N, C, ...spatial) (conv layers), ``-1`` as (N, L, D)
token sequences (attention over tokens; adapters are Linear over D).
total loss = distillation loss (temperature, alpha as in learn.distill) + beta * sum of pair losses.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field, model_validator

from ..core.errors import ConfigError, suggest
from ..core.registry import register
from ..core.compressed import float_reference
from ..core.forms import refuse_quantized
from .augment import augment_batch
from .distill import DistillConfig, check_teachers, distillation_loss, resolve_teachers


class HintConfig(DistillConfig):
    """Logit distillation plus hint (FitNets) or attention-transfer losses between named layers."""

    student_layers: tuple[str, ...] = Field(..., min_length=1, description="student module names, paired in order")
    teacher_layers: tuple[str, ...] = Field(..., min_length=1, description="teacher module names, paired in order")
    loss: Literal["mse", "attention"] = Field("mse", description="'mse' (FitNets hint + adapter) or 'attention' (AT)")
    beta: float = Field(1.0, ge=0.0, description="weight of the summed feature losses")
    channel_dim: Literal[1, -1] = Field(1, description="1: (N, C, ...) conv maps; -1: (N, L, D) token sequences")

    @model_validator(mode="after")
    def _pairs(self):
        if len(self.student_layers) != len(self.teacher_layers):
            raise ValueError(f"{len(self.student_layers)} student layers but {len(self.teacher_layers)} teacher "
                             "layers: list them in pairs")
        if len(self.teacher_names()) != 1:
            raise ValueError("hint distillation needs a single teacher, not an ensemble")
        return self


def attention_map(a: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
    """(N, positions): mean over channels of a^2, flattened, L2-normalised per input."""
    if a.ndim < 3:
        raise ConfigError(f"attention transfer needs spatial or token maps (N, C, ...) or (N, L, D), "
                          f"got shape {tuple(a.shape)}: use loss='mse' for vector layers")
    return F.normalize(a.pow(2).mean(dim=channel_dim).flatten(1), dim=1)


def attention_loss(a_s: torch.Tensor, a_t: torch.Tensor, channel_dim: int = 1) -> torch.Tensor:
    return (attention_map(a_s, channel_dim) - attention_map(a_t, channel_dim)).norm(dim=1).mean()


def hint_mse(mapped: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE relative to the teacher activation's mean square: scale-free, so one ``beta`` suits
    every layer and input range (raw activations of unnormalised inputs would swamp the logit loss)."""
    return F.mse_loss(mapped, target) / target.pow(2).mean().clamp_min(1e-12)


def _width_and_rest(shape: torch.Size, channel_dim: int) -> tuple[int, tuple[int, ...]]:
    dims = list(shape[1:])
    c = dims.pop(channel_dim - 1 if channel_dim > 0 else len(dims) - 1)
    return c, tuple(dims)


def make_adapter(student_shape, teacher_shape, channel_dim: int = 1, pair: str = "") -> nn.Module:
    """The map from a student activation's width to the teacher's (Identity when equal)."""
    student_shape, teacher_shape = torch.Size(student_shape), torch.Size(teacher_shape)
    if len(student_shape) != len(teacher_shape):
        raise ConfigError(f"hint pair {pair}: student activation {tuple(student_shape)} and teacher "
                          f"{tuple(teacher_shape)} have different ranks: pair layers of the same kind")
    cs, rest_s = _width_and_rest(student_shape, channel_dim)
    ct, rest_t = _width_and_rest(teacher_shape, channel_dim)
    if rest_s != rest_t:
        raise ConfigError(f"hint pair {pair}: student activation {tuple(student_shape)} and teacher "
                          f"{tuple(teacher_shape)} differ beyond the width: pick layers at the same resolution")
    if cs == ct:
        return nn.Identity()
    if len(student_shape) == 2 or channel_dim == -1:
        return nn.Linear(cs, ct)
    conv = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}.get(len(student_shape))
    if conv is None:
        raise ConfigError(f"hint pair {pair}: no 1x1 adapter for activations of rank {len(student_shape)}")
    return conv(cs, ct, 1)


class _Taps:
    """Forward hooks keeping the latest output of named modules."""

    def __init__(self, model: nn.Module, names, role: str) -> None:
        modules = dict(model.named_modules())
        self.out: dict[str, torch.Tensor] = {}
        self.handles = []
        for name in names:
            if name not in modules or not name:
                raise ConfigError(f"unknown {role} layer {name!r} for hint distillation.{suggest(name, modules)} "
                                  f"Layer names: {', '.join(n for n in modules if n)}")
            self.handles.append(modules[name].register_forward_hook(self._keep(name)))

    def _keep(self, name: str):
        def hook(_module, _inputs, output):
            self.out[name] = output[0] if isinstance(output, (tuple, list)) else output
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class _Trainee(nn.Module):
    """Student + adapters, so Task.train optimises both; only the student is kept."""

    def __init__(self, student: nn.Module, adapters: list[nn.Module]) -> None:
        super().__init__()
        self.student = student
        self.adapters = nn.ModuleList(adapters)

    def forward(self, x):
        return self.student(x)


def hint_distill(model: nn.Module, task, cfg: HintConfig, teacher: nn.Module | None = None):
    """Train ``model`` in place; returns (model, per-step feature losses). ``teacher``: any module
    with the named layers (None = the one ``cfg`` names)."""
    refuse_quantized(model, "learn.hint")
    teacher = resolve_teachers(cfg, model, task)[0] if teacher is None else teacher
    check_teachers([teacher], model, task)
    # layers named as in the float model (a share.cluster result wraps it; training trains its centroids)
    s_taps = _Taps(float_reference(model), cfg.student_layers, "student")
    try:
        t_taps = _Taps(teacher, cfg.teacher_layers, "teacher")
    except ConfigError:
        s_taps.remove()
        raise
    pairs = list(zip(cfg.student_layers, cfg.teacher_layers))
    try:
        x = task.example_input(2)
        was = model.training
        with torch.no_grad():
            model.eval()(x), teacher(x)
        model.train(was)
        adapters = []
        for s, t in pairs:
            a_s, a_t = s_taps.out[s], t_taps.out[t]
            if cfg.loss == "attention":
                if attention_map(a_s, cfg.channel_dim).shape != attention_map(a_t, cfg.channel_dim).shape:
                    raise ConfigError(f"attention maps of student {s!r} {tuple(a_s.shape)} and teacher {t!r} "
                                      f"{tuple(a_t.shape)} differ in size: pair layers at the same resolution")
                adapters.append(nn.Identity())
            else:
                adapters.append(make_adapter(a_s.shape, a_t.shape, cfg.channel_dim, f"({s!r}, {t!r})"))
        trainee = _Trainee(model, adapters)
        history: list[float] = []

        def loss_fn(m: _Trainee, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            if cfg.augmenting():
                xb, yb = augment_batch(cfg, xb, yb, task.num_classes)
            logits = m(xb)
            with torch.no_grad():
                t_logits = teacher(xb)
            feats = []
            for (s, t), adapter in zip(pairs, m.adapters):
                if cfg.loss == "attention":
                    feats.append(attention_loss(s_taps.out[s], t_taps.out[t], cfg.channel_dim))
                else:
                    feats.append(hint_mse(adapter(s_taps.out[s]), t_taps.out[t]))
            feat = torch.stack(feats).sum()
            history.append(float(feat.detach()))
            return distillation_loss(logits, t_logits, yb, cfg.temperature, cfg.alpha) + cfg.beta * feat

        task.train(trainee, epochs=cfg.epochs, lr=cfg.lr, loss_fn=loss_fn, keep_sparsity=True)
    finally:
        s_taps.remove()
        t_taps.remove()
    return model.eval(), history


@register("learn.hint", HintConfig, needs="training", tasks=("classification",), models=("cnn",), example=lambda: HintConfig(student_layers=("layers.0",), teacher_layers=("layers.0",), epochs=0.25))
def hint(model: nn.Module, cfg: HintConfig, task) -> nn.Module:
    """Feature distillation: FitNets hints with learned adapters, or attention transfer, plus logit distillation."""
    return hint_distill(model, task, cfg)[0]
