"""MobileNetV2 (Sandler et al. 2018) cut down for small inputs (28x28, 8x8, 1-D signals)."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..core.errors import ModelError
from .layers import Ops, check_classes, check_width, kaiming_init, scaled

# (expansion t, output channels c, repeats n, stride s) as in the paper's Table 2, first five rows
# and fewer repeats: small inputs need neither the 7x7 stages nor 1280 head channels.
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 2, 2), (6, 96, 1, 1))
HEAD = 256


def conv_bn(ops: Ops, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [ops.conv(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False), ops.bn(cout)]
    if act:
        layers.append(nn.ReLU6())
    return kaiming_init(nn.Sequential(*layers))


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear projection; identity added when shapes match."""

    def __init__(self, ops: Ops, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        layers = [] if expansion == 1 else [conv_bn(ops, cin, hidden, 1)]
        layers += [conv_bn(ops, hidden, hidden, 3, stride, groups=hidden), conv_bn(ops, hidden, cout, 1, act=False)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout  # fixed at construction: no branching on data

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.residual else out


def mobilenetv2(*, input_shape: tuple, num_classes: int, width: float = 1.0, expansion: int = 6) -> nn.Sequential:
    """Stem 3x3 conv, inverted-residual stages, 1x1 head conv, global pool, linear.

    The stem strides by 2 only for inputs of 16 or more, and a stage's stride 2 is kept only while
    the map is at least 4 wide: 28x28 runs at 14, 7, 4 and ends at 2x2; 8x8 runs at 8, 4 and ends
    at 2x2; nothing vanishes. Channels are rounded to multiples of 8 after ``width``.
    """
    ops = Ops("mobilenetv2", input_shape)
    check_classes("mobilenetv2", num_classes)
    check_width("mobilenetv2", width)
    if isinstance(expansion, bool) or not isinstance(expansion, int) or expansion < 1:
        raise ModelError(f"mobilenetv2: expansion must be an int >= 1, got {expansion!r}")
    cin = scaled(32, width, 8)
    size = min(ops.spatial)
    stem_stride = 2 if size >= 16 else 1
    layers: list[nn.Module] = [conv_bn(ops, ops.in_channels, cin, 3, stem_stride)]
    size = (size - 1) // stem_stride + 1
    for t, c, n, s in STAGES:
        cout = scaled(c, width, 8)
        for i in range(n):
            stride = s if i == 0 and size >= 4 else 1
            layers.append(InvertedResidual(ops, cin, cout, stride, expansion if t > 1 else 1))
            size = (size - 1) // stride + 1
            cin = cout
    head = scaled(HEAD, max(width, 1.0), 8)  # like the paper, the head is never narrowed
    layers += [conv_bn(ops, cin, head, 1), ops.avg_pool(1), nn.Flatten(), nn.Linear(head, num_classes)]
    return kaiming_init(nn.Sequential(*layers))
