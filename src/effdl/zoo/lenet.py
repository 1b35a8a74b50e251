"""LeNet-5 (LeCun et al. 1998) with ReLU and max pooling, for any input size and rank."""
from __future__ import annotations

import torch.nn as nn

from .layers import Ops, check_classes, check_width, out_features, scaled


def lenet5(*, input_shape: tuple, num_classes: int, width: float = 1.0) -> nn.Sequential:
    """conv 6@5x5 -> pool -> conv 16@5x5 -> pool -> fc 120 -> fc 84 -> classes.

    conv1 pads by 2, so 28x28 MNIST becomes the original 32x32 geometry (16x5x5 = 400 features).
    Inputs too small for an unpadded conv2 (under 10 after the first pool) pad it too, and a
    pooling step is skipped once the map is a single pixel, so 8x8 digits and 1-D signals work.
    """
    ops = Ops("lenet5", input_shape)
    check_classes("lenet5", num_classes)
    check_width("lenet5", width)
    c1, c2, f1, f2 = (scaled(c, width) for c in (6, 16, 120, 84))
    size = min(ops.spatial)
    layers: list[nn.Module] = [ops.conv(ops.in_channels, c1, 5, padding=2), nn.ReLU()]
    if size >= 2:
        layers.append(ops.max_pool(2))
        size //= 2
    pad2 = 0 if size >= 10 else 2
    layers += [ops.conv(c1, c2, 5, padding=pad2), nn.ReLU()]
    size = size + 2 * pad2 - 4
    if size >= 2:
        layers.append(ops.max_pool(2))
    layers.append(nn.Flatten())
    features = nn.Sequential(*layers)
    n = out_features(features, input_shape)
    return nn.Sequential(
        *features,
        nn.Linear(n, f1), nn.ReLU(),
        nn.Linear(f1, f2), nn.ReLU(),
        nn.Linear(f2, num_classes),
    )
