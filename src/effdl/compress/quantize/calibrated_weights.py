"""Weight-only quantization of Linear layers fitted to their inputs: what GPTQ and AWQ share.

Both methods choose a Linear layer's integer codes and scales from statistics of the inputs X the
layer sees on a few real calibration batches (the train split, ``Task.calibration_batches``), so
that the layer's output X W^T changes little; this module holds everything but that choice.

- Grid and storage: quantize.weights' uniform grid (``WeightOnlyConfig(format="uniform")`` with
  the same ``bits``, ``mode``, ``granularity`` and ``group_size``, see ``weight_config``) and its
  storage format (bit-packed codes + float32 scales (+ packed zero points)), so bytes on disk are
  the bits' worth plus the scales, and the result reloads through ``load_weight_only`` (AWQ adds
  one tensor, see awq.py). As there, a row whose length is not a multiple of ``group_size`` ends
  with one shorter group, and a ``group_size`` larger than a row makes that row one group.
- Layers: the ``nn.Linear`` layers among quantize.weights' targets (same ``exclude`` globs and
  ``keep_first_last``; NaN/Inf weights refused); Conv layers stay FP32, with a warning naming them.
  A Linear whose weight is tied to another module (a decoder's ``lm_head`` and its embedding) is
  quantized like the others, with a warning: the fit is to the Linear's inputs only.
  A Linear its model never calls through ``forward`` (``nn.MultiheadAttention``'s ``out_proj``)
  has no inputs to measure and stays FP32 with a warning.
- Order: with ``sequential`` (the default, as in the GPTQ paper) the layers are quantized stage by
  stage in forward order (one repeated block of a transformer, or one layer outside such lists),
  each stage's statistics taken with every earlier stage already quantized, so each layer is
  fitted to the inputs it will really see; ``sequential=False`` takes every layer's statistics in
  one forward pass on the float model. The stages are prune/calibrated.py's (SparseGPT and Wanda
  order their layers the same way).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field, field_validator, model_validator

from ...core.config import TechniqueConfig
from ...core.errors import ConfigError, DataError
from ...core.forms import refuse_quantized
from ..layer_stats import InputStats, input_stats
from ..prune.calibrated import _raise_stop, _until, calibration, plan_stages
from .scheme import QScheme, check_bits
from .weight_only import WeightOnlyConfig, target_layers

__all__ = ["CalibratedWeightsConfig", "LayerEncoder", "linear_layers", "quantize_calibrated"]

#: quantize one layer from its input statistics: returns its stored parts and writes the decoded
#: weight into the layer (so later stages see the quantized layer)
LayerEncoder = Callable[[str, nn.Linear, InputStats], dict[str, torch.Tensor]]

MAX_BITS = 8


class CalibratedWeightsConfig(TechniqueConfig):
    """The fields GPTQ and AWQ share (not registered itself)."""

    bits: int = Field(4, description="code width in bits, 2..8")
    mode: Literal["symmetric", "affine"] = Field("symmetric", description="zero point 0, or an integer zero point per scale")
    granularity: Literal["channel", "group"] = Field("channel", description="one scale per output channel, or per group of a channel's inputs")
    group_size: int | None = Field(None, ge=2, description="inputs per group (granularity='group' only; 128 is the papers' usual)")
    num_batches: int = Field(8, ge=1, description="calibration batches from the train split")
    batch_size: int = Field(32, ge=1, description="calibration batch size")
    sequential: bool = Field(True, description="quantize stage by stage, each measured after the earlier ones are quantized")
    keep_first_last: bool = Field(False, description="leave the first and the last Conv/Linear layer in FP32")
    exclude: tuple[str, ...] = Field((), description="module-name glob patterns left in FP32")

    @field_validator("bits", mode="before")
    @classmethod
    def _bits(cls, v):
        v = check_bits(v)
        if v > MAX_BITS:
            raise ConfigError(f"bits={v}: {cls.technique or 'this technique'} fits 2..{MAX_BITS}-bit grids; "
                              "wider grids lose almost nothing to plain rounding: use quantize.weights")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        self.weight_config()  # group_size present iff granularity='group', named by QScheme
        return self

    def weight_config(self) -> WeightOnlyConfig:
        """quantize.weights' config for the same grid: what defines the codes and how they are stored."""
        return WeightOnlyConfig(bits=self.bits, format="uniform", mode=self.mode, granularity=self.granularity,
                                group_size=self.group_size, keep_first_last=self.keep_first_last, exclude=self.exclude)


