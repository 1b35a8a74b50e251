"""User data sets: ``path/to/file.py:factory`` where ``factory()`` returns (train, val, test)."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset, TensorDataset

from ..core.errors import DataError
from ..core.io import call_factory
from .splits import Splits


def is_factory_spec(name: str) -> bool:
    file, sep, fn = name.rpartition(":")
    return bool(sep) and file.endswith(".py") and bool(fn)


def _labels(ds: Dataset) -> torch.Tensor:
    if isinstance(ds, TensorDataset) and len(ds.tensors) >= 2:
        return ds.tensors[1]
    return torch.as_tensor([int(ds[i][1]) for i in range(len(ds))])


def _check_split(spec: str, split: str, ds) -> tuple:
    try:
        n = len(ds)
        first = ds[0] if n else None
    except Exception as exc:
        raise DataError(f"{spec}: the {split} split is not a torch Dataset ({type(exc).__name__}: {exc}); "
                        "return map-style datasets such as TensorDataset") from None
    if n == 0:
        raise DataError(f"{spec}: the {split} split is empty: return non-empty datasets")
    if not (isinstance(first, (tuple, list)) and len(first) == 2 and isinstance(first[0], torch.Tensor)):
        raise DataError(f"{spec}: items of the {split} split must be (x tensor, y label) pairs, "
                        f"got {type(first).__name__}")
    y = _labels(ds)
    if y.is_floating_point() or y.ndim != 1 or int(y.min()) < 0:
        raise DataError(f"{spec}: labels of the {split} split must be non-negative integer class ids")
    return tuple(first[0].shape), int(y.max()) + 1


def load_factory_data(spec: str, seed: int = 0) -> Splits:
    out = call_factory(spec, "data factory", DataError)
    if not (isinstance(out, (tuple, list)) and len(out) == 3):
        raise DataError(f"{spec}: the factory must return (train, val, test) datasets, got {type(out).__name__}")
    checked = [_check_split(spec, s, ds) for s, ds in zip(("train", "val", "test"), out)]
    shapes = {shape for shape, _ in checked}
    if len(shapes) != 1:
        raise DataError(f"{spec}: the splits have different input shapes {sorted(shapes)}: make them equal")
    return Splits(spec, out[0], out[1], out[2], max(k for _, k in checked), shapes.pop(),
                  f"user data from {spec}", seed)
