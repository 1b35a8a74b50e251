"""Search vs the fixed grid at equal trials, and policy search vs the one-shot sensitivity allocation.

    python bench/search.py --quick      # results in bench/results/search.md

Part 1, samplers. On each task (LeNet-5 / MNIST; all-MiniLM-L6-v2 / STS-B with a 200-pair eval
limit, recovery trained on 3,000 of its train sentences) and the same trial budget, one study per sampler, each in a fresh process with its own
inductor cache: ``grid`` (the strategy's fixed candidates drawn without repeats: today's grid at
equal trials), ``random``, ``tpe`` (both minimise latency subject to the 1-point drop constraint)
and ``nsga2`` (quality and latency). Reported: the hypervolume of each study's measured frontier
(effdl's normalised axes: drop / max_drop and latency / baseline latency, reference (2, 1); each
study's own baseline measurement normalises its own drift), the best latency within max_drop on
validation, the chosen model's test quality, wall time and trial outcomes.

Part 2, policy. LeNet-5 / MNIST, target size: the one-shot sensitivity allocation
(prune.weights distribution=sensitivity) at N target sparsities spread over [0.5, 0.95] vs a TPE
search over per-layer sparsities (prune.weights distribution=explicit) seeded with the allocation
at 0.8, both with the same fine-tuning, N trials each. Hypervolume on (drop, size / baseline size).

Timing on a shared 2-core machine is noisy: a latency hypervolume difference of a few percent
between two studies is not a result; the trial counts and the best-feasible column say more.
"""
from __future__ import annotations

from _publish import bench_main, environment_block

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLERS = ("grid", "random", "tpe", "nsga2")
TASKS = {"lenet5": ("zoo:lenet5", "mnist", None), "minilm": ("zoo:minilm", "stsb", 200)}
#: MiniLM's recovery steps (0.05-0.25 epochs of distillation) train on this many of STS-B's 11,498 train
#: sentences, the same for every arm, so a 10-trial study fits in minutes on 2 cores
TRAIN_SUBSET = {"minilm": 3000}
MODES = {
    "quick": {"trials": {"lenet5": 12, "minilm": 10}, "repeats": 10, "policy_trials": 8, "seed": 0},
    "full": {"trials": {"lenet5": 30, "minilm": 15}, "repeats": 30, "policy_trials": 20, "seed": 0},
}
MAX_DROP = 0.01


def _summarise(res, label: str, wall: float) -> dict:
    goal, metric = res.goal, res.goal.spec.name
    base = res.baseline_candidate
    key = "latency_ms_p50" if goal.target == "latency" else "size_bytes"
    feasible = [c for c in res.candidates if c.ok and c.recipe and c.quality_drop_val is not None
                and c.quality_drop_val <= goal.max_drop]
    best = min(feasible, key=lambda c: getattr(c.footprint, key)) if feasible else None
    chosen = res.chosen_candidate
    s = res.search
    return {
        "arm": label, "wall_s": round(wall, 1), "trials": s.trials, "complete": s.complete, "pruned": s.pruned,
        "failed": s.failed, "hypervolume": s.hypervolume[-1] if s.hypervolume else 0.0,
        "hypervolume_history": s.hypervolume, "metric": metric, "target": key,
        "baseline": getattr(base.footprint, key), "baseline_val": base.quality_val[metric],
        "feasible": len(feasible), "best": getattr(best.footprint, key) if best else None,
        "best_label": best.label if best else None,
        "chosen": chosen.label if chosen else None, "chosen_test": chosen.quality[metric] if chosen else None,
        "chosen_drop_test": chosen.quality_drop if chosen else None,
    }


