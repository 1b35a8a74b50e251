"""Per-output-row pruning: each row of a (out, in) weight is its own comparison group.

Wanda and SparseGPT compare a weight only with the other weights feeding the same output unit
(Sun et al. 2023 found per-output groups beat per-layer ones for LLMs), so every row loses the
same share of its weights. A layer whose pruned count K is not a multiple of its rows gives
K // rows to every row and one more to the K % rows rows where that extra weight costs least
(the lowest next score), so the layer's count is exactly K and the choice still follows the
scores.

Scores are "remove first when low"; ``-inf`` marks weights that must go first (already zero).
Ties are broken by position (stable sorts), so masks are deterministic.
"""
from __future__ import annotations

import torch

__all__ = ["prune_lowest_per_row", "split_counts"]


def prune_lowest_per_row(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool (rows, cols), True = pruned: ``k`` weights in all, the lowest of each row, spread over
    the rows as evenly as the count allows (see the module docstring)."""
    rows, cols = scores.shape
    k = max(0, min(int(k), rows * cols))
    pruned = torch.zeros(rows, cols, dtype=torch.bool, device=scores.device)
    if k == 0:
        return pruned
    values, order = torch.sort(scores, dim=1, stable=True)
    base, extra = divmod(k, rows)
    counts = torch.full((rows,), base, dtype=torch.long, device=scores.device)
    if extra:
        # the rows whose next-cheapest weight scores lowest take the remainder
        cheapest = torch.sort(values[:, base], stable=True).indices[:extra]
        counts[cheapest] += 1
    ranked = torch.arange(cols, device=scores.device).unsqueeze(0) < counts.unsqueeze(1)
    return pruned.scatter_(1, order, ranked)


def split_counts(total: int, widths: list[int]) -> list[int]:
    """Split ``total`` over consecutive pieces of ``widths`` in proportion to their widths, by
    rounding the running sum: every piece gets its share to within one and the parts add up to
    ``total`` exactly (SparseGPT's column blocks of one layer)."""
    whole = sum(widths)
    out, done, seen = [], 0, 0
    for w in widths:
        seen += w
        upto = round(total * seen / whole) if whole else 0
        out.append(upto - done)
        done = upto
    return out
