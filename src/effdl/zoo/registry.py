"""The zoo's name -> builder table, and ``build`` with checked knobs."""
from __future__ import annotations

import inspect
from functools import partial
from typing import Any, Callable, NamedTuple

import torch.nn as nn

from ..core.errors import ModelError, suggest
from .cnn1d import mnist1d_cnn
from .lenet import lenet5
from .mlp import mlp
from .mobilenet import mobilenetv2
from .resnet import resnet
from .transformer import encoder


class ZooEntry(NamedTuple):
    factory: Callable[..., nn.Module]
    description: str
    knobs: dict[str, Any]  # knob name -> default


def _entry(factory: Callable[..., nn.Module], description: str) -> ZooEntry:
    """Knobs and their defaults are read off the builder's keyword-only signature, so the listing
    and the checks can never disagree with the code."""
    params = inspect.signature(factory).parameters.values()
    knobs = {p.name: p.default for p in params
             if p.kind is p.KEYWORD_ONLY and p.name not in ("input_shape", "num_classes")}
    return ZooEntry(factory, description, knobs)


def _fixed_depth(depth: int):
    def build_resnet(*, input_shape: tuple, num_classes: int, width: float = 1.0, shortcut: str = "B") -> nn.Module:
        return resnet(input_shape=input_shape, num_classes=num_classes, depth=depth, width=width, shortcut=shortcut)

    return build_resnet


ZOO: dict[str, ZooEntry] = {
    "mlp": _entry(mlp, "MLP; default hidden (300, 100) is LeNet-300-100; flattens any input"),
    "lenet300_100": _entry(partial(mlp, hidden=(300, 100)), "LeNet-300-100 (LeCun 1998), an alias of mlp"),
    "lenet5": _entry(lenet5, "LeNet-5: conv 6@5x5, conv 16@5x5, fc 120-84 (61,706 params on 28x28)"),
    "resnet": _entry(resnet, "ResNet-CIFAR with a depth knob (6n+2), widths 16/32/64"),
    "resnet8": _entry(_fixed_depth(8), "ResNet-8 (CIFAR family), widths 16/32/64"),
    "resnet20": _entry(_fixed_depth(20), "ResNet-20 (CIFAR family), widths 16/32/64"),
    "mobilenetv2": _entry(mobilenetv2, "MobileNetV2-style inverted residuals with ReLU6, sized for small inputs"),
    "encoder": _entry(encoder, "BERT/MiniLM-shaped post-LN encoder over patch tokens (2 layers, 4 heads, dim 64)"),
    "mnist1d_cnn": _entry(mnist1d_cnn, "the MNIST-1D paper's CNN: 3 conv1d of 25 channels, k5 s2"),
}


def build(name: str, *, input_shape: tuple, num_classes: int, **knobs) -> nn.Module:
    """A freshly initialised zoo model for ``input_shape`` (no batch dim) and ``num_classes``."""
    entry = ZOO.get(name)
    if entry is None:
        raise ModelError(f"unknown zoo model {name!r}: use one of {sorted(ZOO)}." + suggest(name, ZOO))
    for k in knobs:
        if k not in entry.knobs:
            raise ModelError(f"zoo model {name!r} has no knob {k!r}; its knobs are {sorted(entry.knobs)}."
                             + suggest(k, entry.knobs))
    return entry.factory(input_shape=input_shape, num_classes=num_classes, **knobs)
