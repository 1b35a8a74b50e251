"""Low-rank section: which layers each decomposition factorized (and how), and which it left dense, why.

Drawn from the ``LowRankRecord`` each lowrank.* technique attaches (factorized layers with how
and their parameters before/after, skipped layers with why); candidates that reuse a decomposed prefix carry the same record, so
each distinct record is shown once, under the candidate with the shortest recipe.
"""
from __future__ import annotations

from ..compress.lowrank.common import LowRankLayer, LowRankRecord
from .fmt import count, esc
from .registry import Section, carriers, draws, section_html
from .view import View

LOWRANK = Section("Low-rank factorization")
_SHOWN = ("params_before", "params_after")


def _info(info: LowRankLayer) -> str:
    """How the layer was factorized (rank, modes, ...), in its record's field order."""
    return ", ".join(f"{esc(k)}={esc(v)}" for k, v in info.model_dump().items() if k not in _SHOWN)


@draws(LowRankRecord, LOWRANK)
def _lowrank_part(view: View) -> str:
    seen: set[str] = set()
    blocks = []
    for c, rec in sorted(carriers(view, LowRankRecord), key=lambda cr: len(cr[0].recipe)):
        key = rec.key + rec.model_dump_json(include={"layers", "skipped"})
        if key in seen:
            continue
        seen.add(key)
        rows = [f"<tr><td>{esc(n)}</td><td>factorized</td><td>{_info(i)}</td>"
                f"<td>{count(i.params_before)} &rarr; {count(i.params_after)}</td></tr>"
                for n, i in rec.layers.items()]
        rows += [f"<tr><td>{esc(n)}</td><td>left dense</td><td>{esc(why)}</td><td></td></tr>"
                 for n, why in rec.skipped.items()]
        blocks.append(
            f"<h3>{esc(c.id)} {esc(c.label)}: {esc(rec.key)}, parameters "
            f"{count(rec.params_before)} &rarr; {count(rec.params_after)} in the decomposed layers</h3>"
            "<table><thead><tr><th>layer</th><th>outcome</th><th>how / why</th><th>params</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")
    return "".join(blocks)


def lowrank_section(view: View) -> str:
    return section_html(view, LOWRANK)
