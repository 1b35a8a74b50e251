"""Grid cost: the shrink-and-improve grid measured on every runtime vs with the RuntimePlanner.

    python bench/grid_cost.py --quick     # results in bench/results/grid_cost.md

The same candidates (``effdl.pipeline.strategies.shrink_and_improve`` on LeNet-5 / MNIST) are
measured twice, each arm in its own fresh Python process with its own empty inductor cache
directory (so neither inherits the other's torch.compile work), the planned arm first:

* ``planned``: ``MeasureSettings(all_runtimes=False)`` with one ``RuntimePlanner`` for the run: a
  candidate is lowered only to the runtimes within 1.25x of the fastest on some earlier candidate of
  its runtime kind (plus form-specific and never-measured ones), and an identical model reuses the
  earlier measurement;
* ``all``: ``MeasureSettings(all_runtimes=True)``: every candidate on every runtime it fits (effdl's
  behaviour before the planner).

Each arm is the loop of ``effdl.pipeline.optimize.optimize`` (``measure_candidate`` per candidate,
then ``finalize``: frontier, choice, export, report) with the planner handed to ``measure_candidate``:
``optimize`` itself does not create a planner yet. Reported per arm: wall seconds of the whole run,
the seconds spent lowering/timing/evaluating (the part the planner cuts; building and fine-tuning are
the same in both), runtimes measured and skipped, and the chosen candidate with its runtime, latency
and validation accuracy. The goal: at most half the wall time for the same chosen model quality.
The fine-tuning is seeded identically in both arms; the latencies are one measurement each on a
shared 2-core machine, so two runtimes within a few percent may swap between arms.

``--quick`` measures the whole grid with short training (0.25 fine-tuning epoch, 0.5 distillation
epoch) and 10 timing repeats; the full mode uses the strategy's default epochs and 30 repeats.
Whether skipping ever dropped a winner is checked per candidate: the runtime that won a candidate
in the ``all`` arm, was it tried in the ``planned`` arm?
"""
from __future__ import annotations

from _publish import bench_main, environment_block

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = {"quick": {"ids": None, "finetune_epochs": 0.25, "distill_epochs": 0.5, "repeats": 10},
         "full": {"ids": None, "finetune_epochs": 2.0, "distill_epochs": 8.0, "repeats": 30}}
ARMS = ("planned", "all")  # the planned arm first: any warm-up left on the machine favours the other


def arm(name: str, mode: dict, threads: int, out_dir: Path) -> dict:
    """One arm, in this process: measure the grid and choose; the figures the table needs."""
    import torch

    from effdl import Goal
    from effdl.pipeline.candidate import PrefixCache, measure_candidate
    from effdl.pipeline.optimize import finalize, resolve_goal
    from effdl.pipeline.results import MeasureSettings
    from effdl.pipeline.runtime_choice import RuntimePlanner
    from effdl.pipeline.strategies import shrink_and_improve
    from effdl.specs import build_task

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    task = build_task("zoo:lenet5", "mnist")
    specs = shrink_and_improve(finetune_epochs=mode["finetune_epochs"], distill_epochs=mode["distill_epochs"],
                               model=task.model)
    if mode["ids"]:
        specs = [s for s in specs if s.id in mode["ids"]]
    measure = MeasureSettings(threads=threads, repeats=mode["repeats"], all_runtimes=name == "all")
    t0 = time.perf_counter()
    goal = resolve_goal(task, Goal(), measure)
    planner, cache, cands = RuntimePlanner(), PrefixCache(task), []
    for spec in specs:
        torch.manual_seed(0)  # each candidate's fine-tuning starts from the same RNG state in both arms
        cand = measure_candidate(spec, cache, task, out_dir, goal, measure, planner=planner)
        print(f"[{name}] {cand.id} {cand.label}: {cand.status} {cand.runtime} tried {list(cand.runtimes)} "
              f"skipped {list(cand.runtimes_skipped)}{' reused from ' + cand.reused_from if cand.reused_from else ''} "
              f"({cand.seconds:.0f} s)", flush=True)
        cands.append(cand)
    res = finalize(cands, out_dir=out_dir, goal=goal, provenance=None, threads=threads)
    wall = time.perf_counter() - t0
    chosen = res.chosen_candidate
    metric = goal.spec.name
    measuring = sum(v for c in res.candidates for k, v in c.stage_seconds.items()
                    if k.startswith("measure ") or k == "evaluate")
    return {
        "arm": name, "wall_s": round(wall, 1), "measure_s": round(measuring, 1), "candidates": len(cands),
        "measured": sum(len(c.runtimes) for c in res.candidates if c.reused_from is None),
        "skipped": sum(len(c.runtimes_skipped) for c in res.candidates if c.reused_from is None),
        "reused": sum(c.reused_from is not None for c in res.candidates),
        "chosen": chosen.id if chosen else None, "chosen_label": chosen.label if chosen else None,
        "chosen_runtime": chosen.runtime if chosen else None,
        "chosen_latency_ms": chosen.footprint.latency_ms_p50 if chosen else None,
        "chosen_val": chosen.quality_val[metric] if chosen else None, "metric": metric,
        "per_candidate": [{"id": c.id, "label": c.label, "status": c.status, "runtime": c.runtime,
                           "val": c.quality_val.get(metric), "latency_ms": c.footprint.latency_ms_p50,
                           "tried": list(c.runtimes), "skipped": c.runtimes_skipped, "reused_from": c.reused_from,
                           "seconds": c.seconds} for c in res.candidates],
    }


