"""AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization").

Rounding each weight to the nearest int8 level is not what minimises a layer's output error. Per
layer, AdaRound learns for every weight whether to round down or up: w~ = s * clamp(floor(w / s)
+ h(V), qmin, qmax) with the rectified sigmoid h(V) = clamp(sigmoid(V) (zeta - gamma) + gamma, 0, 1)
(zeta = 1.1, gamma = -0.1), minimising ||W~ x - W x||^2 on the layer's real calibration inputs
plus lambda * sum(1 - |2 h(V) - 1|^beta), whose beta is annealed from 20 to 2 so h ends at 0 or 1.

The scale ``s`` is effdl's symmetric int8 scale (max|w| / 127 per channel or per tensor) and the
largest weight of each channel keeps nearest rounding, so the result, written back as the
dequantized float ``q * s``, re-quantizes to exactly the learned ints in every runtime (the
observers recompute the same scale from it).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .bias_correction import _apply_weight
from .ptq import WEIGHT_QMAX, WEIGHT_QMIN, quantize_weight

ZETA, GAMMA = 1.1, -0.1


def _h(v: torch.Tensor) -> torch.Tensor:
    return (torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def _init_v(frac: torch.Tensor) -> torch.Tensor:
    """V with h(V) = frac (the soft start is the float weight itself)."""
    frac = frac.clamp(1e-4, 1 - 1e-4)
    return -torch.log((ZETA - GAMMA) / (frac - GAMMA) - 1)


def layer_inputs(model: nn.Module, name: str, calibration: list[torch.Tensor]) -> torch.Tensor:
    """The inputs the float model feeds layer ``name`` on the calibration batches, concatenated."""
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(name).register_forward_hook(lambda m, a, o: seen.append(a[0].detach().float()))
    try:
        with torch.no_grad():
            for x in calibration:
                model(x)
    finally:
        handle.remove()
    return torch.cat(seen)


def adaround_weight(layer: nn.Module, inputs: torch.Tensor, granularity: str, *, iterations: int = 500,
                    reg: float = 0.01, batch_size: int = 32, lr: float = 1e-2, warmup: float = 0.2,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Learned (int8 weight, scale) of one Conv/Linear layer for ``inputs`` (its real inputs)."""
    w = layer.weight.detach().float()
    scale = quantize_weight(w, granularity)[1].reshape((-1,) + (1,) * (w.dim() - 1))
    ws = w / scale
    base = torch.floor(ws)
    # the channel's largest weight maps to +-127 exactly: keep it nearest so the scale survives
    fixed = ws.abs() >= WEIGHT_QMAX - 1e-3
    v = _init_v(ws - base).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        target_all = _apply_weight(layer, inputs, w)
    start = int(warmup * iterations)
    for it in range(iterations):
        idx = torch.randint(0, inputs.shape[0], (min(batch_size, inputs.shape[0]),), generator=gen)
        x, target = inputs[idx], target_all[idx]
        soft = torch.where(fixed, torch.round(ws), base + _h(v)).clamp(WEIGHT_QMIN, WEIGHT_QMAX) * scale
        loss = F.mse_loss(_apply_weight(layer, x, soft), target)
        if it >= start:  # rounding term only after a warm-up of pure reconstruction
            beta = 2 + 18 * 0.5 * (1 + math.cos(math.pi * (it - start) / max(1, iterations - start)))
            loss = loss + reg * (1 - (2 * _h(v) - 1).abs().pow(beta)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        q = torch.where(fixed, torch.round(ws), base + (v >= 0).float()).clamp(WEIGHT_QMIN, WEIGHT_QMAX)
    return q.to(torch.int8), scale.reshape(-1)


@torch.no_grad()
def adaround(model: nn.Module, layers: list[str], calibration: list[torch.Tensor], granularity: str,
             iterations: int = 500) -> dict[str, torch.Tensor]:
    """Replace each named layer's weight by its AdaRounded dequantized value, in place, layer by
    layer in the given order (inputs come from the float model). Returns the learned int8 weights."""
    out = {}
    for name in layers:
        layer = model.get_submodule(name)
        x = layer_inputs(model, name, calibration)
        with torch.enable_grad():
            q, scale = adaround_weight(layer, x, granularity, iterations=iterations)
        layer.weight.copy_((q.float() * scale.reshape((-1,) + (1,) * (q.dim() - 1))).to(layer.weight.dtype))
        out[name] = q
    return out


__all__ = ["adaround", "adaround_weight", "layer_inputs"]
