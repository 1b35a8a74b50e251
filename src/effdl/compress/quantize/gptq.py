"""quantize.gptq: weight-only quantization with error compensation (Frantar, Ashkboos, Hoefler &
Alistarh 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers").

Each Linear weight W (out, in) is quantized so that its output on the calibration inputs X changes
least: ||W X^T - Q X^T||_F^2, whose Hessian in every output row is H = 2 X^T X / rows
(layer_stats). The columns are quantized one at a time; rounding column j leaves an error that
the row's not-yet-quantized weights absorb by Optimal Brain Surgeon's update
w_{j+1:} -= (w_j - q_j) / [H^-1]_jj * [H^-1]_{j, j+1:}, with H^-1 the inverse Hessian of the
columns not yet quantized. Sweeping left to right, those inverses are all rows of one matrix, the
upper Cholesky factor U of H^-1, so one factorisation serves the whole sweep and every row.

- Grid: quantize.weights' uniform grid and storage (calibrated_weights.py); only the codes (and,
  per group, the scales) differ from round-to-nearest. Per channel, the scales are RTN's, from
  the original weights. Per group, a group's (scale, zero point) is computed by the same min/max
  rule from the group's *current* weights (already shifted by the errors of the columns quantized
  before) when the sweep first reaches one of its columns; without ``act_order`` that is the
  group's first column, as in the paper. With ``act_order`` it is whichever of its columns comes
  first in the new order, so the groups stay the stored contiguous groups of the original column
  order (no column index to store, unlike the paper's reordered groups) while their scales still
  see the compensated weights.
- act_order: columns are swept in order of decreasing H_jj (the inputs with the most energy
  first, while many columns remain to absorb their errors); codes are stored in the original
  order.
- Damping: ``damping`` times the mean of diag(H) is added to the diagonal before factorising (1%,
  the paper's), which keeps H^-1 stable when X^T X is near singular.
- Dead inputs (a feature that is zero on every calibration row, H_jj = 0): H_jj is set to 1 so the
  factorisation exists; their weights are rounded to nearest and neither pass on nor receive any
  error (the data say nothing about them). The paper zeroes them instead; rounding keeps the layer
  right on inputs where the feature is not zero.
- Blocks: columns are taken ``block_size`` at a time (the paper's lazy batched updates): within a
  block the updates are applied column by column, and the block's updates reach the later columns
  in one matrix product. The result is the column-by-column one (up to float rounding); a group
  scale needed before a block's updates are applied is taken from weights brought up to date.

The layers, the calibration data and the stage order (sequential by default; ``sequential=False``
is one forward pass with hooks on the float model) are calibrated_weights.py's. The result is a
``WeightOnlyModel`` whose config is ``cfg.weight_config()``: it reloads with ``load_weight_only``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn as nn
from pydantic import Field

from ...core.errors import ConfigError
from ...core.registry import register
from ..layer_stats import InputStats
from ..prune.sparsegpt import _inverse_factor, output_error
from .calibrated_weights import CalibratedWeightsConfig, quantize_calibrated, row_scheme
from .packing import pack
from .scheme import dequantize, qparams, quantize
from .weight_only import WeightOnlyConfig, WeightOnlyModel, dequantize_weight

log = logging.getLogger(__name__)

__all__ = ["GPTQConfig", "GridCodes", "gptq", "gptq_codes", "to_parts"]


class GPTQConfig(CalibratedWeightsConfig):
    """GPTQ: column-by-column rounding with the error spread over the remaining columns (OBS)."""

    damping: float = Field(0.01, gt=0.0, le=1.0, description="added to diag(H) before inverting, as a fraction of its mean")
    block_size: int = Field(128, ge=1, description="columns per lazy-update block (changes speed, not the result)")
    act_order: bool = Field(False, description="sweep the columns by decreasing Hessian diagonal (input energy)")


@dataclass(frozen=True)
class GridCodes:
    """One weight on quantize.weights' uniform grid: codes (out, in) int64 in the original column
    order, scale float32 and zero point int64 of shape (out,) per channel or (out, groups) per group."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor


def to_parts(grid: GridCodes, cfg: WeightOnlyConfig) -> dict[str, torch.Tensor]:
    """The stored parts, laid out as ``weight_only.quantize_weight`` lays them out."""
    parts = {"packed": pack(grid.codes.cpu(), cfg.bits, signed=True), "scale": grid.scale.float().cpu().contiguous()}
    if cfg.mode == "affine":
        parts["zero_point"] = pack(grid.zero_point.cpu(), cfg.bits, signed=True)
    return parts


def _group_members(perm: torch.Tensor, group_size: int, groups: int) -> list[torch.Tensor]:
    """For each stored group, the sweep positions of its columns (ascending)."""
    gid = perm // group_size
    return [torch.nonzero(gid == g).flatten() for g in range(groups)]