def one(spec: dict) -> dict:
    """One study in this process (spec: task, arm, trials, repeats, out)."""
    import time

    import torch

    from effdl import Goal
    from effdl.automate.search import SearchSettings
    from effdl.pipeline.optimize import optimize
    from effdl.pipeline.results import MeasureSettings
    from effdl.specs import build_task

    torch.manual_seed(0)
    model, data, limit = TASKS[spec["task"]]
    task = build_task(model, data, eval_limit=limit)
    if spec["task"] in TRAIN_SUBSET:
        task = task.with_train_subset(TRAIN_SUBSET[spec["task"]], seed=0)
    measure = MeasureSettings(threads=2, repeats=spec["repeats"], large_batch=8 if spec["task"] == "minilm" else 32)
    t0 = time.perf_counter()
    if spec["arm"] in SAMPLERS:
        res = optimize(task, Goal(max_drop=MAX_DROP, target=spec.get("target", "latency")), out_dir=spec["out"],
                       measure=measure,
                       search=SearchSettings(sampler=spec["arm"], trials=spec["trials"], seed=spec["seed"]))
        return _summarise(res, spec["arm"], time.perf_counter() - t0)
    return _policy_arm(task, spec, measure, t0)


def _policy_arm(task, spec: dict, measure, t0: float) -> dict:
    import time

    import numpy as np

    from effdl import Goal
    from effdl.automate.policy import sensitivity_seed
    from effdl.automate.search import SearchSettings
    from effdl.automate.space import SearchSpace
    from effdl.compress.prune import WeightPruneConfig
    from effdl.pipeline.optimize import optimize
    from effdl.pipeline.recipe import Recipe
    from effdl.pipeline.strategies import CandidateSpec

    n, epochs = spec["trials"], 1.0
    goal = Goal(max_drop=MAX_DROP, target="size")
    if spec["arm"] == "sensitivity":
        specs = [CandidateSpec("c00", "baseline", Recipe(()))] + [
            CandidateSpec(f"c{i + 1:02d}", f"sensitivity allocation {s:.2f}",
                          Recipe((WeightPruneConfig(sparsity=round(float(s), 3), distribution="sensitivity",
                                                    finetune_epochs=epochs),)))
            for i, s in enumerate(np.linspace(0.5, 0.95, n))]
        res = optimize(task, goal, out_dir=spec["out"], measure=measure, candidates=specs,
                       search=SearchSettings(sampler="grid", trials=n, pruner="none"))
    else:
        space = SearchSpace.from_list([{"technique": "prune.weights", "distribution": "explicit",
                                        "finetune_epochs": epochs,
                                        "layer_sparsity": {"per_layer": {"range": [0.0, 0.98]}}}])
        seeds = (sensitivity_seed(task, space, 0.8),)
        res = optimize(task, goal, out_dir=spec["out"], measure=measure,
                       search=SearchSettings(sampler="tpe", trials=n, space=space, seeds=seeds, pruner="none"))
    return _summarise(res, spec["arm"], time.perf_counter() - t0)


def _fresh(spec: dict, tmp: Path) -> dict:
    result = tmp / f"{spec['task']}-{spec['arm']}.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "bench"), "EFFDL_NO_REEXEC": "1",
           "TORCHINDUCTOR_CACHE_DIR": str(tmp / f"inductor-{spec['task']}-{spec['arm']}")}
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(spec), "--one-result",
                    str(result)], check=True, cwd=ROOT, env=env)
    return json.loads(result.read_text())


def run(mode: dict, log) -> dict:
    out: dict = {"samplers": {}, "policy": []}
    with tempfile.TemporaryDirectory(prefix="bench_search_") as tmp:
        tmp = Path(tmp)
        for task in mode.get("tasks", list(TASKS)):
            out["samplers"][task] = []
            for arm in mode.get("arms", SAMPLERS):
                spec = {"task": task, "arm": arm, "trials": mode["trials"][task], "repeats": mode["repeats"],
                        "seed": mode["seed"], "target": mode["target"], "out": str(tmp / f"{task}-{arm}")}
                row = _fresh(spec, tmp)
                out["samplers"][task].append(row)
                log(f"{task} {arm}: hypervolume {row['hypervolume']:.4f}, best feasible {row['best']}, "
                    f"{row['wall_s']:.0f} s")
        for arm in ("sensitivity", "policy-tpe") if mode["policy"] else ():
            spec = {"task": "lenet5", "arm": arm, "trials": mode["policy_trials"], "repeats": mode["repeats"],
                    "seed": mode["seed"], "out": str(tmp / f"policy-{arm}")}
            row = _fresh(spec, tmp)
            out["policy"].append(row)
            log(f"policy {arm}: hypervolume {row['hypervolume']:.4f}, best feasible {row['best']}, {row['wall_s']:.0f} s")
    return out


