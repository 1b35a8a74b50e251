"""The candidates table: every candidate, failed ones included with their reason."""
from __future__ import annotations

from .fmt import NA, count, energy, esc, kv_text, ms, nbytes, num, pt, recipe_text
from .view import AXES, View, fp, is_ok, number

HEAD = ("id", "label", "status", "runtime", "{metric}", "drop", "latency p50 / p90", "size / gzip",
        "params / non-zeros", "MACs dense / sparse", "energy", "on frontier")


def _pair(a: str, b: str) -> str:
    """'0.210 / 0.252 ms': one shared unit when both values have it."""
    unit_a, unit_b = a.rpartition(" ")[2], b.rpartition(" ")[2]
    if NA not in (a, b) and unit_a == unit_b:
        return f"{a.rpartition(' ')[0]} / {b}"
    return f"{a} / {b}"


def _tags(view: View, cand: dict) -> str:
    tags = []
    if cand is view.baseline:
        tags.append('<span class="tag base">baseline</span>')
    if cand is view.chosen:
        tags.append('<span class="tag chosen">chosen</span>')
    return " ".join(tags)


def _status(cand: dict) -> str:
    status = cand.get("status") or "unknown"
    return f'<span class="{"ok" if status == "ok" else "bad"}">{esc(status)}</span>'


def _reason(cand: dict) -> str:
    if is_ok(cand):
        return ""
    return f'<div class="reason">reason: {esc(cand.get("reason") or "no reason recorded")}</div>'


def _frontier(view: View, cand: dict) -> str:
    on = [axis for axis in AXES if cand["id"] in view.frontier_ids(axis)]
    if not on:
        return "no"
    star = " ★" if cand.get("on_frontier") is True else ""  # ★: on the frontier of the goal's target
    return esc(", ".join(on)) + star


def _runtimes(cand: dict) -> str:
    runs = cand.get("runtimes")
    if not isinstance(runs, dict) or not runs:
        return NA
    n_ok = sum(1 for r in runs.values() if isinstance(r, dict) and r.get("status") == "ok")
    rows = []
    for rt, r in runs.items():
        r = r if isinstance(r, dict) else {}
        ok = r.get("status") == "ok"
        if ok:
            detail = "parity: " + kv_text(r.get("parity"))
        else:
            detail = esc(r.get("reason") or "no reason recorded")
        rows.append(
            f"<tr><td>{esc(rt)}</td><td class=\"{'ok' if ok else 'bad'}\">{esc(r.get('status'))}</td>"
            f"<td>{ms(r.get('latency_ms_p50'))}</td><td>{ms(r.get('latency_ms_p90'))}</td>"
            f"<td class=\"wrap\">{detail}</td></tr>"
        )
    return (
        f"<details><summary>runtimes: {len(runs)} tried, {n_ok} ok</summary><table class=\"inner\">"
        "<tr><th>runtime</th><th>status</th><th>p50</th><th>p90</th><th>parity / reason</th></tr>"
        + "".join(rows) + "</table></details>"
    )


def candidates_table(view: View) -> str:
    head = "".join(f"<th>{esc(h.format(metric=view.metric))}</th>" for h in HEAD)
    rows = []
    for c in view.candidates:
        # a failed candidate's partial numbers are shown (greyed, next to its reason), never plotted
        f = lambda key: fp(c, key)  # noqa: E731
        quality, drop = view.quality(c), number(c.get("quality_drop"))
        cells = [
            f"<b>{esc(c['id'])}</b> {_tags(view, c)}",
            f'<span class="label">{esc(c.get("label"))}</span>',
            _status(c),
            esc(c.get("runtime")) or NA,
            num(quality),
            pt(drop),
            _pair(ms(f("latency_ms_p50")), ms(f("latency_ms_p90"))),
            f"{nbytes(f('size_bytes'))} / {nbytes(f('size_bytes_gzip'))}",
            f"{count(f('params'))} / {count(f('nonzero_params'))}",
            f"{count(f('macs'))} / {count(f('macs_sparse'))}",
            energy(f("energy_uj")),
            _frontier(view, c) if is_ok(c) else "no",
        ]
        cls = "" if is_ok(c) else "failed"
        tds = "".join(f"<td>{x}</td>" for x in cells)
        rows.append(f'<tr id="cand-{esc(c["id"])}" class="main {cls}">{tds}</tr>')
        # recipe and per-runtime results on a full-width line under the numbers
        rows.append(
            f'<tr class="sub {cls}"><td></td><td colspan="{len(HEAD) - 1}">{_reason(c)}recipe: '
            f'<code>{recipe_text(c.get("recipe"))}</code>{_runtimes(c)}</td></tr>'
        )
    return (
        '<div class="scroll"><table class="cands"><thead><tr>' + head + "</tr></thead><tbody>"
        + "".join(rows) + "</tbody></table></div>"
        + '<p class="note">★ on the frontier of the goal\'s target. Latency and size are measured '
        "on the runtime named in the row; drop is baseline minus candidate (1 pt = 0.01).</p>"
    )
