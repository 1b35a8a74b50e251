"""Multi-layer perceptron; the default (300, 100) is LeNet-300-100 (LeCun et al. 1998)."""
from __future__ import annotations

import math

import torch.nn as nn

from ..core.errors import ModelError
from .layers import check_classes, check_shape, check_width, scaled


def mlp(*, input_shape: tuple, num_classes: int, hidden=(300, 100), width: float = 1.0) -> nn.Sequential:
    """Flatten -> [Linear -> ReLU] per hidden size (times ``width``) -> Linear."""
    shape = check_shape("mlp", input_shape)
    check_classes("mlp", num_classes)
    check_width("mlp", width)
    if isinstance(hidden, int):
        hidden = (hidden,)
    if not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden):
        raise ModelError(f"mlp: hidden must be a sequence of positive ints such as (300, 100), got {hidden!r}")
    layers: list[nn.Module] = [nn.Flatten()]
    prev = math.prod(shape)
    for h in hidden:
        h = scaled(h, width)
        layers += [nn.Linear(prev, h), nn.ReLU()]
        prev = h
    layers.append(nn.Linear(prev, num_classes))
    return nn.Sequential(*layers)
