"""Plain-text summary of Results: the table rows and the baseline-vs-chosen headline."""
from __future__ import annotations

from .results import Goal, Results


def _pts(delta: float) -> str:
    return f"{delta * 100 + 0.0:+.2f}"  # + 0.0 turns -0.0 into 0.0


def drop_unit(goal: Goal) -> str:
    """The unit drops are printed in: points of a fraction metric (x100), % of the baseline
    (relative goals, x100), or the metric's own units (absolute, lower-is-better)."""
    if goal.relative:
        return "%"
    return "" if goal.higher_is_better is False else "pt"


def signed_drop(delta: float, goal: Goal) -> str:
    if drop_unit(goal) == "":
        return f"{delta + 0.0:+.4g}"
    return _pts(delta)


def summary_rows(results: Results) -> list[tuple[str, ...]]:
    metric, goal = results.goal.metric, results.goal
    rows = []
    for c in results.candidates:
        if not c.ok:
            rows.append((c.id, c.label, "-", "failed", "-", "-", "-", c.reason or ""))
            continue
        f = c.footprint
        rows.append((
            c.id, c.label, c.runtime, f"{c.quality[metric]:.4f}", signed_drop(c.quality_drop, goal),
            f"{f.latency_ms_p50:.4f}", f"{f.size_bytes / 1024:.1f}", "yes" if c.on_frontier else "",
        ))
    return rows


def headline(results: Results) -> list[str]:
    """The lines the README quotes: baseline, chosen, and the measured ratios between them."""
    goal = results.goal
    metric = goal.metric
    base = results.baseline_candidate
    bf = base.footprint
    lines = [
        f"baseline {base.id} ({base.label}): {metric} {base.quality[metric]:.4f}, "
        f"{bf.latency_ms_p50:.4f} ms p50 at batch {bf.batch_size} on {base.runtime}, "
        f"{bf.size_bytes:,} bytes"
    ]
    ch = results.chosen_candidate
    if ch is None:
        lines.append(f"warning: no model chosen — {results.chosen_reason}. Relax --max-drop or add candidates.")
        return lines
    if ch.id == results.baseline:
        lines.append("warning: no compressed candidate met the goal; the chosen model is the baseline itself. "
                     "Relax --max-drop, or search longer.")
    cf = ch.footprint
    unit = {"pt": " points", "%": "%", "": ""}[drop_unit(goal)]
    # a drop is "how much worse": its negative is the change shown
    lines.append(
        f"chosen {ch.id} ({ch.label}) on {ch.runtime}: {metric} {ch.quality[metric]:.4f} "
        f"({signed_drop(-ch.quality_drop, goal)}{unit} on test, {signed_drop(-ch.quality_drop_val, goal)} on validation), "
        f"{cf.latency_ms_p50:.4f} ms p50 ({bf.latency_ms_p50 / cf.latency_ms_p50:.1f}x faster), "
        f"{cf.size_bytes:,} bytes ({bf.size_bytes / cf.size_bytes:.1f}x smaller)"
        + (f"; {ch.runtime} loads a {cf.deployed_bytes:,}-byte artifact"
           if cf.deployed_bytes is not None and cf.deployed_bytes != cf.size_bytes else "")
    )
    ok = sum(c.ok for c in results.candidates)
    lines.append(f"{ok} of {len(results.candidates)} candidates measured; frontier ({goal.target}): "
                 f"{', '.join(results.frontier.get(goal.target, []))}")
    return lines