def row_scheme(cfg: WeightOnlyConfig) -> QScheme:
    """One (scale, zero point) per output row of a slice of columns: how a channel's or a group's
    parameters are computed (the same min/max rule as ``cfg.scheme()``, applied to that slice)."""
    return QScheme(bits=cfg.bits, mode=cfg.mode, signed=True, granularity="channel", axis=0)


def linear_layers(model: nn.Module, cfg: CalibratedWeightsConfig) -> list[tuple[str, nn.Linear]]:
    """The Linear layers to quantize, in module order (others named in a warning)."""
    layers = target_layers(model, cfg.exclude, cfg.keep_first_last)
    other = [n for n, m in layers if not isinstance(m, nn.Linear)]
    if other:
        warnings.warn(f"{cfg.technique} quantizes nn.Linear layers only: {len(other)} Conv layer(s) left in FP32 "
                      f"({', '.join(other[:5])}{' ...' if len(other) > 5 else ''}); exclude them to silence this, "
                      "or use quantize.weights for convolutions", stacklevel=3)
    linears = [(n, m) for n, m in layers if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"{cfg.technique} quantizes nn.Linear layers and the model has none left to quantize "
                          "(check 'exclude' and 'keep_first_last'); use quantize.weights for convolutions")
    _warn_tied(model, linears, cfg.technique)
    return linears


def _warn_tied(model: nn.Module, linears: list[tuple[str, nn.Linear]], technique: str) -> None:
    # a weight tied to another module (a decoder's lm_head and its input embedding) is fitted to the
    # Linear's inputs only, and the other module then reads the fitted values: say so, and how to avoid it
    uses: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    tied = [n for n, m in linears if uses.get(id(m.weight), 0) > 1]
    if tied:
        warnings.warn(f"{technique}: the weight of {', '.join(tied[:5])} is shared with another module (tied "
                      "embeddings); it is fitted to this layer's inputs only and the other module reads the fitted "
                      f"values: exclude it (e.g. exclude=('*lm_head',)) to keep it in FP32, as the papers do",
                      stacklevel=4)


def _finite(name: str, stats: InputStats, technique: str) -> None:
    # finite batches can still overflow inside the model; a NaN Hessian would poison every weight
    if not bool(torch.isfinite(stats.abs_max).all()):
        raise DataError(f"{technique}: the inputs of layer {name!r} hold NaN/Inf on the calibration batches "
                        "(the model overflows on them): check the model in float32 on these inputs")


def quantize_calibrated(model: nn.Module, cfg: CalibratedWeightsConfig, task, encode: LayerEncoder, *,
                        hessian: bool) -> dict[str, dict[str, torch.Tensor]]:
    """Quantize ``model``'s target layers in place with ``encode``, stage by stage (see the module
    docstring); returns each quantized layer's stored parts."""
    refuse_quantized(model, cfg.technique)
    layers = dict(linear_layers(model, cfg))
    model.eval()  # dropout off: the statistics are those of inference
    batches = calibration(task, cfg)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for stage, stop in plan_stages(model, layers, batches[0], cfg.sequential, cfg.technique):
        handle = stop.register_forward_pre_hook(_raise_stop) if stop is not None else None
        try:
            stats = input_stats(_until(model, stop), {n: layers[n] for n in stage}, batches, hessian=hessian)
        finally:
            if handle is not None:
                handle.remove()
        with torch.no_grad():
            for name in stage:
                _finite(name, stats[name], cfg.technique)
                parts[name] = encode(name, layers[name], stats[name])
        del stats  # a stage's Hessians are (in, in) each: free them before the next
    return parts
