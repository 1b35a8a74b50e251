"""Plain-text summary of a results dict: the table rows and the baseline-vs-chosen headline."""
from __future__ import annotations

from typing import Any


def _pts(delta: float) -> str:
    return f"{delta * 100 + 0.0:+.2f}"  # + 0.0 turns -0.0 into 0.0


def _by_id(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in results["candidates"]}


def summary_rows(results: dict[str, Any]) -> list[tuple[str, ...]]:
    metric = results["goal"]["metric"]
    rows = []
    for c in results["candidates"]:
        if c["status"] != "ok":
            rows.append((c["id"], c["label"], "-", "failed", "-", "-", "-", c.get("reason") or ""))
            continue
        f = c["footprint"]
        rows.append((
            c["id"], c["label"], c["runtime"], f"{c['quality'][metric]:.4f}", _pts(c["quality_drop"]),
            f"{f['latency_ms_p50']:.4f}", f"{f['size_bytes'] / 1024:.1f}", "yes" if c["on_frontier"] else "",
        ))
    return rows


def headline(results: dict[str, Any]) -> list[str]:
    """The lines the README quotes: baseline, chosen, and the measured ratios between them."""
    metric = results["goal"]["metric"]
    cands = _by_id(results)
    base = cands[results["baseline"]]
    bf = base["footprint"]
    lines = [
        f"baseline {base['id']} ({base['label']}): {metric} {base['quality'][metric]:.4f}, "
        f"{bf['latency_ms_p50']:.4f} ms p50 at batch {bf['batch_size']} on {base['runtime']}, "
        f"{bf['size_bytes']:,} bytes"
    ]
    if not results["chosen"]:
        lines.append(f"chosen: none — {results['chosen_reason']}")
        return lines
    ch = cands[results["chosen"]]
    cf = ch["footprint"]
    lines.append(
        f"chosen {ch['id']} ({ch['label']}) on {ch['runtime']}: {metric} {ch['quality'][metric]:.4f} "
        f"({_pts(-ch['quality_drop'])} points on test, {_pts(-ch['quality_drop_val'])} on validation), "
        f"{cf['latency_ms_p50']:.4f} ms p50 ({bf['latency_ms_p50'] / cf['latency_ms_p50']:.1f}x faster), "
        f"{cf['size_bytes']:,} bytes ({bf['size_bytes'] / cf['size_bytes']:.1f}x smaller)"
    )
    ok = sum(c["status"] == "ok" for c in results["candidates"])
    lines.append(f"{ok} of {len(results['candidates'])} candidates measured; frontier ({results['goal']['target']}): "
                 f"{', '.join(results['frontier'][results['goal']['target']])}")
    return lines
