"""Frontier plots: quality vs latency and quality vs size on disk (plotly, log x).

Only candidates with status "ok" and both numbers measured are drawn; everything else is
returned by ``unplotted`` so the page can list it with the reason instead.
"""
from __future__ import annotations

import plotly.graph_objects as go
import plotly.io as pio

from ..pipeline.results import Candidate
from .fmt import esc, ms, nbytes, num
from .view import AXIS_KEY, View, fp, is_ok

AXIS_TITLE = {"latency": "latency p50 (ms, log scale)", "size": "size on disk (bytes, log scale)"}
COLORS = {"other": "#9aa5b1", "frontier": "#1f6fd1", "baseline": "#111111", "chosen": "#d6336c", "limit": "#e8590c"}


def _xy(view: View, cand: Candidate, axis: str) -> tuple[float, float] | None:
    x, y = fp(cand, AXIS_KEY[axis]), view.select_quality(cand)
    # a log axis cannot place x <= 0, so such a value counts as not measured
    return None if x is None or y is None or x <= 0 or not is_ok(cand) else (x, y)


def unplotted(view: View, axis: str) -> list[tuple[Candidate, str]]:
    """(candidate, why) for every candidate left off the ``axis`` plot."""
    out = []
    for cand in view.candidates:
        if not is_ok(cand):
            out.append((cand, f"failed: {cand.reason or 'no reason recorded'}"))
        elif _xy(view, cand, axis) is None:
            x = fp(cand, AXIS_KEY[axis])
            gaps = [view.metric] * (view.select_quality(cand) is None) + [AXIS_KEY[axis]] * (x is None or x <= 0)
            out.append((cand, "not measured: " + ", ".join(gaps)))
    return out


def _hover(view: View, cand: Candidate) -> str:
    # plotly draws hover text as a small HTML subset, so user strings are escaped first
    lines = [
        f"<b>{esc(cand.id)}</b> {esc(cand.label)}",
        f"runtime: {esc(cand.runtime)}",
        f"{esc(view.metric)}: {num(view.quality(cand))} test, {num(view.select_quality(cand))} {view.select_split}",
        f"latency p50: {ms(fp(cand, 'latency_ms_p50'))}",
        f"size on disk: {nbytes(fp(cand, 'size_bytes'))}",
    ]
    return "<br>".join(lines)


def _trace(view: View, cands: list[Candidate], axis: str, name: str, mode: str, **style) -> go.Scatter:
    pts = [(c, _xy(view, c, axis)) for c in cands]
    pts = [(c, xy) for c, xy in pts if xy is not None]
    if "text" in mode:  # the id next to each marker, so the plot reads without hovering
        style.update(text=[esc(c.id) for c, _ in pts], textposition="top center")
    return go.Scatter(
        x=[xy[0] for _, xy in pts],
        y=[xy[1] for _, xy in pts],
        name=name,
        mode=mode,
        hovertext=[_hover(view, c) for c, _ in pts],
        hoverinfo="text",
        **style,
    )


def frontier_figure(view: View, axis: str) -> go.Figure:
    """One plot of quality against the ``axis`` footprint ("latency" or "size")."""
    front_ids = set(view.frontier_ids(axis))
    front = sorted(
        (c for c in view.candidates if c.id in front_ids and _xy(view, c, axis)),
        key=lambda c: _xy(view, c, axis)[0],
    )
    others = [c for c in view.candidates if c.id not in front_ids]
    fig = go.Figure()
    fig.add_trace(_trace(view, others, axis, "other candidates", "markers+text",
                         marker=dict(size=9, color=COLORS["other"])))
    # "hv": a step at each frontier point - the best quality reachable within that footprint
    fig.add_trace(_trace(view, front, axis, "frontier", "markers+lines+text",
                         marker=dict(size=10, color=COLORS["frontier"]),
                         line=dict(shape="hv", color=COLORS["frontier"], width=2)))
    fig.add_trace(_trace(view, [view.baseline], axis, "baseline", "markers",
                         marker=dict(size=18, symbol="star", color=COLORS["baseline"])))
    if view.chosen is not None:
        fig.add_trace(_trace(view, [view.chosen], axis, "chosen", "markers",
                             marker=dict(size=18, symbol="diamond-open", color=COLORS["chosen"],
                                         line=dict(width=3))))
    limit = view.constraint
    if limit is not None:
        fig.add_hline(y=limit, line_dash="dash", line_color=COLORS["limit"],
                      annotation_text=f"baseline {'−' if view.goal.higher_is_better is not False else '+'} "
                                      f"max drop ({limit:.4f})",
                      annotation_position="bottom right")
    fig.update_layout(
        template="plotly_white", height=480, margin=dict(l=60, r=20, t=50, b=40),
        title=f"{esc(view.metric)} vs {AXIS_TITLE[axis].split(' (')[0]}",
        legend=dict(orientation="h", yanchor="top", y=-0.18, x=0),
        font=dict(family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif"),
    )
    fig.update_xaxes(type="log", title=AXIS_TITLE[axis])
    split = "validation" if view.select_split == "val" else "test"
    fig.update_yaxes(title=f"{esc(view.metric)} ({split} split)")
    return fig


def figure_html(fig: go.Figure, div_id: str) -> str:
    """The figure as a <div> + plotly's newPlot call; plotly.js itself is embedded once elsewhere."""
    return pio.to_html(
        fig, full_html=False, include_plotlyjs=False, div_id=div_id,
        config={"displaylogo": False, "responsive": True},  # no link out to plotly.com
    )
