"""Quantization views, drawn from the records the quantization techniques attach to a candidate:

* ``QuantErrorHistRecord``: histograms of the quantization error (quantized - float) of each
  layer's weights (and inputs, for QAT with activations), one shared set of bin edges per layer;
* ``ActRangesRecord``: the observed range of each layer's input and the range kept by quantization
  (the clip);
* ``MixedSensitivityRecord``: the per-layer sensitivity of quantize.mixed, with the chosen widths;
* ``QATRecord``: mean squared weight quantization error before training and per epoch;
* ``Int8LayersRecord``: what quantize.ptq left in FP32 (excluded, or no int8 kernel for the op),
  listed per candidate.

Each figure takes the first measured candidate that carries its record; no record, no figure.
"""
from __future__ import annotations

from typing import TypeVar

import plotly.graph_objects as go

from ..compress.quantize.mixed import MixedSensitivityRecord
from ..compress.quantize.ptq import Int8LayersRecord
from ..compress.quantize.qat import ActRangesRecord, QATRecord, QuantErrorHistRecord
from ..core.records import Record
from ..pipeline.results import Candidate
from .fmt import esc
from .registry import Section, carriers, draws, plot, section_html
from .view import View

_FONT = dict(family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif")
QUANT = Section("Quantization")
R = TypeVar("R", bound=Record)


def _with_record(view: View, record: type[R]) -> tuple[Candidate, R] | None:
    """The first measured candidate with a non-empty ``record`` (an empty one has nothing to draw)."""
    return next(((c, r) for c, r in carriers(view, record) if r.model_dump()), None)


def _layout(fig: go.Figure, title: str, height: int = 420) -> go.Figure:
    fig.update_layout(template="plotly_white", height=height, margin=dict(l=60, r=20, t=40, b=40), font=_FONT,
                      title=title, legend=dict(orientation="h", yanchor="top", y=-0.18, x=0))
    return fig


def _label(c: Candidate) -> str:
    return f"{esc(c.id)} {esc(c.label)}"


def error_hist_figure(view: View) -> go.Figure | None:
    """Bars of the error counts per layer (and per kind: weights, activations), at the bin centres."""
    found = _with_record(view, QuantErrorHistRecord)
    if found is None:
        return None
    cand, rec = found
    fig = go.Figure()
    for layer, h in rec.layers.items():
        edges = h.edges
        centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
        for kind in ("weights", "activations"):
            if getattr(h, kind):
                fig.add_trace(go.Bar(x=centres, y=getattr(h, kind), name=f"{esc(layer)} {kind}", opacity=0.6,
                                     hovertemplate="error %{x:.3g}: %{y} values<extra></extra>"))
    fig.update_layout(barmode="overlay")
    fig.update_xaxes(title="quantization error (quantized - float)")
    fig.update_yaxes(title="count")
    return _layout(fig, f"quantization error per layer ({_label(cand)})")


def act_range_figure(view: View) -> go.Figure | None:
    """Per layer: the observed input range (light) and the range kept by quantization (dark)."""
    found = _with_record(view, ActRangesRecord)
    if found is None:
        return None
    cand, rec = found
    ranges = rec.layers
    layers = list(ranges)
    fig = go.Figure()
    fig.add_trace(go.Bar(x=[esc(n) for n in layers], base=[ranges[n].min for n in layers],
                         y=[ranges[n].max - ranges[n].min for n in layers], name="observed min..max",
                         marker_color="#c6dbef", width=0.6))
    fig.add_trace(go.Bar(x=[esc(n) for n in layers], base=[ranges[n].clip_lo for n in layers],
                         y=[ranges[n].clip_hi - ranges[n].clip_lo for n in layers], name="quantized range (clip)",
                         marker_color="#2171b5", width=0.3))
    fig.update_layout(barmode="overlay")
    fig.update_xaxes(title="layer (its input)")
    fig.update_yaxes(title="activation value")
    return _layout(fig, f"activation ranges and clipping ({_label(cand)})")


def sensitivity_bar_figure(view: View) -> go.Figure | None:
    """Grouped bars: each layer's sensitivity at each width; the chosen width in the hover text."""
    found = _with_record(view, MixedSensitivityRecord)
    if found is None:
        return None
    cand, rec = found
    layers = rec.layers
    widths = sorted({int(b) for v in layers.values() for b in v.sensitivity})
    accuracy = rec.measure == "val_drop"
    fig = go.Figure()
    for b in widths:
        ys = [layers[n].sensitivity.get(str(b)) for n in layers]
        ys = [None if v is None else (v * 100 if accuracy else v) for v in ys]
        fig.add_trace(go.Bar(x=[esc(n) for n in layers], y=ys, name=f"{b} bits",
                             text=[f"chosen: {layers[n].bits} bits" for n in layers],
                             hovertemplate="%{x}: %{y:.3g}<br>%{text}<extra></extra>"))
    fig.update_layout(barmode="group")
    fig.update_xaxes(title="layer (chosen width: " + ", ".join(f"{esc(n)}={layers[n].bits}" for n in layers) + ")")
    fig.update_yaxes(title="validation accuracy drop (points)" if accuracy else "Hessian proxy tr(H)/n * ||dW||^2")
    return _layout(fig, f"per-layer quantization sensitivity, each layer quantized alone ({_label(cand)})")


def qat_mse_figure(view: View) -> go.Figure | None:
    """Mean squared weight quantization error per layer, before QAT (epoch 0) and after each epoch."""
    found = _with_record(view, QATRecord)
    if found is None:
        return None
    cand, rec = found
    fig = go.Figure()
    for layer, ys in rec.mse.items():
        fig.add_trace(go.Scatter(x=list(range(len(ys))), y=list(ys), mode="lines+markers", name=esc(layer)))
    fig.update_xaxes(title="epoch (0 = before QAT; the last point ends a partial epoch)", dtick=1)
    fig.update_yaxes(title="mean squared weight quantization error", type="log")
    return _layout(fig, f"QAT: weight quantization error per epoch ({_label(cand)})")


def fp32_fallback_table(view: View) -> str:
    """Layers INT8 candidates kept in FP32, and why (each INT8 runtime runs them in FP32 too)."""
    rows = []
    for c, rec in carriers(view, Int8LayersRecord):
        rows += [f"<tr><td>{_label(c)}</td><td>{esc(n)}</td><td>{esc(i.type)}</td><td>{esc(i.why)}</td>"
                 f"<td>{len(rec.int8)}</td></tr>" for n, i in rec.fp32.items()]
    if not rows:
        return ""
    return ("<h3>Layers kept in FP32 by INT8 quantization</h3><table><thead><tr><th>candidate</th><th>layer</th>"
            "<th>type</th><th>why</th><th>int8 layers in the model</th></tr></thead><tbody>" + "".join(rows)
            + "</tbody></table>")


# the section's parts, registered in page order
@draws(QuantErrorHistRecord, QUANT)
def _error_hist_part(view: View) -> str:
    return plot(error_hist_figure(view), "plot-quant-error")


@draws(ActRangesRecord, QUANT)
def _act_range_part(view: View) -> str:
    return plot(act_range_figure(view), "plot-act-ranges")


@draws(MixedSensitivityRecord, QUANT)
def _sensitivity_part(view: View) -> str:
    return plot(sensitivity_bar_figure(view), "plot-quant-sensitivity")


@draws(QATRecord, QUANT)
def _qat_mse_part(view: View) -> str:
    return plot(qat_mse_figure(view), "plot-qat-mse")


draws(Int8LayersRecord, QUANT)(fp32_fallback_table)


def quant_section(view: View) -> str:
    return section_html(view, QUANT)
