"""ResNet for small inputs (He et al. 2016, section 4.2 "CIFAR"): 6n+2 layers, widths 16/32/64."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import ModelError
from .layers import Ops, check_classes, check_width, kaiming_init, scaled

SHORTCUTS = ("A", "B")


class PadShortcut(nn.Module):
    """Option A: subsample by ``stride`` and zero-pad the new channels (no parameters)."""

    def __init__(self, stride: int, extra: int, spatial_dims: int) -> None:
        super().__init__()
        self.stride = stride
        self.two_d = spatial_dims == 2
        self.pad = (0, 0) * spatial_dims + (extra // 2, extra - extra // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride] if self.two_d else x[:, :, :: self.stride]
        return F.pad(x, self.pad)


class BasicBlock(nn.Module):
    def __init__(self, ops: Ops, cin: int, cout: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = ops.conv(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = ops.bn(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = ops.conv(cout, cout, 3, padding=1, bias=False)
        self.bn2 = ops.bn(cout)
        self.relu2 = nn.ReLU()
        if stride == 1 and cin == cout:
            self.shortcut = nn.Identity()
        elif shortcut == "B":  # projection: 1x1 conv + BN
            self.shortcut = nn.Sequential(ops.conv(cin, cout, 1, stride=stride, bias=False), ops.bn(cout))
        else:
            self.shortcut = PadShortcut(stride, cout - cin, len(ops.spatial))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, ops: Ops, num_classes: int, n: int, width: float, shortcut: str) -> None:
        super().__init__()
        widths = [scaled(c, width) for c in (16, 32, 64)]
        self.conv1 = ops.conv(ops.in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = ops.bn(widths[0])
        self.relu = nn.ReLU()
        blocks, cin = [], widths[0]
        for stage, cout in enumerate(widths):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(ops, cin, cout, stride, shortcut))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.pool = ops.avg_pool(1)  # adaptive: any input size
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(self.flatten(self.pool(x)))


def resnet(*, input_shape: tuple, num_classes: int, depth: int = 20, width: float = 1.0, shortcut: str = "B") -> ResNet:
    """ResNet-``depth`` (depth = 6n + 2: 8, 14, 20, 32, 44, 56, 110); ``shortcut`` "B" projects
    with a 1x1 conv where shapes change, "A" zero-pads (the paper's CIFAR choice)."""
    ops = Ops("resnet", input_shape)
    check_classes("resnet", num_classes)
    check_width("resnet", width)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ModelError(f"resnet: depth must be 6n+2 with n >= 1 (8, 14, 20, 32, ...), got {depth!r}")
    if shortcut not in SHORTCUTS:
        raise ModelError(f"resnet: shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
    return ResNet(ops, num_classes, (depth - 2) // 6, width, shortcut)
