"""Header, the baseline-vs-chosen card, findings and environment sections of the report."""
from __future__ import annotations

from typing import Any

from .findings import Finding, size_gain, speedup
from ..pipeline.results import Candidate, Provenance
from .fmt import NA, count, energy, esc, ms, nbytes, num, times
from .view import View, fp, number


def header(view: View) -> str:
    r, goal = view.results, view.goal
    prov = r.provenance or Provenance()
    max_drop = view.drop_text(goal.max_drop, signed=False)
    worse = "below" if goal.higher_is_better is not False else "above"  # lower-is-better: worse is higher
    items = [
        ("model", esc(prov.model)),
        ("data", esc(prov.data)),
        ("goal", f"minimise <b>{esc(goal.target)}</b> with {esc(view.metric)} at most "
                 f"{max_drop} {worse} the baseline"),
        ("batch size", esc(goal.batch_size)),
        ("created", esc(r.created)),
        ("effdl version", esc(r.effdl_version)),
        ("schema version", esc(r.schema_version)),
    ]
    if prov.command:
        items.append(("command", f"<code>{esc(prov.command)}</code>"))
    title = f"effdl report: {esc(prov.model or 'model')} on {esc(prov.data or 'data')}"
    return f"<header><h1>{title}</h1>" + _dl(items) + "</header>"


def _dl(items: list[tuple[str, str]]) -> str:
    return '<dl class="facts">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def _tile(big: str, small: str) -> str:
    return f'<div class="tile"><div class="big">{big}</div><div class="small">{small}</div></div>'


def _reused(c: Candidate) -> str:
    """A reused measurement is never shown as a fresh one."""
    return f' <span class="reason">(measurement reused from {esc(c.reused_from)})</span>' if c.reused_from else ""


def _card_rows(view: View, cands: list[Candidate]) -> list[tuple[str, list[str]]]:
    def both(key: str, show) -> list[str]:
        return [show(fp(c, key)) for c in cands]

    return [
        ("candidate", [f"<b>{esc(c.id)}</b> {esc(c.label)}" for c in cands]),
        ("runtime", [(esc(c.runtime) or NA) + _reused(c) for c in cands]),
        (esc(view.metric), [num(view.quality(c)) for c in cands]),
        ("drop vs baseline", [view.drop_text(c.quality_drop) for c in cands]),
        ("latency p50 / p90", [f"{ms(fp(c, 'latency_ms_p50'))} / {ms(fp(c, 'latency_ms_p90'))}" for c in cands]),
        ("throughput", [NA if fp(c, "throughput_per_s") is None else f"{fp(c, 'throughput_per_s'):,.0f} /s"
                        for c in cands]),
        ("size on disk", both("size_bytes", nbytes)),
        ("size gzip -9", both("size_bytes_gzip", nbytes)),
        ("params / non-zeros", [f"{count(fp(c, 'params'))} / {count(fp(c, 'nonzero_params'))}" for c in cands]),
        ("MACs dense / sparse", [f"{count(fp(c, 'macs'))} / {count(fp(c, 'macs_sparse'))}" for c in cands]),
        ("energy (estimate)", both("energy_uj", energy)),
        ("peak memory", both("peak_mem_bytes", nbytes)),
    ]


def card(view: View) -> str:
    """Baseline next to the chosen candidate, with the headline ratios."""
    base, chosen = view.baseline, view.chosen
    reason = esc(view.results.chosen_reason or "no reason recorded")
    if chosen is None:
        rows = _card_rows(view, [base])
        top = f'<div class="no-choice"><b>No candidate was chosen.</b> {reason}</div>'
        head = "<tr><th></th><th>baseline</th></tr>"
    else:
        rows = _card_rows(view, [base, chosen])
        s, g, gz = speedup(view, chosen), size_gain(view, chosen), size_gain(view, chosen, "size_bytes_gzip")
        drop = number(chosen.quality_drop)
        top = (
            '<div class="tiles">'
            + _tile(times(s), f"speed-up (baseline p50 / chosen p50, {esc(chosen.runtime)})")
            + _tile(times(g), f"smaller on disk ({times(gz)} after gzip)")
            + _tile(view.drop_text(None if drop is None else -drop),
                    f"{esc(view.metric)} change vs baseline (allowed: −{view.drop_text(view.max_drop, signed=False)})")
            + "</div>"
            + f'<p class="why"><b>Why {esc(chosen.id)}:</b> {reason}</p>'
        )
        head = "<tr><th></th><th>baseline</th><th>chosen</th></tr>"
    body = "".join(f"<tr><th>{k}</th>" + "".join(f"<td>{v}</td>" for v in vals) + "</tr>" for k, vals in rows)
    return (
        '<section class="card"><h2>Baseline vs chosen</h2>' + top
        + f'<table class="cmp">{head}{body}</table></section>'
    )


def findings_section(found: list[Finding]) -> str:
    if not found:
        body = "<p>Every measured candidate is faster and smaller than the baseline and within the allowed drop.</p>"
    else:
        body = '<ul class="findings">' + "".join(f'<li id="finding-{esc(f.id)}">{f.text}</li>' for f in found) + "</ul>"
    return (
        '<section><h2>Where techniques gained nothing</h2>'
        f"<p class=\"note\">Gains under 5% count as none (timing noise on a shared CPU).</p>{body}</section>"
    )


def _value(v: Any) -> str:
    if isinstance(v, dict):
        if not v:
            return NA
        return '<table class="env">' + "".join(
            f"<tr><th>{esc(k)}</th><td>{_value(x)}</td></tr>" for k, x in v.items()) + "</table>"
    if isinstance(v, list):
        return NA if not v else "<ul>" + "".join(f"<li>{_value(x)}</li>" for x in v) + "</ul>"
    return NA if v is None else esc(v)


def environment(view: View) -> str:
    env = view.results.environment
    warnings = env.get("warnings")
    warn = ""
    if warnings:
        items = warnings if isinstance(warnings, list) else [warnings]
        warn = '<div class="warn"><b>Measurement warnings</b><ul>' + "".join(
            f"<li>{esc(w)}</li>" for w in items) + "</ul></div>"
    rest = {k: v for k, v in env.items() if not (k == "warnings" and warn)}  # shown once, in the box
    return f"<section><h2>Environment</h2>{warn}{_value(rest)}</section>"
