"""Quantization views, drawn from the records the quantization techniques attach to a candidate:

* ``quant_error_hist`` {layer: {"edges", "weights"[, "activations"]}}: histograms of the
  quantization error (quantized - float) of each layer's weights (and inputs, for QAT with
  activations), one shared set of bin edges per layer;
* ``act_ranges`` {layer: {"min", "max", "clip_lo", "clip_hi"}}: the observed range of each layer's
  input and the range kept by quantization (the clip);
* ``quant_sensitivity`` {"layers": {layer: {"sensitivity": {bits: drop}, "bits", ...}}, ...}: the
  per-layer sensitivity of quantize.mixed, with the chosen widths;
* ``qat_mse`` {layer: [mean squared weight quantization error before training and per epoch]};
* ``int8_layers`` {"int8": [layer], "fp32": {layer: {"type", "why"}}}: what quantize.ptq left in
  FP32 (excluded, or no int8 kernel for the op), listed per candidate.

Each figure takes the first measured candidate that carries its record; no record, no figure.
"""
from __future__ import annotations

import plotly.graph_objects as go

from ..pipeline.results import Candidate
from .fmt import esc
from .plots import figure_html
from .view import View, is_ok

_FONT = dict(family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif")


def _with_record(view: View, key: str) -> tuple[Candidate, object] | None:
    for c in view.candidates:
        rec = c.records.get(key)
        if is_ok(c) and rec:
            return c, rec
    return None


def _layout(fig: go.Figure, title: str, height: int = 420) -> go.Figure:
    fig.update_layout(template="plotly_white", height=height, margin=dict(l=60, r=20, t=40, b=40), font=_FONT,
                      title=title, legend=dict(orientation="h", yanchor="top", y=-0.18, x=0))
    return fig


def _label(c: Candidate) -> str:
    return f"{esc(c.id)} {esc(c.label)}"


def error_hist_figure(view: View) -> go.Figure | None:
    """Bars of the error counts per layer (and per kind: weights, activations), at the bin centres."""
    found = _with_record(view, "quant_error_hist")
    if found is None:
        return None
    cand, rec = found
    fig = go.Figure()
    for layer, h in rec.items():
        edges = h.get("edges") or []
        centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
        for kind in ("weights", "activations"):
            if h.get(kind):
                fig.add_trace(go.Bar(x=centres, y=h[kind], name=f"{esc(layer)} {kind}", opacity=0.6,
                                     hovertemplate="error %{x:.3g}: %{y} values<extra></extra>"))
    fig.update_layout(barmode="overlay")
    fig.update_xaxes(title="quantization error (quantized - float)")
    fig.update_yaxes(title="count")
    return _layout(fig, f"quantization error per layer ({_label(cand)})")


def act_range_figure(view: View) -> go.Figure | None:
    """Per layer: the observed input range (light) and the range kept by quantization (dark)."""
    found = _with_record(view, "act_ranges")
    if found is None:
        return None
    cand, rec = found
    layers = list(rec)
    fig = go.Figure()
    fig.add_trace(go.Bar(x=[esc(n) for n in layers], base=[rec[n]["min"] for n in layers],
                         y=[rec[n]["max"] - rec[n]["min"] for n in layers], name="observed min..max",
                         marker_color="#c6dbef", width=0.6))
    fig.add_trace(go.Bar(x=[esc(n) for n in layers], base=[rec[n]["clip_lo"] for n in layers],
                         y=[rec[n]["clip_hi"] - rec[n]["clip_lo"] for n in layers], name="quantized range (clip)",
                         marker_color="#2171b5", width=0.3))
    fig.update_layout(barmode="overlay")
    fig.update_xaxes(title="layer (its input)")
    fig.update_yaxes(title="activation value")
    return _layout(fig, f"activation ranges and clipping ({_label(cand)})")


def sensitivity_bar_figure(view: View) -> go.Figure | None:
    """Grouped bars: each layer's sensitivity at each width; the chosen width in the hover text."""
    found = _with_record(view, "quant_sensitivity")
    if found is None:
        return None
    cand, rec = found
    layers = rec.get("layers") or {}
    widths = sorted({int(b) for v in layers.values() for b in (v.get("sensitivity") or {})})
    accuracy = rec.get("measure", "val_drop") == "val_drop"
    fig = go.Figure()
    for b in widths:
        ys = [(layers[n].get("sensitivity") or {}).get(str(b)) for n in layers]
        ys = [None if v is None else (v * 100 if accuracy else v) for v in ys]
        fig.add_trace(go.Bar(x=[esc(n) for n in layers], y=ys, name=f"{b} bits",
                             text=[f"chosen: {layers[n].get('bits')} bits" for n in layers],
                             hovertemplate="%{x}: %{y:.3g}<br>%{text}<extra></extra>"))
    fig.update_layout(barmode="group")
    fig.update_xaxes(title="layer (chosen width: " + ", ".join(f"{esc(n)}={layers[n].get('bits')}" for n in layers) + ")")
    fig.update_yaxes(title="validation accuracy drop (points)" if accuracy else "Hessian proxy tr(H)/n * ||dW||^2")
    return _layout(fig, f"per-layer quantization sensitivity, each layer quantized alone ({_label(cand)})")


def qat_mse_figure(view: View) -> go.Figure | None:
    """Mean squared weight quantization error per layer, before QAT (epoch 0) and after each epoch."""
    found = _with_record(view, "qat_mse")
    if found is None:
        return None
    cand, rec = found
    fig = go.Figure()
    for layer, ys in rec.items():
        fig.add_trace(go.Scatter(x=list(range(len(ys))), y=list(ys), mode="lines+markers", name=esc(layer)))
    fig.update_xaxes(title="epoch (0 = before QAT; the last point ends a partial epoch)", dtick=1)
    fig.update_yaxes(title="mean squared weight quantization error", type="log")
    return _layout(fig, f"QAT: weight quantization error per epoch ({_label(cand)})")


def fp32_fallback_table(view: View) -> str:
    """Layers INT8 candidates kept in FP32, and why (each INT8 runtime runs them in FP32 too)."""
    rows = []
    for c in view.candidates:
        rec = c.records.get("int8_layers")
        if not is_ok(c) or not rec:
            continue
        rows += [f"<tr><td>{_label(c)}</td><td>{esc(n)}</td><td>{esc(i['type'])}</td><td>{esc(i['why'])}</td>"
                 f"<td>{len(rec['int8'])}</td></tr>" for n, i in rec["fp32"].items()]
    if not rows:
        return ""
    return ("<h3>Layers kept in FP32 by INT8 quantization</h3><table><thead><tr><th>candidate</th><th>layer</th>"
            "<th>type</th><th>why</th><th>int8 layers in the model</th></tr></thead><tbody>" + "".join(rows)
            + "</tbody></table>")


def quant_section(view: View) -> str:
    figs = [(f, i) for f, i in ((error_hist_figure(view), "plot-quant-error"), (act_range_figure(view), "plot-act-ranges"),
                                (sensitivity_bar_figure(view), "plot-quant-sensitivity"),
                                (qat_mse_figure(view), "plot-qat-mse")) if f]
    table = fp32_fallback_table(view)
    if not figs and not table:
        return ""
    return ("<section><h2>Quantization</h2>" + "".join(f'<div class="plot">{figure_html(f, i)}</div>' for f, i in figs)
            + table + "</section>")
