"""Pareto frontier of quality (higher is better) vs a footprint (lower is better)."""
from __future__ import annotations

from typing import Sequence


def pareto_front(points: Sequence[tuple[str, float, float]]) -> list[str]:
    """Ids of the non-dominated points among (id, quality, cost).

    A point is dominated when another is at least as good on both axes and strictly better on one.
    Exact duplicates both stay. Returned in order of increasing cost.
    """
    front = []
    for pid, q, c in points:
        dominated = any(
            (q2 >= q and c2 <= c) and (q2 > q or c2 < c) for pid2, q2, c2 in points if pid2 != pid
        )
        if not dominated:
            front.append((c, -q, pid))
    return [pid for _, _, pid in sorted(front)]
