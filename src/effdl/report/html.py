"""The report page: one self-contained HTML file (plotly.js inline, no network) plus pareto.csv."""
from __future__ import annotations

import os
from pathlib import Path

from plotly.offline import get_plotlyjs

from ..core.io import atomic_write
from .findings import findings
from .fmt import esc, name
from .pareto_csv import write_pareto_csv
from .plots import AXIS_TITLE, figure_html, frontier_figure, unplotted
from .sections import card, environment, findings_section, header
from .lowrank import LOWRANK
from .quant import QUANT
from .registry import section_html
from .search import search_section
from .share import SHARE
from .sparsity import SPARSITY
from .table import candidates_table
from ..pipeline.results import Candidate, Results
from .view import AXES, View, load_view

__all__ = ["render_html", "write_report", "write_pareto_csv"]

#: the record-drawn sections in page order (importing their modules registers their drawers)
SECTIONS = (SPARSITY, QUANT, LOWRANK, SHARE)

# System fonts only: the page must render the same with no network.
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1400px;
 padding:16px 24px;color:#1d2329;background:#fff;font-size:14px}
h1{font-size:22px;margin:4px 0 8px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #dde2e6}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:0}
dl.facts dt{color:#5c6670}dl.facts dd{margin:0}
.card{border:1px solid #dde2e6;border-radius:8px;padding:4px 16px 12px;margin-top:16px}
.tiles{display:flex;gap:12px;flex-wrap:wrap;margin:8px 0}
.tile{background:#f3f6f9;border-radius:6px;padding:8px 14px;min-width:170px}
.tile .big{font-size:24px;font-weight:600}.tile .small{color:#5c6670;font-size:12px}
.no-choice{background:#fff4e6;border:2px solid #e8590c;border-radius:6px;padding:12px;font-size:16px;margin:8px 0}
.warn{background:#fff9db;border-left:4px solid #f08c00;padding:6px 12px;margin:8px 0}
table{border-collapse:collapse}th,td{padding:3px 6px;text-align:left;vertical-align:top}
table.cmp th{color:#5c6670;font-weight:500}table.cmp td,table.cmp th{border-bottom:1px solid #eef1f3}
.scroll{overflow-x:auto}table.cands{font-size:12px;white-space:nowrap}
table.cands th{background:#f3f6f9}tr.sub td{border-bottom:1px solid #dde2e6;white-space:normal;padding-top:0}
tr.sub details{display:inline-block;margin-left:16px;vertical-align:top}tr.sub summary{cursor:pointer;color:#1f6fd1}
span.label{white-space:normal;display:inline-block;max-width:190px}
tr.failed td{color:#7b838a;background:#fafafa}.wrap{white-space:normal}
.reason{color:#c92a2a;font-weight:600}
.ok{color:#2b8a3e}.bad{color:#c92a2a;font-weight:600}
.tag{font-size:10px;border-radius:3px;padding:0 4px;color:#fff}.tag.base{background:#111}.tag.chosen{background:#d6336c}
.tag.reused{background:#e8590c}
table.inner{font-size:11px;margin-top:4px}table.inner td,table.inner th{border:1px solid #eef1f3}
table.env th{color:#5c6670;font-weight:500}.note{color:#5c6670;font-size:12px}
ul.findings li{margin:3px 0}.plots{display:grid;grid-template-columns:1fr 1fr;gap:12px}
"""


def _plots(view: View) -> str:
    divs = "".join(
        f'<div class="plot">{figure_html(frontier_figure(view, axis), f"plot-{axis}")}</div>' for axis in AXES
    )
    # one line per candidate: a failed one is missing from both plots for the same reason
    missing: dict[tuple[str, str], tuple[Candidate, str, list[str]]] = {}
    for axis in AXES:
        for cand, why in unplotted(view, axis):
            missing.setdefault((cand.id, why), (cand, why, []))[2].append(AXIS_TITLE[axis].split(" (")[0])
    left_off = [f"<li>{name(c)}: {esc(why)} (left off the {' and '.join(axes)} plot{'s' * (len(axes) > 1)})</li>"
                for c, why, axes in missing.values()]
    listing = '<h3>Not plotted</h3><ul class="unplotted">' + "".join(left_off) + "</ul>" if left_off else ""
    return (
        "<section><h2>Frontier</h2>"
        '<p class="note">Each measured candidate is a point; the step line joins the frontier '
        "(best quality reachable within a footprint); ★ baseline, ◇ chosen; the dashed line is the "
        f"lowest {esc(view.metric)} the goal allows. Quality is plotted on the "
        f"{'validation' if view.select_split == 'val' else 'test'} split, the one the frontier and the choice "
        "are computed on; the table reports the test split.</p>"
        f'<div class="plots">{divs}</div>{listing}</section>'
    )


def render_html(results: Results | dict) -> str:
    """The whole report page as one string; a dict (parsed results.json) is validated first and
    raises ArtifactError when malformed."""
    view = load_view(results)
    prov = view.results.provenance
    title = f"effdl report: {esc(prov.model if prov else '')}"
    return "".join([
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        f"<title>{title}</title><style>{CSS}</style>",
        # plotly.js embedded once, inline: the page works from file:// with no network
        f'<script type="text/javascript">{get_plotlyjs()}</script></head><body>',
        header(view),
        card(view),
        findings_section(findings(view)),
        _plots(view),
        search_section(view),
        *(section_html(view, s) for s in SECTIONS),
        "<section><h2>Candidates</h2>", candidates_table(view), "</section>",
        environment(view),
        "</body></html>\n",
    ])


def write_report(results: Results | dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``out_dir/report.html`` and ``out_dir/pareto.csv`` (each atomically); return their paths."""
    results = Results.from_dict(results)  # validates first, so a bad dict leaves nothing behind
    page = render_html(results)
    out = Path(out_dir)
    csv_path = write_pareto_csv(results, out / "pareto.csv")
    html_path = atomic_write(out / "report.html", page)
    return {"html": html_path, "csv": csv_path}
