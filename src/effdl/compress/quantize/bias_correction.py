"""Empirical bias correction (Nagel et al. 2019, "Data-Free Quantization", section 4.2).

Rounding the weights to int8 shifts each output channel's mean: E[W_q x] - E[W x] = E[(W_q - W) x]
is not zero when the inputs x have a non-zero mean (ReLU outputs always do). Measuring that shift
per output channel on real calibration batches and subtracting it from the bias removes the
systematic part of the weight-quantization error. The weights are untouched, so the int8 weights
(and their scales) stay exactly what they were.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _apply_weight(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``layer``'s linear map with another weight and no bias (stride, padding, groups kept)."""
    if isinstance(layer, _CONVS):
        return layer._conv_forward(x, weight, None)
    return F.linear(x, weight)


def _channel_mean(y: torch.Tensor, conv: bool) -> tuple[torch.Tensor, int]:
    """Sum over every dim but the channel one (1 for convs, last for Linear) and the count."""
    dims = [0, *range(2, y.dim())] if conv else list(range(y.dim() - 1))
    channels = y.shape[1] if conv else y.shape[-1]
    return y.sum(dim=dims, dtype=torch.float64), y.numel() // channels


@torch.no_grad()
def correct_bias(model: nn.Module, layers: list[str], calibration: list[torch.Tensor],
                 dequantize: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Subtract E[(dequantize(W) - W) x] from the bias of each named layer, in place.

    ``x`` are the layer's inputs in the float model on ``calibration``; a layer without bias gets
    one. Returns the per-channel shift removed from each layer (for inspection and tests).
    """
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    errors = {name: dequantize(model.get_submodule(name).weight.detach().float())
              - model.get_submodule(name).weight.detach().float() for name in layers}

    def hook(name: str):
        def fn(module, args, output):
            shift = _apply_weight(module, args[0].float(), errors[name])
            s, n = _channel_mean(shift, isinstance(module, _CONVS))
            sums[name] = sums.get(name, 0) + s
            counts[name] = counts.get(name, 0) + n
        return fn

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in layers]
    was = model.training
    model.eval()
    try:
        for x in calibration:
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    shifts = {}
    for name in layers:
        if name not in counts:  # never reached on the calibration data: nothing measured
            continue
        layer = model.get_submodule(name)
        shift = (sums[name] / counts[name]).to(layer.weight.dtype)
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0], dtype=layer.weight.dtype))
        layer.bias.sub_(shift)
        shifts[name] = shift
    return shifts
