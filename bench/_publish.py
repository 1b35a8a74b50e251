"""What every bench script does at the end: the environment section, and writing the results
(markdown table + JSON, each atomically) while printing the table."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def environment_block(meta: dict[str, Any]) -> list[str]:
    return ["", "## Environment", "", "```json", json.dumps(meta["environment"], indent=1), "```", ""]


def publish(out: Path, text: str, payload: dict[str, Any], *, echo: bool = True) -> None:
    from effdl.core.io import atomic_write, write_json

    if echo:
        print(text)
    atomic_write(out, text)
    write_json(out.with_suffix(".json"), payload)


def bench_main(doc: str, name: str, modes: dict[str, dict], run, render, argv: list[str] | None = None, *,
               threads: int = 1, steady_malloc: bool = False, add_args=None, adjust=None) -> int:
    """The command line every bench shares: ``--quick`` (mode 'quick', else 'full'), ``--threads``,
    ``--out`` and ``--render`` (re-render the tables from a results .json). Runs ``run(mode, log)``
    with torch's intra-op threads pinned and publishes ``render(results, meta)`` with the environment.
    ``steady_malloc``: re-exec with the steady glibc malloc settings first (timing benches)."""
    import argparse
    import sys
    import time

    ap = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the short mode (minutes)")
    ap.add_argument("--threads", type=int, default=threads, help="torch intra-op threads")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / f"{name}.md")
    ap.add_argument("--render", type=Path, help="only re-render the tables from this results .json")
    if add_args is not None:
        add_args(ap)
    args = ap.parse_args(argv)
    if args.render:
        from effdl.core.io import atomic_write

        data = json.loads(args.render.read_text())
        atomic_write(args.out, render(data["results"], data["meta"]))
        return 0
    if steady_malloc:
        from effdl.metrics.latency import reexec_with_steady_malloc

        reexec_with_steady_malloc([str(Path(sys.argv[0]).resolve()), *(argv if argv is not None else sys.argv[1:])])
    import torch

    from effdl.metrics.env import environment

    torch.set_num_threads(args.threads)
    mode_name = "quick" if args.quick else "full"
    mode = dict(modes[mode_name])
    if adjust is not None:
        adjust(mode, args)
    start = time.perf_counter()
    if steady_malloc:  # a timing bench: say how busy the machine was
        from runtimes import CpuLoad

        load = CpuLoad()
    results = run(mode, lambda s: print(s, flush=True))
    meta = {"mode_name": mode_name, "mode": mode, "threads": args.threads, "seconds": time.perf_counter() - start,
            "command": " ".join(["python", f"bench/{name}.py", *(argv if argv is not None else sys.argv[1:])]),
            "environment": environment(threads=args.threads)}
    if steady_malloc:
        meta["foreign_cpu_fraction"] = round(load.foreign_fraction(), 3)
    publish(args.out, render(results, meta), {"meta": meta, "results": results}, echo=False)
    print(f"wrote {args.out}")
    return 0


def zoo_task(model_name: str, data: str = "mnist"):
    """The trained zoo baseline ``model_name`` on a bundled data set, as an ImageClassification task."""
    from effdl.core.tasks import ImageClassification
    from effdl.data import load_data
    from effdl.zoo import trained

    splits = load_data(data)
    return ImageClassification(trained(model_name, data), splits.train, splits.val, splits.test,
                               num_classes=splits.num_classes)
