"""Plain statements of where a candidate gained nothing, computed from its numbers.

A candidate that is not faster, not smaller, or over the allowed quality drop gets one sentence,
so that a technique which only looks good in theory is called out in words, not left to a plot.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..pipeline.results import Candidate
from .fmt import esc, name
from .view import View, fp, is_ok, ratio

# A gain under 5% is called "none": repeated latency medians on a shared CPU differ by a few
# percent (REFERENCE.md, timing pitfalls), and a few bytes of file header are not a size gain.
MIN_GAIN = 1.05


@dataclass(frozen=True)
class Finding:
    id: str
    text: str  # HTML-safe


def speedup(view: View, cand: Candidate) -> float | None:
    """Baseline latency p50 / candidate latency p50 (each on its own runtime)."""
    return ratio(fp(view.baseline, "latency_ms_p50"), fp(cand, "latency_ms_p50"))


def size_gain(view: View, cand: Candidate, key: str = "size_bytes") -> float | None:
    """How many times smaller on disk than the baseline."""
    return ratio(fp(view.baseline, key), fp(cand, key))


def _speed_part(view: View, cand: Candidate) -> tuple[str, bool]:
    s = speedup(view, cand)
    runtime = esc(cand.runtime or "its runtime")
    if s is None:
        return "latency not measured", False
    if s < 1 / MIN_GAIN:
        return f"slower than the baseline on {runtime} ({s:.2f}x)", False
    if s < MIN_GAIN:
        return f"no measured speed-up on {runtime} ({s:.2f}x)", False
    return f"speed-up {s:.2f}x on {runtime}", True


def _size_part(view: View, cand: Candidate) -> tuple[str, bool]:
    g = size_gain(view, cand)
    if g is None:
        return "size not measured", False
    if g < MIN_GAIN:
        text = f"no size gain on disk ({g:.2f}x)"
        gz = size_gain(view, cand, "size_bytes_gzip")
        if gz is not None and gz >= MIN_GAIN:
            text += f", only {gz:.1f}x after gzip"
        return text, False
    text = f"size gain {g:.1f}x"
    params, nonzero = fp(cand, "params"), fp(cand, "nonzero_params")
    if params and nonzero is not None and nonzero < params:
        text += f" with {1 - nonzero / params:.0%} of weights zero"
    return text, True


def _unmodified_latency(view: View) -> dict[str, float]:
    """runtime -> p50 of the unmodified model (candidates with an empty recipe) on that runtime."""
    out: dict[str, float] = {}
    for c in view.candidates:
        if c.recipe == [] and is_ok(c):
            for rt, r in c.runtimes.items():
                lat = r.latency_ms_p50 if r.status == "ok" else None
                if isinstance(lat, (int, float)) and lat > 0:
                    out[rt] = min(lat, out.get(rt, lat))
    return out


def _own_effect(view: View, cand: Candidate, ref: dict[str, float]) -> str | None:
    """What the technique itself did to latency: the candidate vs the unmodified model on the same
    runtime (or on the unmodified model's fastest runtime, for INT8 runtimes it cannot run on).
    A speed-up over the eager baseline that only comes from switching runtime is not the technique's."""
    rt, lat = cand.runtime, fp(cand, "latency_ms_p50")
    if not cand.recipe or not ref or lat is None:
        return None
    if rt in ref:
        base_rt, base = rt, ref[rt]
        where = f"the unmodified model on {esc(rt)}"
    else:
        base_rt = min(ref, key=ref.get)
        base = ref[base_rt]
        where = f"the unmodified model on its fastest runtime ({esc(base_rt)})"
    s = base / lat
    if s >= MIN_GAIN or base_rt == view.baseline.runtime:
        return None  # (same runtime as the baseline: the baseline comparison already says it)
    verdict = "runs slower than" if s < 1 / MIN_GAIN else "brings no speed-up over"
    return f"the technique itself {verdict} {where} ({s:.2f}x)"


def findings(view: View) -> list[Finding]:
    """One statement per measured candidate that is not faster, not smaller or too inaccurate."""
    out = []
    ref = _unmodified_latency(view)
    for cand in view.candidates:
        if cand is view.baseline or not is_ok(cand):
            continue
        speed, faster = _speed_part(view, cand)
        size, smaller = _size_part(view, cand)
        parts = []
        if not (faster and smaller):
            lead = "gained nothing: " if not (faster or smaller) else ""
            parts.append(lead + f"{speed}; {size}")
        own = _own_effect(view, cand, ref)
        if own:
            parts.append(own)
        drop = cand.quality_drop
        if view.max_drop is not None and isinstance(drop, (int, float)) and drop > view.max_drop:
            parts.append(f"quality drop {view.drop_text(drop, signed=False)} exceeds the allowed {view.drop_text(view.max_drop, signed=False)}")
        if parts:
            out.append(Finding(cand.id, f"{name(cand)}: " + "; ".join(parts)))
    return out