def gptq_codes(weight: torch.Tensor, hessian: torch.Tensor, cfg: WeightOnlyConfig, *, block_size: int = 128,
               damping: float = 0.01, act_order: bool = False) -> GridCodes:
    """GPTQ on one (out, in) weight with its input Hessian (in, in); ``cfg`` gives the grid
    (uniform, channel or group). See the module docstring."""
    if cfg.format != "uniform" or cfg.granularity not in ("channel", "group"):
        raise ConfigError(f"GPTQ fits a uniform grid per channel or per group, not format={cfg.format!r}, "
                          f"granularity={cfg.granularity!r}")
    w = weight.detach().float()
    rows, cols = w.shape
    dev = w.device
    if hessian.shape != (cols, cols):
        raise ConfigError(f"the Hessian is {tuple(hessian.shape)}, the weight has {cols} inputs: take both from one layer")
    grouped = cfg.granularity == "group"
    rs = row_scheme(cfg)
    hessian = hessian.to(dev)
    perm = torch.argsort(hessian.diagonal(), descending=True, stable=True) if act_order else torch.arange(cols, device=dev)
    upper, _ = _inverse_factor(hessian[perm][:, perm], damping)
    upper = upper.to(dev, torch.float32)
    w = w[:, perm].clone()  # the sweep runs in this order; codes are put back at the end
    if grouped:
        groups = -(-cols // cfg.group_size)
        members = _group_members(perm, cfg.group_size, groups)
        gid = (perm // cfg.group_size).tolist()
        scale = torch.zeros(rows, groups, device=dev)
        zp = torch.zeros(rows, groups, dtype=torch.int64, device=dev)
        ready = [False] * groups
    else:
        scale, zp = qparams(weight, rs)  # per channel: round-to-nearest's scales
    codes = torch.zeros(rows, cols, dtype=torch.int64, device=dev)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        w1, u1 = w[:, i1:i2].clone(), upper[i1:i2, i1:i2]
        err1 = torch.zeros_like(w1)
        for j in range(i2 - i1):
            if grouped:
                g = gid[i1 + j]
                if not ready[g]:
                    # the group's current weights: in this block w1 is up to date; later columns
                    # still lack this block's updates so far, which are added here
                    pos = members[g]
                    inside, later = pos[pos < i2], pos[pos >= i2]
                    current = torch.cat([w1[:, inside - i1],
                                         w[:, later] - err1[:, :j] @ upper[i1:i1 + j, later]], dim=1)
                    scale[:, g], zp[:, g] = qparams(current, rs)
                    ready[g] = True
                s, z = scale[:, g], zp[:, g]
            else:
                s, z = scale, zp
            col = w1[:, j]
            code = quantize(col, s, z, rs)
            q = dequantize(code, s, z, rs)  # exactly what the stored parts decode to
            e = (col - q) / u1[j, j]
            w1[:, j:] -= e.unsqueeze(1) * u1[j, j:].unsqueeze(0)  # OBS: the row's later weights absorb it
            err1[:, j] = e
            codes[:, i1 + j] = code
        w[:, i2:] -= err1 @ upper[i1:i2, i2:]  # the block's updates reach the later columns at once
    out = torch.empty_like(codes)
    out[:, perm] = codes
    return GridCodes(out, scale, zp)


@register("quantize.gptq", GPTQConfig, needs="calibration", models=("mlp", "encoder", "decoder"),
          example=lambda: GPTQConfig(num_batches=1, batch_size=8, block_size=16))
def gptq(model: nn.Module, cfg: GPTQConfig, task) -> WeightOnlyModel:
    """GPTQ: weight-only quantization of Linear layers with second-order error compensation (calibration data)."""
    wcfg = cfg.weight_config()

    def encode(name: str, layer: nn.Linear, stats: InputStats) -> dict[str, torch.Tensor]:
        h = stats.hessian()
        try:
            grid = gptq_codes(layer.weight, h, wcfg, block_size=cfg.block_size, damping=cfg.damping,
                              act_order=cfg.act_order)
        except ConfigError as exc:
            raise ConfigError(f"quantize.gptq, layer {name!r}: {exc}") from None
        parts = to_parts(grid, wcfg)
        new = dequantize_weight(parts, layer.weight.shape, wcfg)
        if log.isEnabledFor(logging.INFO):  # the error costs one more (out, in) x (in, in) product
            log.info("quantize.gptq %s: relative output error %.4g", name, output_error(layer.weight, new, h))
        layer.weight.copy_(new.to(layer.weight.dtype))
        return parts

    parts = quantize_calibrated(model, cfg, task, encode, hessian=True)
    return WeightOnlyModel(model.eval(), wcfg, parts)
