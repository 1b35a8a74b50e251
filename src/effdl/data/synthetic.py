"""``synthetic:CxHxW`` (or ``synthetic:CxL``): seeded random inputs for latency-only profiling.

Labelled as synthetic everywhere: quality measured on them is meaningless, and `optimize` refuses them.
"""
from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from ..core.errors import DataError
from .splits import Splits

PREFIX = "synthetic:"


def load_synthetic(spec: str, seed: int = 0, num_classes: int = 10) -> Splits:
    dims = spec[len(PREFIX):]
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape) or len(shape) > 4:
        raise DataError(f"{spec!r} is not a valid synthetic shape: write e.g. synthetic:3x32x32 or synthetic:1x40")
    g = torch.Generator().manual_seed(seed)

    def part(n: int) -> TensorDataset:
        return TensorDataset(torch.randn(n, *shape, generator=g), torch.randint(0, num_classes, (n,), generator=g))

    return Splits(
        name=spec, train=part(256), val=part(64), test=part(64), num_classes=num_classes, input_shape=shape,
        description=f"synthetic random inputs of shape {shape}: latency/size only, quality meaningless",
        seed=seed, synthetic=True,
    )
