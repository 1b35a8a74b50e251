"""Iterative vs one-shot *channel* pruning at the same final structure (textbook figures 10.5/10.6).

    python bench/iterative.py --quick      # results in bench/results/iterative.md

The textbook removes 27% of a CNN's channels two ways: in three prune + fine-tune rounds (0.995 ->
0.991) or all at once followed by fine-tuning (0.995 -> 0.943). Here: prune.channels (L1 filter
norms, physical surgery) on the trained LeNet-5 and MNIST-1D CNN baselines, removing 27% and 50% of
the prunable channels/neurons, one-shot vs iterative over R rounds, with two fine-tuning protocols:

* textbook: every pruning step is followed by the same E epochs (iterative spends R x E);
* equal total budget: iterative spends E / R epochs per round.

Both curves are reported: validation accuracy after every cut and every fine-tune (the trajectory
record of prune.channels). Final accuracies are on the test split, which no run sees. One seeded
run per cell; run-to-run noise here is ~0.2-0.4 points.
"""
from __future__ import annotations

from _publish import bench_main, environment_block, zoo_task

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = {
    "quick": {"models": (("lenet5", "mnist"), ("mnist1d_cnn", "mnist1d")), "ratios": (0.27, 0.5, 0.7, 0.85), "epochs": 1.0, "rounds": 3},
    "full": {"models": (("lenet5", "mnist"), ("mnist1d_cnn", "mnist1d")), "ratios": (0.27, 0.5, 0.7, 0.85), "epochs": 2.0, "rounds": 3},
}


def run(mode: dict, log) -> list[dict]:
    from effdl.compress.prune import ChannelPruneConfig
    from effdl.core.records import records
    from effdl.core.registry import apply
    from effdl.zoo import recipe_for

    rows = []
    for model_name, data in mode["models"]:
        task = zoo_task(model_name, data)
        lr = recipe_for(model_name, data).lr
        base = task.evaluate(task.model, "test")["accuracy"]
        e, r = mode["epochs"], mode["rounds"]
        for ratio in mode["ratios"]:
            variants = {
                "one-shot": dict(schedule="oneshot", finetune_epochs=e),
                "iterative (textbook)": dict(schedule="iterative", rounds=r, finetune_epochs=e),
                "iterative (equal total)": dict(schedule="iterative", rounds=r, finetune_epochs=e / r),
            }
            for name, kw in variants.items():
                t0 = time.perf_counter()
                pruned = apply(task, ChannelPruneConfig(ratio=ratio, saliency="l1", lr=lr, **kw))
                row = {"model": model_name, "data": data, "ratio": ratio, "variant": name,
                       "baseline_test": base, "test": task.evaluate(pruned, "test")["accuracy"],
                       "params": sum(p.numel() for p in pruned.parameters()),
                       "base_params": sum(p.numel() for p in task.model.parameters()),
                       "trajectory": [list(p) for p in records(pruned)["trajectory"].points], "seconds": time.perf_counter() - t0}
                rows.append(row)
                log(f"{model_name} {ratio} {name}: {100 * row['test']:.1f}% (baseline {100 * base:.1f}%)")
    return rows


def render(rows: list[dict], meta: dict) -> str:
    m = meta["mode"]
    lines = [
        "# Iterative vs one-shot channel pruning (textbook figures 10.5/10.6)", "",
        f"Mode `{meta['mode_name']}`: prune.channels (L1), E = {m['epochs']} fine-tuning epochs, R = {m['rounds']} rounds; "
        f"test accuracy in %, one seeded run each. Run: `python bench/iterative.py{' --quick' if meta['mode_name'] == 'quick' else ''}` "
        f"({meta['seconds']:.0f} s).", "",
        "## Final accuracy at the same final structure", "",
        "| model | channels removed | params kept | baseline | one-shot + E | iterative R x E (textbook) | iterative R x E/R (equal total) |",
        "|---|---|---|---|---|---|---|",
    ]
    keyed = {(r["model"], r["ratio"], r["variant"]): r for r in rows}
    wins_textbook = wins_equal = cells = 0
    for (model, ratio) in dict.fromkeys((r["model"], r["ratio"]) for r in rows):
        one, tb, eq = (keyed[(model, ratio, v)] for v in ("one-shot", "iterative (textbook)", "iterative (equal total)"))
        cells += 1
        wins_textbook += tb["test"] >= one["test"]
        wins_equal += eq["test"] >= one["test"]
        lines.append(f"| {model} | {ratio:.0%} | {one['params'] / one['base_params']:.2f} | {100 * one['baseline_test']:.1f} | "
                     f"{100 * one['test']:.1f} | {100 * tb['test']:.1f} | {100 * eq['test']:.1f} |")
    lines += ["", f"Iterative retained at least as much accuracy as one-shot in {wins_textbook} of {cells} cells with the "
              f"textbook protocol and in {wins_equal} of {cells} with the same total fine-tuning budget.", "",
              "## The curves (validation accuracy after each cut and each fine-tune)", "",
              "| model | removed | variant | path: epochs spent -> accuracy (event) |", "|---|---|---|---|"]
    for r in rows:
        path = ", ".join(f"{p[0]:.2g} -> {100 * p[2]:.1f} ({p[3]})" for p in r["trajectory"])
        lines.append(f"| {r['model']} | {r['ratio']:.0%} | {r['variant']} | {path} |")
    return "\n".join(lines + environment_block(meta))


def main(argv: list[str] | None = None) -> int:
    def add_args(ap):
        ap.add_argument("--ratios", type=float, nargs="+", help="override the mode's channel ratios")
        ap.add_argument("--epochs", type=float, help="override the mode's fine-tuning epochs E")

    def adjust(mode, args):
        if args.ratios:
            mode["ratios"] = tuple(args.ratios)
        if args.epochs:
            mode["epochs"] = args.epochs

    return bench_main(__doc__, "iterative", MODES, run, render, argv, add_args=add_args, adjust=adjust)


if __name__ == "__main__":
    sys.exit(main())
