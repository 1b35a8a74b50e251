"""Low-rank section: which layers each decomposition factorized (and how), and which it left dense, why.

Drawn from the records lowrank.* techniques attach (``{"layers": {name: info + params_before/after},
"skipped": {name: reason}}``); candidates that reuse a decomposed prefix carry the same record, so
each distinct record is shown once, under the candidate with the shortest recipe.
"""
from __future__ import annotations

from .fmt import count, esc
from .view import View, is_ok

_SHOWN = ("params_before", "params_after")


def _info(info: dict) -> str:
    return ", ".join(f"{esc(k)}={esc(v)}" for k, v in info.items() if k not in _SHOWN)


def lowrank_section(view: View) -> str:
    seen: set[str] = set()
    blocks = []
    for c in sorted(view.candidates, key=lambda c: len(c.recipe)):
        for tech, rec in c.records.items():
            if not tech.startswith("lowrank.") or not is_ok(c) or not isinstance(rec, dict):
                continue
            key = tech + repr(sorted(rec.get("layers", {}).items())) + repr(sorted(rec.get("skipped", {}).items()))
            if key in seen:
                continue
            seen.add(key)
            rows = [f"<tr><td>{esc(n)}</td><td>factorized</td><td>{_info(i)}</td>"
                    f"<td>{count(i.get('params_before'))} &rarr; {count(i.get('params_after'))}</td></tr>"
                    for n, i in rec.get("layers", {}).items()]
            rows += [f"<tr><td>{esc(n)}</td><td>left dense</td><td>{esc(why)}</td><td></td></tr>"
                     for n, why in rec.get("skipped", {}).items()]
            blocks.append(
                f"<h3>{esc(c.id)} {esc(c.label)}: {esc(tech)}, parameters "
                f"{count(rec.get('params_before'))} &rarr; {count(rec.get('params_after'))} in the decomposed layers</h3>"
                "<table><thead><tr><th>layer</th><th>outcome</th><th>how / why</th><th>params</th></tr></thead><tbody>"
                + "".join(rows) + "</tbody></table>")
    return f"<section><h2>Low-rank factorization</h2>{''.join(blocks)}</section>" if blocks else ""
