"""Read-only access to typed Results (docs/results-schema.md) for the report.

Every getter tolerates the partial records of failed candidates: a missing, null or non-finite
number reads as ``None`` so that nothing unmeasured is ever drawn or compared.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..pipeline.results import Candidate, Goal, Results

AXES = ("latency", "size")  # the two footprints the frontier is computed over
AXIS_KEY = {"latency": "latency_ms_p50", "size": "size_bytes"}


def number(value: Any) -> float | None:
    """A finite int/float, else None (bools, strings, NaN and inf are not measurements)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class View:
    results: Results
    goal: Goal
    metric: str
    max_drop: float | None
    target: str | None
    candidates: list[Candidate]
    by_id: dict[str, Candidate]
    baseline: Candidate
    chosen: Candidate | None

    def quality(self, cand: Candidate) -> float | None:
        """The reported quality: the test split."""
        return number(cand.quality.get(self.metric))

    @property
    def select_split(self) -> str:
        """The split the frontier and the goal were computed on ('val' or 'test')."""
        return "val" if self.goal.select_on == "val" else "test"

    def select_quality(self, cand: Candidate) -> float | None:
        """Quality on the selection split: what the frontier, the choice and the limit use."""
        q = cand.quality_val if self.select_split == "val" else cand.quality
        return number(q.get(self.metric))

    def frontier_ids(self, axis: str) -> list[str]:
        """Ids on the frontier of ``axis``: the top-level list, else the candidates' own flags."""
        listed = self.results.frontier.get(axis)
        if isinstance(listed, list):
            return [i for i in listed if i in self.by_id]
        return [c.id for c in self.candidates if c.frontier.get(axis) is True]

    @property
    def constraint(self) -> float | None:
        """The worst selection-split quality the goal allows (baseline minus max_drop, in the goal's
        direction; a relative max_drop is a fraction of the baseline)."""
        base = self.select_quality(self.baseline)
        if base is None or self.max_drop is None:
            return None
        allowed = self.max_drop * abs(base) if self.goal.relative and base != 0 else self.max_drop
        return base - allowed if self.goal.higher_is_better is not False else base + allowed

    def drop_text(self, drop: Any, signed: bool = True) -> str:
        """A drop in the goal's unit: points (absolute, a fraction metric), % (relative), or the metric's own units."""
        from .fmt import NA, pt

        v = number(drop)
        if v is None:
            return NA
        if self.goal.relative:
            return f"{v * 100:+.2f}%" if signed else f"{v * 100:.2f}%"
        if self.goal.higher_is_better is False:
            return f"{v:+.4g}" if signed else f"{v:.4g}"
        return pt(v, signed=signed)


def fp(cand: Candidate, key: str) -> float | None:
    """A footprint number of a candidate, or None where it was not measured."""
    return number(getattr(cand.footprint, key, None))


def is_ok(cand: Candidate) -> bool:
    return cand.status == "ok"


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0 or numerator <= 0:
        return None
    return numerator / denominator


def load_view(results: Results | dict) -> View:
    """The report's view of ``results``; a dict (a parsed results.json) is validated first and
    raises ArtifactError naming what is wrong."""
    results = Results.from_dict(results)
    by_id = results.by_id
    return View(
        results=results,
        goal=results.goal,
        metric=results.goal.metric,
        max_drop=number(results.goal.max_drop),
        target=results.goal.target,
        candidates=list(results.candidates),
        by_id=by_id,
        baseline=by_id[results.baseline],
        chosen=by_id[results.chosen] if results.chosen is not None else None,
    )
