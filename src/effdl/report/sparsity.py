"""Sparsity views: the per-layer sparsity heatmap and quality-vs-sparsity curves per pruning recipe.

Drawn only from measured candidates that carry per-layer counts (``layers``); a run without pruned
candidates gets no section rather than an empty plot. The pruning trajectories (``TrajectoryRecord``)
and per-layer sensitivity curves (``SensitivityRecord``) are this section's record parts.
"""
from __future__ import annotations

import plotly.graph_objects as go

from ..compress.prune.trajectory import TrajectoryRecord
from ..compress.prune.weights import SensitivityRecord
from ..pipeline.results import Candidate
from .fmt import esc
from .registry import Section, carriers, draws, plot, section_html
from .view import View, fp, is_ok

_FONT = dict(family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif")


def _sparse_candidates(view: View) -> list[Candidate]:
    return [c for c in view.candidates if is_ok(c) and c.layers
            and any(v.get("sparsity", 0) > 0 for v in c.layers.values())]


def heatmap_figure(view: View) -> go.Figure | None:
    """Rows: the baseline and every candidate with zeros; columns: weighted layers; colour: sparsity."""
    rows = _sparse_candidates(view)
    if not rows:
        return None
    rows = [view.baseline] + [c for c in rows if c is not view.baseline]
    layers: list[str] = []
    for c in rows:
        layers += [n for n in c.layers if n not in layers]
    z = [[c.layers.get(n, {}).get("sparsity") for n in layers] for c in rows]
    fig = go.Figure(go.Heatmap(
        z=z, x=[esc(n) for n in layers], y=[f"{esc(c.id)} {esc(c.label)}" for c in rows],
        zmin=0, zmax=1, colorscale="Blues", colorbar=dict(title="zeros"),
        text=[[f"{v:.0%}" if v is not None else "" for v in row] for row in z], texttemplate="%{text}",
        hovertemplate="%{y}<br>layer %{x}: %{z:.1%} zeros<extra></extra>",
    ))
    fig.update_layout(template="plotly_white", height=120 + 28 * len(rows), margin=dict(l=260, r=20, t=40, b=60),
                      title="per-layer sparsity (fraction of exact zeros in each layer's weights)", font=_FONT)
    fig.update_yaxes(autorange="reversed")
    return fig


def _series(cand: Candidate) -> str:
    """The recipe with its sparsity left out, e.g. 'prune.magnitude(iterative) + learn.distill'."""
    parts = []
    for step in cand.recipe:
        tech = step.get("technique", "?")
        sched = step.get("schedule")
        parts.append(f"{tech}({sched})" if tech.startswith("prune.") and sched else tech)
    return " + ".join(parts)


def curve_figure(view: View) -> go.Figure | None:
    """Quality (selection split) vs overall weight sparsity, one line per recipe shape; the
    iterative vs one-shot comparison reads off two of these lines."""
    series: dict[str, list[tuple[float, float, str]]] = {}
    for c in _sparse_candidates(view):
        params, nonzero, q = fp(c, "params"), fp(c, "nonzero_params"), view.select_quality(c)
        if params and nonzero is not None and q is not None:
            series.setdefault(_series(c), []).append((1 - nonzero / params, q, c.id))
    if not series:
        return None
    base_q = view.select_quality(view.baseline)
    fig = go.Figure()
    for name, pts in series.items():
        pts = sorted(pts + ([(0.0, base_q, view.baseline.id)] if base_q is not None else []))
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers+text",
                                 text=[esc(p[2]) for p in pts], textposition="top center", name=esc(name)))
    fig.update_layout(template="plotly_white", height=420, margin=dict(l=60, r=20, t=40, b=40), font=_FONT,
                      title=f"{esc(view.metric)} ({'validation' if view.select_split == 'val' else 'test'}) vs weight sparsity",
                      legend=dict(orientation="h", yanchor="top", y=-0.18, x=0))
    fig.update_xaxes(title="fraction of weights that are zero", tickformat=".0%")
    fig.update_yaxes(title=esc(view.metric))
    return fig


def trajectory_figure(view: View) -> go.Figure | None:
    """Iterative vs one-shot: validation quality after every cut and every fine-tune, against the
    fine-tuning epochs spent (the textbook's figures 10.5/10.6). Candidates that reuse a pruned
    prefix carry the same path; each distinct path is drawn once, named by its shortest recipe."""
    paths: dict[str, tuple[Candidate, TrajectoryRecord]] = {}
    for c, rec in sorted(carriers(view, TrajectoryRecord), key=lambda cr: len(cr[0].recipe)):
        if rec.points:
            paths.setdefault(repr(rec.points), (c, rec))
    if not paths:
        return None
    fig = go.Figure()
    for c, rec in paths.values():
        pts = [p for p in rec.points if p[2] is not None]
        fig.add_trace(go.Scatter(
            x=[p[0] for p in pts], y=[p[2] for p in pts], mode="lines+markers",
            name=f"{esc(c.id)} {esc(c.label)}",
            text=[f"{esc(p[3])}: {p[1]:.0%} {'weights' if rec.kind == 'weights' else 'channels'} removed"
                  for p in pts],
            hovertemplate="%{text}<br>%{x:.2g} fine-tuning epochs<br>%{y:.4f}<extra></extra>"))
    fig.update_layout(template="plotly_white", height=420, margin=dict(l=60, r=20, t=40, b=40), font=_FONT,
                      title="iterative vs one-shot: validation quality after each cut and each fine-tune",
                      legend=dict(orientation="h", yanchor="top", y=-0.18, x=0))
    fig.update_xaxes(title="fine-tuning epochs spent")
    fig.update_yaxes(title=f"{esc(view.metric)} (validation)")
    return fig


def sensitivity_figure(view: View) -> go.Figure | None:
    """Per-layer sensitivity curves (quality drop when that layer alone is pruned to each ratio), from
    the first candidate whose pruning allocated its budget by sensitivity analysis."""
    # failed candidates too: the curves are measured before the candidate's runtimes are
    found = next(((c, r) for c, r in carriers(view, SensitivityRecord, ok_only=False) if r.curves), None)
    if found is None:
        return None
    cand, rec = found
    fig = go.Figure()
    for layer, pts in rec.curves.items():
        pts = sorted(pts)
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] * 100 for p in pts], mode="lines+markers",
                                 name=esc(layer)))
    fig.update_layout(template="plotly_white", height=420, margin=dict(l=60, r=20, t=40, b=40), font=_FONT,
                      title=f"sensitivity of each layer pruned alone ({esc(cand.id)} {esc(cand.label)})",
                      legend=dict(orientation="h", yanchor="top", y=-0.18, x=0))
    fig.update_xaxes(title="fraction of the layer's weights removed", tickformat=".0%")
    fig.update_yaxes(title=f"{esc(view.metric)} drop (points, validation)")
    return fig


SPARSITY = Section("Sparsity", parts=(lambda view: plot(heatmap_figure(view), "plot-heatmap"),
                                      lambda view: plot(curve_figure(view), "plot-sparsity")))


# the record parts, registered in page order (after the heatmap and the curves)
@draws(TrajectoryRecord, SPARSITY)
def _trajectory_part(view: View) -> str:
    return plot(trajectory_figure(view), "plot-trajectory")


@draws(SensitivityRecord, SPARSITY)
def _sensitivity_part(view: View) -> str:
    return plot(sensitivity_figure(view), "plot-sensitivity")


def sparsity_section(view: View) -> str:
    return section_html(view, SPARSITY)
