"""Hypervolume of a measured frontier: the one number that says how much better a set of candidates is.

Points are minimised on every axis; the hypervolume is the volume dominated by the points and
bounded by the reference point (points outside it add nothing). effdl's axes are normalised so
searches of different tasks read alike: the quality drop in units of the goal's allowance
(1.0 = exactly ``max_drop`` lost) and each footprint as a fraction of the baseline's.
"""
from __future__ import annotations

from typing import Sequence

#: the reference point's drop: candidates that lose more than twice the allowance add nothing
REFERENCE_DROP = 2.0
#: the reference point's footprint ratio: only candidates smaller/faster than the baseline count
REFERENCE_RATIO = 1.0


def _front(points: list[tuple[float, ...]]) -> list[tuple[float, ...]]:
    """The non-dominated points (minimisation)."""
    return [p for p in points
            if not any(q != p and all(a <= b for a, b in zip(q, p)) for q in points)]


def hypervolume(points: Sequence[Sequence[float]], reference: Sequence[float]) -> float:
    """Exact hypervolume (minimisation) of ``points`` w.r.t. ``reference``; any number of axes.

    Slices along the first axis and recurses, which is exact and fast enough for the tens to
    hundreds of candidates a search measures.
    """
    ref = tuple(float(r) for r in reference)
    pts = [tuple(float(v) for v in p) for p in points]
    if any(len(p) != len(ref) for p in pts):
        raise ValueError(f"every point needs {len(ref)} coordinates, like the reference point")
    pts = _front([p for p in pts if all(v < r for v, r in zip(p, ref))])
    if not pts:
        return 0.0
    if len(ref) == 1:
        return ref[0] - min(p[0] for p in pts)
    pts.sort(key=lambda p: p[0])
    volume = 0.0
    for i, p in enumerate(pts):
        right = pts[i + 1][0] if i + 1 < len(pts) else ref[0]
        if right > p[0]:  # the slab [p0, right) is dominated by the points seen so far
            volume += (right - p[0]) * hypervolume([q[1:] for q in pts[: i + 1]], ref[1:])
    return volume


def normalised(drop: float, max_drop: float, footprints: Sequence[float], baseline: Sequence[float]) -> tuple[float, ...]:
    """A candidate's point on effdl's hypervolume axes: drop / max_drop, footprint / baseline footprint."""
    return (drop / max_drop, *(f / b for f, b in zip(footprints, baseline)))


def reference_point(n_footprints: int) -> tuple[float, ...]:
    return (REFERENCE_DROP, *([REFERENCE_RATIO] * n_footprints))
