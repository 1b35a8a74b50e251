"""The candidates table: every candidate, failed ones included with their reason."""
from __future__ import annotations

from ..pipeline.results import Candidate
from .fmt import NA, count, energy, esc, kv_text, ms, nbytes, num, recipe_text
from .view import AXES, View, fp, is_ok, number

HEAD = ("id", "label", "status", "runtime", "{metric}", "drop", "latency p50 / p90", "size / gzip / deployed",
        "params / non-zeros", "MACs dense / sparse", "energy", "on frontier")


def _pair(a: str, b: str) -> str:
    """'0.210 / 0.252 ms': one shared unit when both values have it."""
    unit_a, unit_b = a.rpartition(" ")[2], b.rpartition(" ")[2]
    if NA not in (a, b) and unit_a == unit_b:
        return f"{a.rpartition(' ')[0]} / {b}"
    return f"{a} / {b}"


def _tags(view: View, cand: Candidate) -> str:
    tags = []
    if cand is view.baseline:
        tags.append('<span class="tag base">baseline</span>')
    if cand is view.chosen:
        tags.append('<span class="tag chosen">chosen</span>')
    if cand.reused_from:  # never let a copied measurement pass for a fresh one
        tags.append(f'<span class="tag reused" title="measurement reused from {esc(cand.reused_from)}: the same '
                    f'model, not measured again">reused from {esc(cand.reused_from)}</span>')
    return " ".join(tags)


def _status(cand: Candidate) -> str:
    status = cand.status
    return f'<span class="{"ok" if status == "ok" else "bad"}">{esc(status)}</span>'


def _reason(cand: Candidate) -> str:
    if is_ok(cand):
        return ""
    return f'<div class="reason">reason: {esc(cand.reason or "no reason recorded")}</div>'


def _frontier(view: View, cand: Candidate) -> str:
    on = [axis for axis in AXES if cand.id in view.frontier_ids(axis)]
    if not on:
        return "no"
    star = " ★" if cand.on_frontier is True else ""  # ★: on the frontier of the goal's target
    return esc(", ".join(on)) + star


def _runtimes(cand: Candidate) -> str:
    runs = cand.runtimes
    if not runs and not cand.runtimes_skipped and not cand.reused_from:
        return NA
    n_ok = sum(1 for r in runs.values() if r.status == "ok")
    rows = []
    for rt, r in runs.items():
        ok = r.status == "ok"
        if ok:
            detail = "parity: " + kv_text(r.parity)
        else:
            detail = esc(r.reason or "no reason recorded")
        rows.append(
            f"<tr><td>{esc(rt)}</td><td class=\"{'ok' if ok else 'bad'}\">{esc(r.status)}</td>"
            f"<td>{ms(r.latency_ms_p50)}</td><td>{ms(r.latency_ms_p90)}</td><td>{nbytes(r.artifact_bytes)}</td>"
            f"<td class=\"wrap\">{detail}</td></tr>"
        )
    for rt, why in cand.runtimes_skipped.items():  # not lowered: cheaper evidence said it could not win
        rows.append(f"<tr><td>{esc(rt)}</td><td>skipped</td><td></td><td></td><td></td><td class=\"wrap\">{esc(why)}</td></tr>")
    reused = (f' <span class="reason">measurement reused from {esc(cand.reused_from)}</span> (the same model: '
              "not timed again)" if cand.reused_from else "")
    skipped = f", {len(cand.runtimes_skipped)} skipped" if cand.runtimes_skipped else ""
    of = f" (of {esc(cand.reused_from)})" if cand.reused_from else ""
    return (
        f"{reused}<details><summary>runtimes{of}: {len(runs)} tried, {n_ok} ok{skipped}</summary><table class=\"inner\">"
        "<tr><th>runtime</th><th>status</th><th>p50</th><th>p90</th><th>loads</th><th>parity / reason</th></tr>"
        + "".join(rows) + "</table></details>"
    )


def _stages(c: Candidate) -> str:
    """Where the candidate's wall time went (apply, store, measure <runtime>, evaluate)."""
    if not c.stage_seconds:
        return ""
    total = sum(c.stage_seconds.values())
    parts = ", ".join(f"{esc(k)} {v:.1f} s" for k, v in sorted(c.stage_seconds.items(), key=lambda kv: -kv[1]))
    return f'<details><summary>time: {total:.1f} s</summary><span class="note">{parts}</span></details>'


def candidates_table(view: View) -> str:
    head = "".join(f"<th>{esc(h.format(metric=view.metric))}</th>" for h in HEAD)
    rows = []
    for c in view.candidates:
        # a failed candidate's partial numbers are shown (greyed, next to its reason), never plotted
        f = lambda key: fp(c, key)  # noqa: E731
        quality, drop = view.quality(c), number(c.quality_drop)
        cells = [
            f"<b>{esc(c.id)}</b> {_tags(view, c)}",
            f'<span class="label">{esc(c.label)}</span>',
            _status(c),
            esc(c.runtime) or NA,
            num(quality),
            view.drop_text(drop),
            _pair(ms(f("latency_ms_p50")), ms(f("latency_ms_p90"))),
            f"{nbytes(f('size_bytes'))} / {nbytes(f('size_bytes_gzip'))} / {nbytes(f('deployed_bytes'))}",
            f"{count(f('params'))} / {count(f('nonzero_params'))}",
            f"{count(f('macs'))} / {count(f('macs_sparse'))}",
            energy(f("energy_uj")),
            _frontier(view, c) if is_ok(c) else "no",
        ]
        cls = "" if is_ok(c) else "failed"
        tds = "".join(f"<td>{x}</td>" for x in cells)
        rows.append(f'<tr id="cand-{esc(c.id)}" class="main {cls}">{tds}</tr>')
        # recipe and per-runtime results on a full-width line under the numbers
        rows.append(
            f'<tr class="sub {cls}"><td></td><td colspan="{len(HEAD) - 1}">{_reason(c)}recipe: '
            f'<code>{recipe_text(c.recipe)}</code>{_runtimes(c)}{_stages(c)}</td></tr>'
        )
    if view.goal.relative:
        drop_note = "drop is how much worse than the baseline, as a percentage of the baseline's value"
    elif view.goal.higher_is_better is False:
        drop_note = "drop is candidate minus baseline (lower is better)"
    else:
        drop_note = "drop is baseline minus candidate (1 pt = 0.01)"
    return (
        '<div class="scroll"><table class="cands"><thead><tr>' + head + "</tr></thead><tbody>"
        + "".join(rows) + "</tbody></table></div>"
        + '<p class="note">★ on the frontier of the goal\'s target. Latency is measured on the runtime named in '
        "the row; size is effdl's compact file (what a size goal minimises), deployed the artifact that runtime "
        "loads (e.g. a dense ONNX file: sparsity saves no bytes there unless the format packs it; "
        f"each runtime's under 'loads'); {drop_note}.</p>"
    )
