"""The report's Search section: how a search went (Results.search) and what its trials measured.

Drawn only for a search (``effdl optimize --search``): a summary sentence, the measured candidates in
the quality-vs-target plane coloured by trial number, the best feasible target footprint after each
trial, the hypervolume of the measured frontier after each complete trial, and the parameters'
importances.
"""
from __future__ import annotations

import plotly.graph_objects as go

from ..pipeline.results import Candidate, SearchSummary
from .fmt import esc
from .plots import figure_html
from .view import AXIS_KEY, View, fp, is_ok

LAYOUT = dict(template="plotly_white", height=400, margin=dict(l=60, r=20, t=80, b=40),
              font=dict(family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif"))


def _multi(s: SearchSummary) -> bool:
    """A Pareto search (quality is an objective, no constraint) rather than one constrained target."""
    return s.constraint is None and len(s.objectives) > 1


def _summary(s: SearchSummary) -> str:
    feet = esc(", ".join(o for o in s.objectives if o != "quality") or "nothing")
    if s.constraint:
        aim = f"minimise {feet} subject to {esc(s.constraint)}"
    elif "quality" in s.objectives:
        aim = f"maximise quality and minimise {feet} (Pareto set)"
    else:
        aim = f"minimise {feet}"
    how = {"trials": "the trial budget was reached", "timeout": "the time limit was reached",
           "space exhausted": "every grid point was measured", "running": "still running: refresh to see more"}
    stopped = how.get(s.stopped_by or "", f"stopped by {esc(s.stopped_by)}" if s.stopped_by else "how it stopped "
                      "was not recorded")
    secs = f" in {s.seconds:.0f} s" if s.seconds is not None else ""
    pruner = f", pruner {esc(s.pruner)}" if s.pruner else ", no pruner"
    return (f"<p><b>{esc(s.sampler)}</b> sampler: {aim}{pruner}. {s.trials} trials{secs} "
            f"({s.complete} complete, {s.pruned} pruned, {s.failed} failed); {stopped}. Study "
            f"<code>{esc(s.study)}</code> in <code>{esc(s.storage)}</code>.</p>")


def _trials(view: View) -> list[Candidate]:
    return sorted((c for c in view.candidates if c.trial is not None and is_ok(c)), key=lambda c: c.trial)


def _hover(c: Candidate) -> str:
    # plotly draws hover text as a small HTML subset: user strings escaped; a reused measurement says so
    params = "<br>".join(f"{esc(k)} = {esc(f'{v:.4g}' if isinstance(v, float) else v)}" for k, v in c.params.items())
    reused = f"<br><i>measurement reused from {esc(c.reused_from)}</i>" if c.reused_from else ""
    return f"<b>{esc(c.id)}</b> (trial {c.trial}) {esc(c.label)}{reused}" + (f"<br>{params}" if params else "")


def _title(main: str, sub: str = "") -> dict:
    """A short title (the modebar sits over long ones) and a smaller line under it."""
    return dict(text=main + (f"<br><sup>{sub}</sup>" if sub else ""), x=0, xanchor="left")


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
                    line=dict(width=[2 if c.id in front else 0 for c, _, _ in pts], color="#d6336c"),
                    symbol=["diamond" if c.reused_from else "circle" for c, _, _ in pts]),
        hovertext=[_hover(c) for c, _, _ in pts], hoverinfo="text"))
    fig.update_layout(title=_title(f"{esc(view.metric)} vs {axis} by trial",
                                   "colour: trial number; ringed: on the frontier; ◆ measurement reused"), **LAYOUT)
    fig.update_xaxes(type="log", title=AXIS_KEY[axis])
    fig.update_yaxes(title=f"{esc(view.metric)} ({'validation' if view.select_split == 'val' else 'test'})")
    return fig


