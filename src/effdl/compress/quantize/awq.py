"""quantize.awq: activation-aware weight-only quantization (Lin, Tang, Tang, Yang, Dang & Han 2023,
"AWQ: Activation-aware Weight Quantization for LLM Compression and Acceleration").

A few input channels of a Linear layer carry much larger activations than the rest, and the
weights that multiply them matter most to the output. Scaling those weight columns up before
rounding (and the result back down) gives them a finer grid relative to their size:

    W_hat = Q(W diag(s)) diag(s)^-1,        s_j = mean|x_j| ^ alpha  (normalised, see below)

with Q quantize.weights' uniform grid (calibrated_weights.py). ``alpha`` is searched on the grid
{0, 1/n, ..., (n-1)/n} (n = ``grid``) to minimise the layer's output error on the calibration
inputs, ||X W^T - X W_hat^T||_F^2 = tr(dW X^T X dW^T), computed from X^T X (every calibration
row, not a sample). alpha = 0 is s = 1, plain round-to-nearest, so the result is never worse than
quantize.weights with the same grid on those inputs (ties go to the smaller alpha).

- s is normalised to geometric mean 1 over the inputs that fire (the scale of s does not change
  the rounding, only float round-off); inputs that are zero on every calibration row get s = 1.
- Storage: s cannot be folded into the grid (it varies along a group), and folding it into the
  previous operation (a norm's weight, or the previous Linear's output rows) needs the graph and
  one shared s per consumer set; here it is stored instead, as one extra float32 tensor per layer,
  ``<layer>.weight.input_scale`` (in_features values), next to quantize.weights' parts of
  Q(W diag(s)). Decoding divides the decoded grid by s (:func:`decode`), the same operation on
  quantization and on reload (:func:`load_awq`), so the reloaded weights are bit-identical.
- No weight-clipping search (the paper's second, optional step).

The layers, the calibration data and the stage order are calibrated_weights.py's.
"""
from __future__ import annotations

import logging
from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field

from ...core.errors import ArtifactError
from ...core.registry import register
from ..layer_stats import InputStats
from .calibrated_weights import CalibratedWeightsConfig, quantize_calibrated
from .weight_only import WeightOnlyConfig, WeightOnlyModel, dequantize_weight, load_weight_only, quantize_weight

log = logging.getLogger(__name__)

__all__ = ["AWQConfig", "AWQModel", "awq", "awq_search", "decode", "input_scale", "load_awq"]

SCALE_PART = "input_scale"


class AWQConfig(CalibratedWeightsConfig):
    """AWQ: per-input-channel weight scaling from activation magnitudes, searched against the output error."""

    mode: Literal["symmetric", "affine"] = Field("affine", description="zero point 0, or an integer zero point per scale (the paper's: affine)")
    grid: int = Field(20, ge=2, description="alpha values searched, 0, 1/grid, ..., (grid-1)/grid")


class AWQModel(WeightOnlyModel):
    """A WeightOnlyModel whose quantized layers also store their input scale s (part ``input_scale``);
    ``config`` is the grid's WeightOnlyConfig."""


def input_scale(abs_mean: torch.Tensor, alpha: float) -> torch.Tensor:
    """s = mean|x| ^ alpha, geometric mean 1 over the live inputs, 1 on the dead ones (float32)."""
    live = abs_mean > 0
    s = torch.ones_like(abs_mean, dtype=torch.float32)
    if alpha == 0 or not bool(live.any()):
        return s
    logs = alpha * abs_mean[live].double().log()
    s[live] = (logs - logs.mean()).exp().float()
    return s


def decode(parts: dict[str, torch.Tensor], shape: torch.Size, cfg: WeightOnlyConfig) -> torch.Tensor:
    """The float32 weight the parts encode: the decoded grid, divided by the input scale."""
    return dequantize_weight(parts, shape, cfg) / parts[SCALE_PART]


def _error(delta: torch.Tensor, hessian: torch.Tensor) -> float:
    """||dW X^T||^2 (times 2 / rows) from H = 2 X^T X / rows, in float64."""
    d = delta.double()
    return float(((d @ hessian) * d).sum())


def awq_search(weight: torch.Tensor, stats: InputStats, cfg: WeightOnlyConfig, grid: int = 20
               ) -> tuple[float, dict[str, torch.Tensor], list[float]]:
    """(best alpha, its stored parts, the output error at every alpha of the grid) for one (out, in) weight."""
    w = weight.detach().float()
    h = stats.hessian().double().to(w.device)
    mag = stats.abs_mean().to(w.device)
    best, errors = None, []
    for k in range(grid):
        alpha = k / grid
        s = input_scale(mag, alpha)
        parts = quantize_weight(w * s, cfg)
        parts[SCALE_PART] = s
        err = _error(decode(parts, w.shape, cfg) - w, h)
        errors.append(err)
        if best is None or err < best[0]:  # strictly: ties keep the smaller alpha (RTN first)
            best = (err, alpha, parts)
    return best[1], best[2], errors


@register("quantize.awq", AWQConfig, needs="calibration", models=("mlp", "encoder", "decoder"),
          example=lambda: AWQConfig(num_batches=1, batch_size=8, grid=4))
def awq(model: nn.Module, cfg: AWQConfig, task) -> AWQModel:
    """AWQ: activation-aware weight-only quantization of Linear layers (searched input scales; calibration data)."""
    wcfg = cfg.weight_config()

    def encode(name: str, layer: nn.Linear, stats: InputStats) -> dict[str, torch.Tensor]:
        alpha, parts, errors = awq_search(layer.weight, stats, wcfg, cfg.grid)
        if log.isEnabledFor(logging.INFO):
            log.info("quantize.awq %s: alpha %.2f, output error %.4g of round-to-nearest's", name, alpha,
                     errors[int(round(alpha * cfg.grid))] / errors[0] if errors[0] > 0 else 1.0)
        layer.weight.copy_(decode(parts, layer.weight.shape, wcfg).to(layer.weight.dtype))
        return parts

    parts = quantize_calibrated(model, cfg, task, encode, hessian=True)
    return AWQModel(model.eval(), wcfg, parts)


def load_awq(model: nn.Module, tensors: dict[str, torch.Tensor], cfg: AWQConfig) -> AWQModel:
    """Rebuild an AWQModel from ``storage_tensors()`` (e.g. after deploy.storage.load_compact) into
    ``model``, a float model of the same architecture (its values are overwritten)."""
    suffix = f".weight.{SCALE_PART}"
    scales = {k[:-len(suffix)]: t for k, t in tensors.items() if k.endswith(suffix)}
    wcfg = cfg.weight_config()
    base = load_weight_only(model, {k: t for k, t in tensors.items() if not k.endswith(suffix)}, wcfg)
    if set(scales) != set(base.parts):
        raise ArtifactError(f"the stored tensors are not quantize.awq's: layers with codes {sorted(base.parts)[:5]}, "
                            f"with input scales {sorted(scales)[:5]}: load them with the loader of the technique "
                            "that saved them")
    with torch.no_grad():
        for name, parts in base.parts.items():
            w = model.get_submodule(name).weight
            if scales[name].shape != (w.shape[1],):
                raise ArtifactError(f"{name}{suffix} has shape {tuple(scales[name].shape)}, the layer {w.shape[1]} "
                                    "inputs: load them into the architecture they were saved from")
            parts[SCALE_PART] = scales[name]
            w.copy_(decode(parts, w.shape, wcfg).to(w.dtype))
    return AWQModel(model.eval(), wcfg, base.parts)