def run(mode: dict, log) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="grid_cost_") as tmp:
        for name in ARMS:
            out = Path(tmp) / name
            result = Path(tmp) / f"{name}.json"
            log(f"arm {name}: measuring in a fresh process ...")
            cmd = [sys.executable, str(Path(__file__).resolve()), "--arm", name, "--arm-mode", json.dumps(mode),
                   "--arm-out", str(out), "--arm-result", str(result), "--threads", str(mode["threads"])]
            env = {**os.environ, "PYTHONPATH": str(ROOT / "bench"),
                   "TORCHINDUCTOR_CACHE_DIR": str(Path(tmp) / f"inductor_{name}")}
            subprocess.run(cmd, check=True, cwd=ROOT, env=env)
            rows.append(json.loads(result.read_text()))
            log(f"arm {name}: {rows[-1]['wall_s']:.0f} s, chose {rows[-1]['chosen']} {rows[-1]['chosen_label']}")
    return rows


def render(rows: list[dict], meta: dict) -> str:
    by = {r["arm"]: r for r in rows}
    lines = ["# Grid cost: every runtime vs the RuntimePlanner (shrink-and-improve, LeNet-5 / MNIST)", "",
             f"Mode `{meta['mode_name']}`: {meta['mode']}. Run: `python bench/grid_cost.py"
             f"{' --quick' if meta['mode_name'] == 'quick' else ''}` ({meta['seconds']:.0f} s). Each arm in a fresh "
             "process, the planned arm first.", "",
             "| arm | candidates | wall s | measuring s | runtimes measured | skipped | reused | chosen | runtime | "
             "p50 ms (batch 1) | val accuracy |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        val = f"{100 * r['chosen_val']:.2f}" if r["chosen_val"] is not None else "-"
        lat = f"{r['chosen_latency_ms']:.4g}" if r["chosen_latency_ms"] is not None else "-"
        lines.append(f"| {r['arm']} | {r['candidates']} | {r['wall_s']:.0f} | {r['measure_s']:.0f} | {r['measured']} | "
                     f"{r['skipped']} | {r['reused']} | {r['chosen']} {r['chosen_label']} | {r['chosen_runtime']} | "
                     f"{lat} | {val} |")
    if {"planned", "all"} <= set(by):
        p, a = by["planned"], by["all"]
        same = p["chosen"] == a["chosen"]
        dq = (p["chosen_val"] - a["chosen_val"]) * 100 if None not in (p["chosen_val"], a["chosen_val"]) else None
        lines += ["", f"- wall time: planned / all = {p['wall_s'] / a['wall_s']:.2f} (goal <= 0.5); measuring time: "
                      f"{p['measure_s'] / a['measure_s']:.2f}",
                  f"- chosen: {'the same candidate' if same else 'different candidates'} ({p['chosen']} vs {a['chosen']}); "
                  f"validation accuracy difference {dq:+.2f} points" if dq is not None else "- chosen: none in an arm"]
        won = {c["id"]: c["runtime"] for c in a["per_candidate"] if c["runtime"]}
        lost = [f"{c['id']} ({won[c['id']]})" for c in p["per_candidate"]
                if c["id"] in won and won[c["id"]] not in c["tried"] and not c["reused_from"]]
        lines.append(f"- candidates whose winning runtime in the all arm was skipped by the planner: "
                     f"{', '.join(lost) if lost else 'none'}")
        lines += ["", "## Per candidate (planned arm: runtimes tried, and skipped with why)", "",
                  "| id | candidate | runtime | p50 ms | val acc | tried | skipped |", "|---|---|---|---|---|---|---|"]
        for c in p["per_candidate"]:
            skipped = "; ".join(f"{k}: {v}" for k, v in c["skipped"].items()) or "-"
            if c["reused_from"]:
                skipped = f"reused the measurement of {c['reused_from']}"
            lat = f"{c['latency_ms']:.4g}" if c["latency_ms"] is not None else "-"
            acc = f"{100 * c['val']:.2f}" if c["val"] is not None else "-"
            lines.append(f"| {c['id']} | {c['label']} | {c['runtime']} | {lat} | {acc} | {', '.join(c['tried'])} | {skipped} |")
        lines += ["", "## Per candidate (all arm)", "", "| id | candidate | runtime | p50 ms | val acc | tried |",
                  "|---|---|---|---|---|---|"]
        for c in a["per_candidate"]:
            lat = f"{c['latency_ms']:.4g}" if c["latency_ms"] is not None else "-"
            acc = f"{100 * c['val']:.2f}" if c["val"] is not None else "-"
            lines.append(f"| {c['id']} | {c['label']} | {c['runtime']} | {lat} | {acc} | {', '.join(c['tried'])} |")
    return "\n".join(lines + environment_block(meta))


def _arm_main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--arm", choices=ARMS, required=True)
    ap.add_argument("--arm-mode", required=True)
    ap.add_argument("--arm-out", type=Path, required=True)
    ap.add_argument("--arm-result", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    from effdl.core.io import write_json

    write_json(args.arm_result, arm(args.arm, json.loads(args.arm_mode), args.threads, args.arm_out))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--arm" in argv:
        return _arm_main(argv)
    return bench_main(__doc__, "grid_cost", MODES, run, render, argv, threads=2,
                      adjust=lambda mode, args: mode.update(threads=args.threads))


if __name__ == "__main__":
    sys.exit(main())