def _fmt(v, spec: str = ".4g") -> str:
    return "-" if v is None else format(v, spec)


def _table(rows: list[dict], unit: str) -> list[str]:
    lines = [f"| arm | trials (complete / pruned / failed) | hypervolume | feasible | best {unit} within max_drop "
             "(x baseline) | chosen | chosen test drop (pt) | wall s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f" ({r['best'] / r['baseline']:.3f}x)" if r["best"] is not None else ""
        drop = f"{100 * r['chosen_drop_test']:+.2f}" if r["chosen_drop_test"] is not None else "-"
        lines.append(f"| {r['arm']} | {r['trials']} ({r['complete']} / {r['pruned']} / {r['failed']}) | "
                     f"{r['hypervolume']:.4f} | {r['feasible']} | {_fmt(r['best'])}{ratio} | {r['chosen']} | {drop} | "
                     f"{r['wall_s']:.0f} |")
    return lines


def render(results: dict, meta: dict) -> str:
    mode = meta["mode"]
    lines = ["# Search vs the fixed grid, and policy search vs the sensitivity allocation", "",
             f"Mode `{meta['mode_name']}`: {json.dumps(mode)}. Run: `{meta['command']}` ({meta['seconds']:.0f} s). "
             f"Goal: at most {MAX_DROP * 100:.0f} point(s) of validation quality lost; each arm a fresh process.", ""]
    for task, rows in results["samplers"].items():
        model, data, limit = TASKS[task]
        unit = "ms" if mode.get("target", "latency") == "latency" else "bytes"
        lines += [f"## {model} on {data}{f' (eval limit {limit})' if limit else ''}: samplers at "
                  f"{mode['trials'][task]} trials, target {mode.get('target', 'latency')}", "",
                  f"Baseline: {rows[0]['metric']} {rows[0]['baseline_val']:.4f} (validation), "
                  f"{rows[0]['baseline']:.4g} {unit} ({'p50 at batch 1, ' if unit == 'ms' else ''}{rows[0]['arm']} arm's "
                  "measurement).", ""]
        lines += _table(rows, unit)
        grid = next((r for r in rows if r["arm"] == "grid"), None)
        if grid is not None:
            better = [r["arm"] for r in rows if r["arm"] != "grid" and r["hypervolume"] > grid["hypervolume"]]
            lines += ["", f"Hypervolume above the grid's at equal trials: {', '.join(better) or 'none'}."]
        lines += ["", "Hypervolume after each complete trial:", ""]
        for r in rows:
            lines.append(f"- {r['arm']}: {', '.join(f'{v:.3f}' for v in r['hypervolume_history'])}")
        lines.append("")
    if results["policy"]:
        lines += [f"## Policy search vs the one-shot sensitivity allocation (LeNet-5 / MNIST, target size, "
                  f"{mode['policy_trials']} trials each)", ""]
        lines += _table(results["policy"], "bytes")
        lines.append("")
    return "\n".join(lines + environment_block(meta))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--one" in argv:  # a single study in this fresh process
        spec = json.loads(argv[argv.index("--one") + 1])
        from effdl.core.io import write_json

        write_json(argv[argv.index("--one-result") + 1], one(spec))
        return 0

    def add_args(ap):
        ap.add_argument("--tasks", default=",".join(TASKS), help="comma-separated: lenet5,minilm")
        ap.add_argument("--target", default="latency", choices=("latency", "size"), help="the samplers' footprint")
        ap.add_argument("--no-policy", action="store_true", help="skip part 2 (policy search)")
        ap.add_argument("--trials", type=int, help="trials per study for every task (default: the mode's)")
        ap.add_argument("--arms", default=",".join(SAMPLERS), help="comma-separated samplers to run (default: all)")

    def adjust(mode, args):
        mode["tasks"] = args.tasks.split(",")
        mode["target"] = args.target
        mode["policy"] = not args.no_policy
        mode["arms"] = args.arms.split(",")
        if args.trials:
            mode["trials"] = {t: args.trials for t in mode["trials"]}

    return bench_main(__doc__, "search", MODES, run, render, argv, threads=2, add_args=add_args, adjust=adjust)


if __name__ == "__main__":
    sys.exit(main())
