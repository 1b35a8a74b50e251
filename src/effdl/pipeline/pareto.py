"""Pareto frontier of quality vs a footprint (lower is better); the quality's direction is given."""
from __future__ import annotations

from typing import Sequence


def pareto_front(points: Sequence[tuple[str, float, float]], higher_is_better: bool = True) -> list[str]:
    """Ids of the non-dominated points among (id, quality, cost).

    A point is dominated when another is at least as good on both axes and strictly better on one;
    "good" quality is high, or low when ``higher_is_better`` is False (perplexity, loss).
    Exact duplicates both stay. Returned in order of increasing cost.
    """
    sign = 1.0 if higher_is_better else -1.0
    pts = [(pid, sign * q, c) for pid, q, c in points]  # compare as "larger is better" either way
    front = []
    for pid, q, c in pts:
        dominated = any(
            (q2 >= q and c2 <= c) and (q2 > q or c2 < c) for pid2, q2, c2 in pts if pid2 != pid
        )
        if not dominated:
            front.append((c, -q, pid))
    return [pid for _, _, pid in sorted(front)]