def _best_so_far(view: View, s: SearchSummary) -> go.Figure | None:
    """The smallest target footprint among feasible compressed candidates after each trial; for a
    Pareto search also the best quality measured so far (on a second axis)."""
    key, limit = AXIS_KEY[view.goal.target], view.constraint
    higher = view.goal.higher_is_better is not False
    feasible = (lambda q: q >= limit) if higher else (lambda q: q <= limit)
    best_q_of = max if higher else min
    xs, ys, qx, qy, best, best_q = [], [], [], [], None, None
    for c in _trials(view):
        q, x = view.select_quality(c), fp(c, key)
        if q is not None and c.recipe:
            best_q = q if best_q is None else best_q_of(best_q, q)
        if q is not None and x is not None and (limit is None or feasible(q)) and c.recipe:
            best = x if best is None else min(best, x)
        if best is not None:
            xs.append(c.trial)
            ys.append(best)
        if best_q is not None:
            qx.append(c.trial)
            qy.append(best_q)
    multi = _multi(s) and bool(qx)
    if not xs and not multi:
        return None
    within = " within the allowed drop" if limit is not None else ""
    fig = go.Figure(go.Scatter(x=xs, y=ys, mode="lines+markers", line=dict(shape="hv"), name=f"best {key}{within}"))
    if view.goal.budget is not None:
        fig.add_hline(y=view.goal.budget, line_dash="dash", line_color="#e8590c", annotation_text="budget",
                      annotation_position="top right")
    title = f"best {key} so far"
    if multi:
        split = "validation" if view.select_split == "val" else "test"
        fig.add_trace(go.Scatter(x=qx, y=qy, mode="lines+markers", line=dict(shape="hv", dash="dot"), yaxis="y2",
                                 name=f"best {esc(view.metric)} ({split})"))
        lo, hi = min(qy), max(qy)
        pad = max((hi - lo) * 0.1, abs(hi) * 0.005, 1e-6)  # a flat line still gets a readable axis
        fig.update_layout(yaxis2=dict(title=f"{esc(view.metric)} ({split})", overlaying="y", side="right",
                                      range=[lo - pad, hi + pad], showgrid=False),
                          legend=dict(orientation="h", yanchor="top", y=-0.2, x=0))
        title = f"best {key} and best {esc(view.metric)} so far"
    fig.update_layout(title=_title(title, f"compressed candidates{within}, after each trial"), **LAYOUT)
    if multi:  # room for the right-hand axis
        fig.update_layout(margin=dict(LAYOUT["margin"], r=70))
    fig.update_xaxes(title="trial")
    fig.update_layout(yaxis_title=key)
    return fig


def _hypervolume(s: SearchSummary) -> go.Figure | None:
    if not s.hypervolume:
        return None
    fig = go.Figure(go.Scatter(x=list(range(1, len(s.hypervolume) + 1)), y=s.hypervolume, mode="lines+markers"))
    ref = ", ".join(f"{r:g}" for r in s.hypervolume_reference)
    fig.update_layout(title=_title("hypervolume of the measured frontier",
                                   f"axes {esc('; '.join(s.hypervolume_axes))}; reference ({ref})"), **LAYOUT)
    fig.update_xaxes(title="complete trials")
    fig.update_yaxes(title="hypervolume")
    return fig


def _importances(s: SearchSummary) -> go.Figure | None:
    if not s.importances:
        return None
    items = sorted(s.importances.items(), key=lambda kv: kv[1])
    fig = go.Figure(go.Bar(x=[v for _, v in items], y=[esc(k) for k, _ in items], orientation="h"))
    fig.update_layout(title=_title("parameter importances", "fANOVA over the complete trials"),
                      **{**LAYOUT, "height": max(260, 28 * len(items) + 100)})
    fig.update_xaxes(title="importance")
    return fig


def _notes(view: View, s: SearchSummary) -> str:
    """What the plots cannot say: the hypervolume's axes and reference, reused measurements, missing importances."""
    trials = _trials(view)
    reused = [c for c in trials if c.reused_from]
    items = [f"{len(trials)} measured candidates came from trials"
             + (f"; {len(reused)} of them {'reuses' if len(reused) == 1 else 'reuse'} an earlier candidate's "
                "measurement (the same model proposed again: "
                + ", ".join(f"{esc(c.id)} from {esc(c.reused_from)}" for c in reused) + ")" if reused else "")]
    if s.hypervolume:
        items.append(f"hypervolume after each complete trial, final {s.hypervolume[-1]:.4g}, over the axes "
                     f"{esc('; '.join(s.hypervolume_axes)) or 'not recorded'} (each minimised) with the reference "
                     f"point ({', '.join(f'{r:g}' for r in s.hypervolume_reference) or 'not recorded'})")
    else:
        items.append("no hypervolume: no trial completed")
    if not s.importances:
        items.append("no parameter importances: too few complete trials, or a single value per parameter")
    return '<ul class="note">' + "".join(f"<li>{i}.</li>" for i in items) + "</ul>"


def search_section(view: View) -> str:
    """The section's HTML, "" for a fixed grid (no Results.search)."""
    s = view.results.search
    if s is None:
        return ""
    figs = [(f, name) for f, name in ((_by_trial(view), "trials"), (_best_so_far(view, s), "best"),
                                       (_hypervolume(s), "hypervolume"), (_importances(s), "importances"))
            if f is not None]
    divs = "".join(f'<div class="plot">{figure_html(f, f"search-{name}")}</div>' for f, name in figs)
    return (f'<section id="search"><h2>Search</h2>{_summary(s)}{_notes(view, s)}'
            f'<div class="plots">{divs}</div></section>')
