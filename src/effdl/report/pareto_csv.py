"""pareto.csv: one row per candidate, in results order (columns per docs/results-schema.md)."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from ..core.io import atomic_write
from ..pipeline.results import Results
from .view import load_view, number

FOOTPRINT_COLUMNS = ("latency_ms_p50", "size_bytes", "params", "nonzero_params")


def _cell(value: Any) -> Any:
    """Numbers as written (repr round-trips floats), booleans lower-case, missing as empty."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return "" if number(value) is None else value
    return "" if value is None else str(value)


def pareto_rows(results: Results | dict) -> tuple[list[str], list[list[Any]]]:
    view = load_view(results)
    header = ["id", "label", "status", "runtime", view.metric, "quality_drop", *FOOTPRINT_COLUMNS, "on_frontier"]
    rows = []
    for c in view.candidates:
        values = [c.id, c.label, c.status, c.runtime, c.quality.get(view.metric), c.quality_drop,
                  *(getattr(c.footprint, k) for k in FOOTPRINT_COLUMNS), c.on_frontier is True]
        rows.append([_cell(v) for v in values])
    return header, rows


def write_pareto_csv(results: Results | dict, path: str | os.PathLike) -> Path:
    header, rows = pareto_rows(results)

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            out = csv.writer(f)
            out.writerow(header)
            out.writerows(rows)

    return atomic_write(path, write)
