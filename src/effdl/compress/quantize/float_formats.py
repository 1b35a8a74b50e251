"""quantize.float: Conv/Linear weights stored in FP16, BF16 or FP8 (E4M3 / E5M2).

Weights are rounded to the format (round to nearest even, overflow saturating at the format's
max: scheme.to_float_format) and the model computes in float32 with those values, so it runs
everywhere. ``storage_tensors()`` holds the weights in the real dtype (safetensors stores
float16, bfloat16, float8_e4m3fn and float8_e5m2 natively: 2 or 1 bytes per weight); biases and
other tensors stay float32.

FP8 (``scaled=True``, the usual FP8 recipe): each weight is divided by a per-tensor float32 scale
``max|w| / format max`` before the cast, so the largest weight lands on the format's largest value
instead of the weights crowding the subnormals (E4M3's smallest normal is 2^-6); the scale is
stored as ``<module>.weight.scale``. ``activations=True`` also rounds every converted layer's
input to the format (unscaled), simulating a low-precision datapath with float32 accumulation.
"""
from __future__ import annotations

import functools
from typing import Literal

import pydantic
import torch
import torch.nn as nn

from ...core.config import TechniqueConfig
from ...core.errors import ArtifactError
from ...core.registry import register
from .scheme import FLOAT_FORMATS, float_dtype, round_to_float_format, to_float_format
from ...core.forms import refuse_quantized
from .weight_only import EncodedWeightsModel, encode_layers

FloatFormat = Literal["fp16", "bf16", "fp8_e4m3", "fp8_e5m2"]


class FloatFormatConfig(TechniqueConfig):
    """Low-precision floating-point weights (and optionally layer inputs)."""

    format: FloatFormat = pydantic.Field("bf16", description="fp16, bf16, fp8_e4m3 or fp8_e5m2")
    scaled: bool = pydantic.Field(True, description="FP8 only: a per-tensor scale max|w|/format-max before the cast")
    activations: bool = pydantic.Field(False, description="also round each converted layer's input to the format")
    keep_first_last: bool = pydantic.Field(False, description="leave the first and the last Conv/Linear layer in FP32")
    exclude: tuple[str, ...] = pydantic.Field((), description="module-name glob patterns left in FP32")

    @property
    def uses_scale(self) -> bool:
        return self.scaled and self.format.startswith("fp8")


def _round_input(fmt: str, module: nn.Module, args: tuple):
    x = args[0]
    return (round_to_float_format(x, fmt),) + tuple(args[1:]) if torch.is_tensor(x) and x.is_floating_point() else None


class FloatFormatModel(EncodedWeightsModel):
    """Converted weights hold format-rounded values; parts ``weight`` (the format's real dtype, stored
    as ``<module>.weight``) (+ ``scale``, float32)."""

    def __init__(self, model: nn.Module, config: FloatFormatConfig, parts: dict[str, dict[str, torch.Tensor]]) -> None:
        super().__init__(model, parts)
        self.config = config
        if config.activations:
            for name in parts:
                model.get_submodule(name).register_forward_pre_hook(functools.partial(_round_input, config.format))

    @property
    def weight_format(self) -> str | None:
        """``config.format``: the converted weights are exactly its values (so the bf16 runtime keeps
        bf16 ones); None for scaled FP8, whose weights are format values times a float32 scale."""
        return None if self.config.uses_scale else self.config.format


def _encode(w: torch.Tensor, cfg: FloatFormatConfig) -> dict[str, torch.Tensor]:
    w = w.detach().float()
    if not cfg.uses_scale:
        return {"weight": to_float_format(w, cfg.format)}
    fmax = torch.finfo(float_dtype(cfg.format)).max
    scale = (w.abs().amax() / fmax).clamp_min(torch.finfo(torch.float32).tiny).reshape(1)
    return {"weight": to_float_format(w / scale, cfg.format), "scale": scale}


def _decode(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    w = parts["weight"].float()
    return w * parts["scale"] if "scale" in parts else w


@register("quantize.float", FloatFormatConfig, needs="nothing", models=("cnn", "mlp", "encoder", "decoder"))
def quantize_float(model: nn.Module, cfg: FloatFormatConfig, task=None) -> FloatFormatModel:
    """FP16 / BF16 / FP8 (E4M3, E5M2) weights, optionally inputs; stored in the real dtype."""
    refuse_quantized(model, "quantize.float")
    parts = encode_layers(model, cfg, lambda w: _encode(w, cfg), lambda p, shape: _decode(p))
    return FloatFormatModel(model.eval(), cfg, parts)


def load_float_format(model: nn.Module, tensors: dict[str, torch.Tensor], cfg: FloatFormatConfig) -> FloatFormatModel:
    """Rebuild a FloatFormatModel from ``storage_tensors()`` into ``model`` (same architecture)."""
    low = set(FLOAT_FORMATS.values())
    parts = {k.removesuffix(".weight"): {"weight": t} for k, t in tensors.items()
             if k.endswith(".weight") and t.dtype in low}
    for key, t in tensors.items():
        if key.endswith(".weight.scale"):
            parts.setdefault(key.removesuffix(".weight.scale"), {})["scale"] = t
    plain = {k: t for k, t in tensors.items() if not k.endswith(".weight.scale") and k.removesuffix(".weight") not in parts}
    plain.update({f"{n}.weight": _decode(p) for n, p in parts.items()})
    try:
        model.load_state_dict(plain, strict=True)
    except (RuntimeError, KeyError) as exc:
        raise ArtifactError(f"the stored tensors do not match the model ({str(exc).splitlines()[0]}): "
                            "load them into the architecture they were saved from") from None
    return FloatFormatModel(model.eval(), cfg, parts)
