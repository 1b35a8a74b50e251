"""quantize.binary and quantize.ternary: 1-bit and 2-bit (three-level) weights trained with the STE.

* binary (XNOR-Net weights, Rastegari et al. 2016): w ~ alpha * sign(w), alpha = mean|w| of the
  output channel (the scale minimising ||w - alpha * sign(w)||^2); sign(0) is taken as +1 so each
  weight is one bit;
* ternary (TWN, Li et al. 2016): w ~ alpha * t, t in {-1, 0, +1}, t = sign(w) where |w| > delta,
  delta = 0.7 * mean|w| and alpha = mean of the |w| above delta (TWN's approximation of the
  optimal threshold), here per output channel (TWN uses one per layer; per channel costs 4 bytes a
  channel and never does worse).

Training (``epochs > 0``) runs ``task.train`` with every target weight replaced, through a
parametrization, by its binary/ternary value; the gradient reaches the float weights unchanged
(straight-through estimator), so they keep moving between the levels. The first and the last
Conv/Linear layer stay FP32 by default (the usual practice: they are small and the most sensitive).

There is no 1-/2-bit kernel here: the result runs by dequantizing (its Conv/Linear weights hold
alpha * code in float32). ``storage_tensors()`` holds the true form: ``<layer>.weight.packed``
(signs packed 8 per byte, or 2-bit ternary codes 4 per byte, packing.py) and ``<layer>.weight.alpha``
(float32 per output channel); :func:`load_extreme` rebuilds the model from them.
"""
from __future__ import annotations

import math
from typing import Literal

import pydantic
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from ...core.config import TechniqueConfig
from ...core.errors import ArtifactError, ConfigError, UnsupportedModuleError
from ...core.records import attach
from ...core.registry import register
from .packing import pack, unpack
from .qat import QuantErrorHistRecord, histogram_record
from ...core.forms import refuse_quantized
from .weight_only import WEIGHTED, EncodedWeightsModel, split_parts, target_layers

__all__ = ["BinaryConfig", "ExtremeQuantModel", "TernaryConfig", "binarize", "load_extreme", "ternarize"]

Kind = Literal["binary", "ternary"]
BITS = {"binary": 1, "ternary": 2}


class _ExtremeConfig(TechniqueConfig):
    epochs: float = pydantic.Field(3.0, ge=0.0, description="STE training epochs (0: post-training only)")
    lr: float = pydantic.Field(1e-3, gt=0.0, description="learning rate (AdamW, cosine schedule)")
    keep_first_last: bool = pydantic.Field(True, description="leave the first and the last Conv/Linear layer in FP32")
    exclude: tuple[str, ...] = pydantic.Field((), description="module-name glob patterns left in FP32")


class BinaryConfig(_ExtremeConfig):
    """1-bit weights: sign(w) * per-channel mean|w| (XNOR-Net), trained with the STE."""


class TernaryConfig(_ExtremeConfig):
    """Ternary weights {-alpha, 0, +alpha} per channel (TWN), trained with the STE."""

    threshold: float = pydantic.Field(0.7, gt=0.0, lt=2.0, description="delta = threshold * mean|w| (TWN: 0.7)")


# -- the numbers ---------------------------------------------------------------------------------
def binarize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes in {-1, +1} int8 of w's shape, alpha float32 [out]) with alpha = mean|w| per output channel."""
    rows = w.detach().float().reshape(w.shape[0], -1)
    alpha = rows.abs().mean(1)
    codes = torch.where(rows >= 0, 1, -1).to(torch.int8)
    return codes.reshape(w.shape), alpha


