"""Erdos-Renyi(-Kernel) per-layer densities for sparse training (Evci et al. 2020, RigL, sec. 3).

Layer l gets density d_l = eps * s_l with s_l = sum(dims) / prod(dims) (ERK counts the kernel dims,
plain Erdos-Renyi only the two channel dims), so small/thin layers stay denser than big ones. eps is
solved so that sum_l d_l * n_l = density * sum_l n_l; a layer whose d_l would exceed 1 is made dense
and eps is solved again over the others, until no layer overflows.
"""
from __future__ import annotations

import math

from ...core.errors import ConfigError


def _score(shape: tuple[int, ...], erdos_renyi_kernel: bool) -> float:
    dims = tuple(int(d) for d in shape)
    if not erdos_renyi_kernel and len(dims) > 2:
        dims = dims[:2]  # out, in channels only: the kernel is ignored by plain ER
    return sum(dims) / math.prod(dims)


def erk_densities(
    shapes: dict[str, tuple[int, ...]], density: float, *, erdos_renyi_kernel: bool = True
) -> dict[str, float]:
    """Per-layer densities whose non-zero total is ``density`` x all weights.

    ``shapes`` maps layer name -> weight shape (out, in, *kernel). Returns name -> density in (0, 1].
    """
    if not shapes:
        raise ConfigError("erk_densities needs at least one layer shape")
    if not (0.0 < density <= 1.0):
        raise ConfigError(f"density must be in (0, 1], got {density!r} (density = 1 - sparsity)")
    for name, shape in shapes.items():
        if len(shape) < 2 or any(int(d) < 1 for d in shape):
            raise ConfigError(f"layer {name!r} has weight shape {tuple(shape)}: ERK needs >= 2 positive dims")
    sizes = {n: math.prod(int(d) for d in s) for n, s in shapes.items()}
    scores = {n: _score(s, erdos_renyi_kernel) for n, s in shapes.items()}
    target = density * sum(sizes.values())
    dense: set[str] = set()
    eps = 1.0
    while True:
        free = [n for n in shapes if n not in dense]
        budget = target - sum(sizes[n] for n in dense)
        weight = sum(scores[n] * sizes[n] for n in free)
        if not free or weight <= 0:
            break
        eps = budget / weight
        over = [n for n in free if eps * scores[n] > 1.0]
        if not over:
            break
        # Only the largest overflow is fixed per pass: the re-solved eps may pull others below 1.
        dense.add(max(over, key=lambda n: scores[n]))
    out = {}
    for n in shapes:
        out[n] = 1.0 if n in dense else min(1.0, eps * scores[n])
    return out


def nonzeros_per_layer(shapes: dict[str, tuple[int, ...]], densities: dict[str, float]) -> dict[str, int]:
    """Integer non-zero counts per layer (at least 1) whose sum is the rounded total density budget."""
    sizes = {n: math.prod(int(d) for d in s) for n, s in shapes.items()}
    raw = {n: densities[n] * sizes[n] for n in shapes}
    total = int(round(sum(raw.values())))
    counts = {n: max(1, min(sizes[n], int(math.floor(raw[n])))) for n in shapes}
    # Largest-remainder rounding so the integer total hits the budget exactly.
    order = sorted(shapes, key=lambda n: raw[n] - math.floor(raw[n]), reverse=True)
    i = 0
    while sum(counts.values()) < total and i < 10 * len(order):
        n = order[i % len(order)]
        if counts[n] < sizes[n]:
            counts[n] += 1
        i += 1
    return counts
