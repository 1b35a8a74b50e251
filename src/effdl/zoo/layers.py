"""Shared pieces of the zoo: dimension-generic layer choice and knob checks.

Every conv model works on 1-D signals (C, L) and images (C, H, W): the layer classes are picked
once at construction from the input rank, so forward has no Python branching on data.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..core.errors import ModelError


class Ops:
    """Conv / BatchNorm / pooling classes for a 1-D or 2-D input."""

    def __init__(self, model: str, input_shape: tuple) -> None:
        shape = check_shape(model, input_shape, ranks=(2, 3))
        two_d = len(shape) == 3
        self.in_channels = shape[0]
        self.spatial = shape[1:]
        self.conv = nn.Conv2d if two_d else nn.Conv1d
        self.bn = nn.BatchNorm2d if two_d else nn.BatchNorm1d
        self.max_pool = nn.MaxPool2d if two_d else nn.MaxPool1d
        self.avg_pool = nn.AdaptiveAvgPool2d if two_d else nn.AdaptiveAvgPool1d


def check_shape(model: str, input_shape, ranks: tuple[int, ...] | None = None) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise ModelError(f"{model}: input_shape must be a tuple of ints such as (1, 28, 28), got {input_shape!r}") from None
    if not shape or min(shape) < 1:
        raise ModelError(f"{model}: input_shape {shape} must be non-empty with positive sizes")
    if ranks is not None and len(shape) not in ranks:
        raise ModelError(f"{model}: input_shape {shape} must be (channels, length) or (channels, height, width) "
                         "without the batch dimension")
    return shape


def check_classes(model: str, num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ModelError(f"{model}: num_classes must be an int >= 2, got {num_classes!r}")
    return num_classes


def check_width(model: str, width) -> float:
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not math.isfinite(width) or width <= 0:
        raise ModelError(f"{model}: the width multiplier must be a number > 0, got {width!r}")
    return float(width)


def scaled(channels: int, width: float, divisor: int = 1) -> int:
    """``channels * width`` rounded to a multiple of ``divisor`` (at least one unit of it)."""
    return max(divisor, int(round(channels * width / divisor)) * divisor)


def out_features(body: nn.Module, input_shape: tuple) -> int:
    """Flattened size of ``body``'s output, from one dry run at construction time."""
    was = body.training
    body.eval()  # BatchNorm must not update statistics (or fail on batch 1) during the dry run
    try:
        with torch.no_grad():
            n = body(torch.zeros(1, *input_shape)).numel()
    except RuntimeError as exc:
        raise ModelError(f"input_shape {tuple(input_shape)} is too small for this model: {str(exc).splitlines()[0]}") from None
    finally:
        body.train(was)
    return n


def kaiming_init(model: nn.Module) -> nn.Module:
    """He-normal (fan-out) conv weights: PyTorch's default init shrinks activations ~3x per
    layer, which leaves deep BN-free paths (MobileNet's linear bottlenecks) near zero at start."""
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model
