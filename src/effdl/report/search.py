"""The report's Search section: how a search went (Results.search) and what its trials measured.

Drawn only for a search (``effdl optimize --search``): a summary sentence, the measured candidates in
the quality-vs-target plane coloured by trial number, the best feasible target footprint after each
trial, the hypervolume of the measured frontier after each complete trial, and the parameters'
importances.
"""
from __future__ import annotations

import plotly.graph_objects as go

from ..pipeline.results import SearchSummary
from .fmt import esc
from .plots import figure_html
from .view import AXIS_KEY, View, fp, is_ok

LAYOUT = dict(template="plotly_white", height=380, margin=dict(l=60, r=20, t=50, b=40),
              font=dict(family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif"))


def _summary(s: SearchSummary) -> str:
    aim = (f"minimise {esc(s.objectives[0])} subject to {esc(s.constraint)}" if s.constraint
           else "maximise quality and minimise " + esc(", ".join(s.objectives[1:])) + " (Pareto set)")
    how = {"trials": "the trial budget was reached", "timeout": "the time limit was reached",
           "space exhausted": "every grid point was measured", "running": "still running: refresh to see more"}
    stopped = how.get(s.stopped_by or "", esc(s.stopped_by or "unknown"))
    secs = f" in {s.seconds:.0f} s" if s.seconds is not None else ""
    pruner = f", pruner {esc(s.pruner)}" if s.pruner else ", no pruner"
    return (f"<p><b>{esc(s.sampler)}</b> sampler: {aim}{pruner}. {s.trials} trials{secs} "
            f"({s.complete} complete, {s.pruned} pruned, {s.failed} failed); {stopped}. Study "
            f"<code>{esc(s.study)}</code> in <code>{esc(s.storage)}</code>.</p>")


def _trials(view: View) -> list:
    return sorted((c for c in view.candidates if c.trial is not None and is_ok(c)), key=lambda c: c.trial)


def _by_trial(view: View) -> go.Figure | None:
    axis = view.goal.target
    pts = [(c, fp(c, AXIS_KEY[axis]), view.select_quality(c)) for c in _trials(view)]
    pts = [(c, x, y) for c, x, y in pts if x and y is not None]
    if not pts:
        return None
    front = set(view.frontier_ids(axis))
    fig = go.Figure(go.Scatter(
        x=[x for _, x, _ in pts], y=[y for _, _, y in pts], mode="markers",
        marker=dict(size=[14 if c.id in front else 9 for c, _, _ in pts], color=[c.trial for c, _, _ in pts],
                    colorscale="Viridis", showscale=True, colorbar=dict(title="trial"),
                    line=dict(width=[2 if c.id in front else 0 for c, _, _ in pts], color="#d6336c")),
        hovertext=[f"{esc(c.id)} (trial {c.trial}) {esc(c.label)}" for c, _, _ in pts], hoverinfo="text"))
    fig.update_layout(title=f"{esc(view.metric)} vs {axis}, coloured by trial (ringed: on the frontier)", **LAYOUT)
    fig.update_xaxes(type="log", title=AXIS_KEY[axis])
    fig.update_yaxes(title=f"{esc(view.metric)} ({'validation' if view.select_split == 'val' else 'test'})")
    return fig


def _best_so_far(view: View) -> go.Figure | None:
    key, limit = AXIS_KEY[view.goal.target], view.constraint
    better = (lambda q: q >= limit) if view.goal.higher_is_better is not False else (lambda q: q <= limit)
    xs, ys, best = [], [], None
    for c in _trials(view):
        q, x = view.select_quality(c), fp(c, key)
        if q is not None and x is not None and (limit is None or better(q)) and c.recipe:
            best = x if best is None else min(best, x)
        if best is not None:
            xs.append(c.trial)
            ys.append(best)
    if not xs:
        return None
    fig = go.Figure(go.Scatter(x=xs, y=ys, mode="lines+markers", line=dict(shape="hv")))
    fig.update_layout(title=f"best {key} within the allowed drop, by trial", **LAYOUT)
    fig.update_xaxes(title="trial")
    fig.update_yaxes(title=key)
    return fig


def _hypervolume(s: SearchSummary) -> go.Figure | None:
    if not s.hypervolume:
        return None
    fig = go.Figure(go.Scatter(x=list(range(1, len(s.hypervolume) + 1)), y=s.hypervolume, mode="lines+markers"))
    ref = ", ".join(f"{r:g}" for r in s.hypervolume_reference)
    fig.update_layout(title=f"hypervolume of the measured frontier (axes: {esc('; '.join(s.hypervolume_axes))}; "
                            f"reference {ref})", **LAYOUT)
    fig.update_xaxes(title="complete trials")
    fig.update_yaxes(title="hypervolume")
    return fig


def _importances(s: SearchSummary) -> go.Figure | None:
    if not s.importances:
        return None
    items = sorted(s.importances.items(), key=lambda kv: kv[1])
    fig = go.Figure(go.Bar(x=[v for _, v in items], y=[esc(k) for k, _ in items], orientation="h"))
    fig.update_layout(title="parameter importances (fANOVA over the complete trials)", **{**LAYOUT, "height": 
                      max(260, 28 * len(items) + 100)})
    return fig


def search_section(view: View) -> str:
    """The section's HTML, "" for a fixed grid (no Results.search)."""
    s = view.results.search
    if s is None:
        return ""
    figs = [(f, name) for f, name in ((_by_trial(view), "trials"), (_best_so_far(view), "best"),
                                       (_hypervolume(s), "hypervolume"), (_importances(s), "importances"))
            if f is not None]
    divs = "".join(f'<div class="plot">{figure_html(f, f"search-{name}")}</div>' for f, name in figs)
    return f'<section id="search"><h2>Search</h2>{_summary(s)}<div class="plots">{divs}</div></section>'
