"""Weight-sharing section (share.cluster, Deep Compression): what each clustered layer stores, and
the largest layer's weight histogram with its centroids (Han et al. 2016, figure 4).

Drawn from the ``ClusterRecord`` share.cluster attaches (``deep_compression.storage_record`` + ``histogram``);
its byte counts are those of the records the file's own encoder writes. Candidates that reuse a
clustered prefix carry the same record, so each distinct record is shown once, under the candidate
with the shortest recipe; the figure is drawn for the first one.
"""
from __future__ import annotations

from itertools import pairwise

import plotly.graph_objects as go

from ..compress.share.cluster import ClusterLayer, ClusterRecord
from ..pipeline.results import Candidate
from .fmt import NA, count, esc, nbytes, times
from .plots import figure_html
from .quant import _layout  # the report's figure style
from .registry import Section, carriers, draws, section_html
from .view import View, number, ratio

SHARE = Section(
    "Weight sharing (Deep Compression)",
    note='<p class="note">Bytes are each layer\'s record in the Deep Compression container, as its encoder '
         "writes it: name and shape, codebook (4 B per shared value), bias, then the non-zeros' positions "
         "and b-bit cluster indices, fixed width or Huffman coded (positions as relative gaps); the file "
         "holds the smaller one where Huffman coding is on.</p>")
COLUMNS = ("layer", "shared values (2<sup>b</sup>)", "index bits b", "non-zeros / params", "sparsity",
           "codebook", "fixed b-bit indices", "Huffman coded", "in the file", "dense FP32", "smaller")


def shared_records(view: View) -> list[tuple[Candidate, ClusterRecord]]:
    """(candidate, record) of each distinct share.cluster record of a measured candidate."""
    seen: dict[str, tuple[Candidate, ClusterRecord]] = {}
    for c, rec in sorted(carriers(view, ClusterRecord), key=lambda cr: len(cr[0].recipe)):
        if rec.layers:
            seen.setdefault(rec.model_dump_json(), (c, rec))
    return list(seen.values())


def _percent(value) -> str:
    v = number(value)
    return NA if v is None else f"{100 * v:.1f}%"


def _row(name: str, i: ClusterLayer) -> str:
    coded = f"{count(i.bytes_huffman)} B ({esc(i.gap_bits)}-bit gaps)"
    cells = [esc(name), count(i.shared_values), esc(i.bits),
             f"{count(i.nonzero)} / {count(i.params)}", _percent(i.sparsity),
             f"{count(i.codebook_bytes)} B", f"{count(i.bytes_fixed)} B", coded,
             f"<b>{count(i.bytes_stored)} B</b> ({esc(i.stored)})", f"{count(i.dense_bytes)} B",
             times(ratio(i.dense_bytes, i.bytes_stored))]
    return "<tr>" + "".join(f"<td>{v}</td>" for v in cells) + "</tr>"


def _table(cand: Candidate, rec: ClusterRecord) -> str:
    layers = rec.layers
    dense = sum(i.dense_bytes for i in layers.values())
    head = "".join(f"<th>{h}</th>" for h in COLUMNS)
    return (f"<h3>{esc(cand.id)} {esc(cand.label)}: {len(layers)} clustered layers, container "
            f"{nbytes(rec.container_bytes)} (dense FP32 {nbytes(dense)}, "
            f"{times(ratio(dense, rec.container_bytes))} smaller)</h3>"
            f"<table><thead><tr>{head}</tr></thead><tbody>"
            + "".join(_row(n, i) for n, i in layers.items()) + "</tbody></table>")


def histogram_figure(view: View) -> go.Figure | None:
    """The largest clustered layer's non-zero weights before clustering (bars), its centroids after
    k-means (crosses) and after fine-tuning (dots, when they moved)."""
    found = next(iter(shared_records(view)), None)  # every ClusterRecord has its histogram
    if found is None:
        return None
    cand, h = found[0], found[1].histogram
    bins = list(pairwise(h.edges))
    fig = go.Figure(go.Bar(x=[(a + b) / 2 for a, b in bins], y=h.counts,
                           width=[b - a for a, b in bins], marker_color="#6baed6",
                           name="weights before clustering (non-zeros)",
                           hovertemplate="weight %{x:.3g}: %{y}<extra></extra>"))
    marks = [("centroids after k-means", h.centroids_kmeans, "x", "#2b8a3e")]
    if h.centroids != h.centroids_kmeans:
        marks.append(("centroids after fine-tuning", h.centroids, "circle", "#c92a2a"))
    for label, xs, symbol, color in marks:
        fig.add_trace(go.Scatter(x=xs, y=[0] * len(xs or []), mode="markers", name=label, cliponaxis=False,
                                 marker=dict(symbol=symbol, size=9, color=color),
                                 hovertemplate="centroid %{x:.4g}<extra></extra>"))
    fig.update_layout(bargap=0)
    fig.update_xaxes(title="weight value")
    fig.update_yaxes(title="count")
    return _layout(fig, f"weights of layer {esc(h.layer)} and its {len(h.centroids)} shared values "
                        f"({esc(cand.id)} {esc(cand.label)})")


@draws(ClusterRecord, SHARE)
def _share_part(view: View) -> str:
    found = shared_records(view)
    if not found:
        return ""
    fig = histogram_figure(view)
    plot = f'<div class="plot">{figure_html(fig, "plot-share-hist")}</div>' if fig else ""
    return "".join(_table(c, r) for c, r in found) + plot


def share_section(view: View) -> str:
    return section_html(view, SHARE)
