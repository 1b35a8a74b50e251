"""Read-only access to a results dict (docs/results-schema.md), validated once for the report.

Every getter tolerates the partial records of failed candidates: a missing, null or non-finite
number reads as ``None`` so that nothing unmeasured is ever drawn or compared.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..core.errors import ArtifactError

AXES = ("latency", "size")  # the two footprints the frontier is computed over
AXIS_KEY = {"latency": "latency_ms_p50", "size": "size_bytes"}


def _bad(problem: str) -> ArtifactError:
    return ArtifactError(
        f"results {problem}: pass the dict that `effdl optimize` writes as results.json "
        "(see docs/results-schema.md)"
    )


def number(value: Any) -> float | None:
    """A finite int/float, else None (bools, strings, NaN and inf are not measurements)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class View:
    results: dict
    metric: str
    max_drop: float | None
    target: str | None
    candidates: list[dict]
    by_id: dict[str, dict]
    baseline: dict
    chosen: dict | None

    def quality(self, cand: dict) -> float | None:
        """The reported quality: the test split."""
        return number((cand.get("quality") or {}).get(self.metric))

    @property
    def select_split(self) -> str:
        """The split the frontier and the goal were computed on ('val' or 'test')."""
        return "val" if (self.results.get("goal") or {}).get("select_on") == "val" else "test"

    def select_quality(self, cand: dict) -> float | None:
        """Quality on the selection split: what the frontier, the choice and the limit use."""
        key = "quality_val" if self.select_split == "val" else "quality"
        return number((cand.get(key) or {}).get(self.metric))

    def frontier_ids(self, axis: str) -> list[str]:
        """Ids on the frontier of ``axis``: the top-level list, else the candidates' own flags."""
        listed = (self.results.get("frontier") or {}).get(axis)
        if isinstance(listed, list):
            return [i for i in listed if i in self.by_id]
        return [c["id"] for c in self.candidates if (c.get("frontier") or {}).get(axis) is True]

    @property
    def constraint(self) -> float | None:
        """Lowest selection-split quality the goal allows: baseline minus max_drop."""
        base = self.select_quality(self.baseline)
        return None if base is None or self.max_drop is None else base - self.max_drop


def fp(cand: dict, key: str) -> float | None:
    """A footprint number of a candidate, or None where it was not measured."""
    return number((cand.get("footprint") or {}).get(key))


def is_ok(cand: dict) -> bool:
    return cand.get("status") == "ok"


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0 or numerator <= 0:
        return None
    return numerator / denominator


def load_view(results: Any) -> View:
    """Validate the parts the report cannot do without; raise ArtifactError naming what is wrong."""
    if not isinstance(results, dict):
        raise _bad(f"must be a dict, got {type(results).__name__}")
    goal = results.get("goal")
    if not isinstance(goal, dict) or not isinstance(goal.get("metric"), str):
        raise _bad("have no goal.metric")
    cands = results.get("candidates")
    if not isinstance(cands, list) or not cands:
        raise _bad("have no candidates list")
    by_id: dict[str, dict] = {}
    for i, c in enumerate(cands):
        if not isinstance(c, dict) or not isinstance(c.get("id"), str):
            raise _bad(f"candidate #{i} has no string 'id'")
        if c["id"] in by_id:
            raise _bad(f"repeat candidate id {c['id']!r}")
        by_id[c["id"]] = c
    base_id = results.get("baseline")
    if base_id not in by_id:
        raise _bad(f"name baseline {base_id!r}, which is not among the candidates ({', '.join(by_id)})")
    chosen_id = results.get("chosen")
    if chosen_id is not None and chosen_id not in by_id:
        raise _bad(f"name chosen {chosen_id!r}, which is not among the candidates ({', '.join(by_id)})")
    return View(
        results=results,
        metric=goal["metric"],
        max_drop=number(goal.get("max_drop")),
        target=goal.get("target"),
        candidates=cands,
        by_id=by_id,
        baseline=by_id[base_id],
        chosen=by_id[chosen_id] if chosen_id is not None else None,
    )