def ternarize(w: torch.Tensor, threshold: float = 0.7) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes in {-1, 0, +1} int8, alpha [out]): delta = threshold * mean|w|, alpha = mean |w| above delta."""
    rows = w.detach().float().reshape(w.shape[0], -1)
    a = rows.abs()
    delta = threshold * a.mean(1, keepdim=True)
    keep = a > delta
    alpha = (a * keep).sum(1) / keep.sum(1).clamp_min(1)  # an all-zero channel keeps alpha 0
    codes = (torch.sign(rows) * keep).to(torch.int8)
    return codes.reshape(w.shape), alpha


def _levels(w: torch.Tensor, kind: str, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    return binarize(w) if kind == "binary" else ternarize(w, threshold)


def _dequantize(codes: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    return codes.float() * alpha.reshape((-1,) + (1,) * (codes.dim() - 1))


class _STE(nn.Module):
    """Parametrization: the binary/ternary value forward, identity gradient backward."""

    def __init__(self, kind: str, threshold: float) -> None:
        super().__init__()
        self.kind, self.threshold = kind, threshold

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        value = _dequantize(*_levels(w, self.kind, self.threshold)).to(w.dtype)
        return value + (w - w.detach())


# -- the model -----------------------------------------------------------------------------------
class ExtremeQuantModel(EncodedWeightsModel):
    """Target weights hold alpha * code (run dequantized); parts ``packed`` (uint8) + ``alpha`` (float32 [out])."""

    def __init__(self, model: nn.Module, kind: str, parts: dict[str, dict[str, torch.Tensor]]) -> None:
        super().__init__(model, parts)
        self.kind = kind


def _pack_codes(codes: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "binary":  # sign bit: 1 = +1, 0 = -1
        return pack((codes > 0).to(torch.uint8), 1, signed=False)
    return pack(codes, 2, signed=True)


def _unpack_codes(packed: torch.Tensor, kind: str, shape) -> torch.Tensor:
    n = math.prod(shape)
    if kind == "binary":
        return (unpack(packed, 1, n, signed=False).to(torch.int8) * 2 - 1).reshape(shape)
    return unpack(packed, 2, n, signed=True).reshape(shape)


def load_extreme(model: nn.Module, tensors: dict[str, torch.Tensor], kind: Kind) -> ExtremeQuantModel:
    """Rebuild an ExtremeQuantModel from ``storage_tensors()`` into ``model`` (same float architecture)."""
    parts, plain = split_parts(tensors, ("packed", "alpha"))
    try:
        with torch.no_grad():
            for name, p in parts.items():
                w = model.get_submodule(name).weight
                plain[f"{name}.weight"] = _dequantize(_unpack_codes(p["packed"], kind, w.shape), p["alpha"]).to(w.dtype)
        model.load_state_dict(plain, strict=True)
    except (AttributeError, KeyError, RuntimeError, ValueError) as exc:
        raise ArtifactError(f"the stored tensors do not match the model ({str(exc).splitlines()[0]}): "
                            "load them into the architecture they were saved from") from None
    return ExtremeQuantModel(model.eval(), kind, parts)


# -- the techniques ----------------------------------------------------------------------------
def _run(model: nn.Module, cfg: _ExtremeConfig, task, kind: str) -> ExtremeQuantModel:
    name = f"quantize.{kind}"
    refuse_quantized(model, name)
    if not any(isinstance(m, WEIGHTED) for m in model.modules()):
        raise UnsupportedModuleError(
            f"{name}: the model has no Conv/Linear layer (only {sorted({type(m).__name__ for m in model.modules()})}); "
            "binary/ternary weights apply to Conv1d/2d/3d and Linear weights")
    layers = target_layers(model, cfg.exclude, cfg.keep_first_last)
    if not layers:
        raise ConfigError(f"{name}: no Conv/Linear layer left after keep_first_last/exclude; set keep_first_last=False "
                          "or exclude fewer layers")
    threshold = getattr(cfg, "threshold", 0.7)
    if cfg.epochs > 0:
        if task is None:
            raise ConfigError(f"{name} with epochs > 0 needs training data: pass task=ImageClassification(...), or epochs=0")
        try:
            for _, m in layers:
                parametrize.register_parametrization(m, "weight", _STE(kind, threshold))
            task.train(model, epochs=cfg.epochs, lr=cfg.lr)
        finally:
            for _, m in layers:
                if parametrize.is_parametrized(m, "weight"):
                    parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
    parts, hist = {}, {}
    with torch.no_grad():
        for n, m in layers:
            codes, alpha = _levels(m.weight, kind, threshold)
            parts[n] = {"packed": _pack_codes(codes, kind), "alpha": alpha}
            value = _dequantize(codes, alpha)
            hist[n] = histogram_record({"weights": value - m.weight})
            m.weight.copy_(value)
    out = ExtremeQuantModel(model.eval(), kind, parts)
    attach(out, QuantErrorHistRecord(layers=hist))
    return out


def _needs(cfg: _ExtremeConfig) -> str:
    return "training" if cfg.epochs > 0 else "nothing"


@register("quantize.binary", BinaryConfig, needs=_needs, models=("cnn", "mlp", "encoder", "decoder"), example=lambda: BinaryConfig(epochs=0.25))
def binary(model: nn.Module, cfg: BinaryConfig, task=None) -> ExtremeQuantModel:
    """1-bit weights sign(w) * per-channel mean|w| (XNOR-Net), STE-trained; stored 1 bit + a scale per channel."""
    return _run(model, cfg, task, "binary")


@register("quantize.ternary", TernaryConfig, needs=_needs, models=("cnn", "mlp", "encoder", "decoder"), example=lambda: TernaryConfig(epochs=0.25))
def ternary(model: nn.Module, cfg: TernaryConfig, task=None) -> ExtremeQuantModel:
    """Ternary weights {-a, 0, +a} (TWN, delta = 0.7 mean|w|), STE-trained; stored 2 bits + a scale per channel."""
    return _run(model, cfg, task, "ternary")
