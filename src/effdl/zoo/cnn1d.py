"""The MNIST-1D paper's CNN (Greydanus 2020): three stride-2 convs of 25 channels, then a linear head."""
from __future__ import annotations

import torch.nn as nn

from .layers import Ops, check_classes, check_width, out_features, scaled


def mnist1d_cnn(*, input_shape: tuple, num_classes: int, width: float = 1.0) -> nn.Sequential:
    """Conv(k5, s2, p1) -> ReLU, three times, Flatten, Linear. 1-D for (C, L) inputs; the same
    stack with 2-D convs for images."""
    ops = Ops("mnist1d_cnn", input_shape)
    check_classes("mnist1d_cnn", num_classes)
    check_width("mnist1d_cnn", width)
    c = scaled(25, width)
    layers: list[nn.Module] = []
    size, cin = min(ops.spatial), ops.in_channels
    for _ in range(3):
        pad = 1 if size >= 3 else 2  # the paper's padding 1, widened only where a map would vanish
        layers += [ops.conv(cin, c, 5, stride=2, padding=pad), nn.ReLU()]
        size, cin = (size + 2 * pad - 5) // 2 + 1, c
    features = nn.Sequential(*layers, nn.Flatten())
    return nn.Sequential(*features, nn.Linear(out_features(features, input_shape), num_classes))
