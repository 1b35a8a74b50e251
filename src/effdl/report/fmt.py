"""Number and text formatting for the report. Every function returns HTML-safe text."""
from __future__ import annotations

import html
import json
from typing import Any

from .view import number

NA = "—"  # shown where nothing was measured


def esc(value: Any) -> str:
    """html.escape of any value's text (None -> empty)."""
    return "" if value is None else html.escape(str(value), quote=True)


def num(value: Any, digits: int = 4) -> str:
    v = number(value)
    return NA if v is None else f"{v:.{digits}f}"


def count(value: Any) -> str:
    """Thousands-separated integer (params, MACs)."""
    v = number(value)
    return NA if v is None else f"{round(v):,}"


def nbytes(value: Any) -> str:
    v = number(value)
    if v is None:
        return NA
    for unit, scale, digits in (("GB", 1e9, 2), ("MB", 1e6, 2), ("kB", 1e3, 1)):
        if abs(v) >= scale:
            return f"{v / scale:.{digits}f} {unit}"
    return f"{round(v)} B"


def ms(value: Any) -> str:
    v = number(value)
    if v is None:
        return NA
    return f"{v:.3f} ms" if v < 10 else f"{v:.1f} ms"


def pt(drop: Any, signed: bool = True) -> str:
    """A metric difference in points (the schema's convention: 0.01 = 1 point)."""
    v = number(drop)
    if v is None:
        return NA
    return f"{v * 100:+.2f} pt" if signed else f"{v * 100:.2f} pt"


def times(value: float | None) -> str:
    return NA if value is None else f"{value:.2f}x"


def energy(value: Any) -> str:
    v = number(value)
    return NA if v is None else f"{v:.3g} µJ"


def _compact(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)
    return str(value)


def recipe_text(recipe: Any) -> str:
    """technique(k=v, ...) + technique(...): the recipe on one line."""
    if not recipe:
        return "unmodified"
    if not isinstance(recipe, list):
        return esc(_compact(recipe))
    steps = []
    for step in recipe:
        if not isinstance(step, dict):
            steps.append(esc(_compact(step)))
            continue
        args = ", ".join(f"{k}={_compact(v)}" for k, v in step.items() if k not in ("technique", "version"))
        steps.append(esc(f"{step.get('technique', '?')}({args})"))
    return " + ".join(steps)


def kv_text(mapping: Any) -> str:
    """k=v, k=v of a flat dict (parity numbers), floats to 4 significant digits."""
    if not isinstance(mapping, dict) or not mapping:
        return NA
    parts = []
    for k, v in mapping.items():
        shown = f"{v:.4g}" if isinstance(v, float) else _compact(v)
        parts.append(f"{k}={shown}")
    return esc(", ".join(parts))


def name(cand) -> str:
    """'c03 (prune 80%)' of a Candidate as escaped text."""
    return esc(f"{cand.id} ({cand.label})" if cand.label else cand.id)
