"""Low-rank benchmark: SVD on LeNet-300-100 and Tucker-2 on ResNet-20 (MNIST subset), vs rank.

    python bench/lowrank.py --quick        # a few minutes; results in bench/results/lowrank.md

For each rank setting: parameters (and the layers left dense because factorizing them would not
save parameters), test accuracy right after the decomposition and after a short fine-tune (the
Task's training loop at the baseline recipe's learning rate), and eager PyTorch latency p50 at
batch 1 and 32 (effdl.metrics.latency.measure_latency). Latency rounds are interleaved: every round
times every variant once, and the reported figure is the median over rounds of each round's p50,
so a load change on the machine hits all variants alike. Latencies are only valid from a quiet
machine; accuracies are one seeded run each.
"""
from __future__ import annotations

import copy
import statistics
import sys
import time
from pathlib import Path

from _publish import bench_main, environment_block, zoo_task

ROOT = Path(__file__).resolve().parents[1]

MODES = {
    "quick": {"svd": (0.05, 0.1, 0.25), "tucker": (0.25, 0.5), "epochs": {"mlp": 1.0, "resnet20": 0.5},
              "rounds": 3, "min_time_s": 0.05},
    "full": {"svd": (0.02, 0.05, 0.1, 0.2, 0.3, 0.4), "tucker": (0.125, 0.25, 0.375, 0.5, 0.75),
             "epochs": {"mlp": 3.0, "resnet20": 1.0}, "rounds": 7, "min_time_s": 0.2},
}
STUDIES = (("mlp", "svd"), ("resnet20", "tucker"))


def _acc(task, model) -> float:
    return round(100 * task.evaluate(model, "test")["accuracy"], 2)


def _config(method: str, ratio: float):
    from effdl.compress import lowrank

    # the 100 -> 10 classifier stays dense: at rank r it can rank only r + 1 classes first (r = 1: two
    # classes, ~20% accuracy) and it holds 0.4% of the parameters
    return (lowrank.SVD(rank="ratio", ratio=ratio, exclude=("5",)) if method == "svd"
            else lowrank.Tucker(rank="ratio", ratio=ratio))


def _variants(model_name: str, method: str, mode: dict, log) -> list[dict]:
    """Decompose at every ratio, evaluate before/after fine-tuning; the models come back for timing."""
    from effdl.core.records import records
    from effdl.core.registry import apply
    from effdl.zoo import recipe_for

    task = zoo_task(model_name)
    lr, epochs = recipe_for(model_name, "mnist").lr, mode["epochs"][model_name]
    n_params = lambda m: sum(p.numel() for p in m.parameters())
    out = [{"label": "dense", "ratio": None, "params": n_params(task.model), "acc_before": _acc(task, task.model),
            "acc_after": None, "skipped": {}, "model": task.model.eval()}]
    log(f"{model_name}: dense {out[0]['params']} parameters, test accuracy {out[0]['acc_before']}%")
    for ratio in mode[method]:
        t0 = time.perf_counter()
        cfg = _config(method, ratio)
        raw = apply(task, cfg)
        rec = records(raw)[cfg.technique]
        tuned = task.train(copy.deepcopy(raw), epochs=epochs, lr=lr)
        row = {"label": f"{method} ratio {ratio}", "ratio": ratio, "params": n_params(raw),
               "acc_before": _acc(task, raw), "acc_after": _acc(task, tuned), "skipped": rec["skipped"],
               "ranks": {n: info.get("rank", info.get("ranks")) for n, info in rec["layers"].items()},
               "finetune_epochs": epochs, "seconds": round(time.perf_counter() - t0, 1), "model": tuned}
        out.append(row)
        log(f"  {row['label']}: {row['params']} params, {row['acc_before']}% -> {row['acc_after']}% "
            f"after {epochs} epoch(s); dense layers: {sorted(rec['skipped']) or 'none'}")
    return out


def _time_interleaved(rows: list[dict], example, mode: dict, threads: int) -> None:
    """p50 latency (ms) at each batch size, median over interleaved rounds, stored in the rows."""
    import torch

    from effdl.metrics.latency import measure_latency

    samples = {(i, b): [] for i in range(len(rows)) for b in (1, 32)}
    with torch.inference_mode():
        for _ in range(mode["rounds"]):
            for i, row in enumerate(rows):
                for b in (1, 32):
                    res = measure_latency(row["model"], example(b, "test"), warmup=5, repeats=20,
                                          min_time_s=mode["min_time_s"], threads=threads)
                    samples[(i, b)].append(res["p50_ms"])
    for i, row in enumerate(rows):
        row["latency_ms"] = {str(b): round(statistics.median(samples[(i, b)]), 4) for b in (1, 32)}
        row["latency_rounds_ms"] = {str(b): [round(v, 4) for v in samples[(i, b)]] for b in (1, 32)}


def run(mode: dict, log) -> dict:
    import torch

    threads = torch.get_num_threads()
    out = {}
    for model_name, method in STUDIES:
        rows = _variants(model_name, method, mode, log)
        task = zoo_task(model_name)
        _time_interleaved(rows, task.example_input, mode, threads)
        dense = rows[0]
        for row in rows:
            row.pop("model")
            row["params_ratio"] = round(row["params"] / dense["params"], 4)
            row["speedup"] = {b: round(dense["latency_ms"][b] / row["latency_ms"][b], 3) for b in ("1", "32")}
        out[f"{model_name}_{method}"] = rows
        log("  latency p50 ms (b1, b32): " + "; ".join(f"{r['label']}: {r['latency_ms']['1']}, {r['latency_ms']['32']}" for r in rows))
    return out


def render(res: dict, meta: dict) -> str:
    lines = ["# Low-rank decomposition: SVD on LeNet-300-100, Tucker-2 on ResNet-20 (MNIST subset)", "",
             (f"`python bench/lowrank.py{' --quick' if meta['mode_name'] == 'quick' else ''}` ({meta['seconds']:.0f} s); "
             f"latency: eager PyTorch, {meta['threads']} thread(s), median of {meta['mode']['rounds']} interleaved rounds "
             "of p50. **Latency figures are valid only when re-run on a quiet machine.**"), ""]
    titles = {"mlp_svd": "## LeNet-300-100: truncated SVD of the two hidden Linears (rank = ratio x full rank; classifier dense)",
              "resnet20_tucker": "## ResNet-20: Tucker-2 of every Conv2d (ranks = ratio x channels)"}
    for key, rows in res.items():
        epochs = next((r["finetune_epochs"] for r in rows if "finetune_epochs" in r), 0)
        lines += [titles.get(key, f"## {key}"), "",
                  (f"| variant | params | x dense | test acc (%) | after {epochs} epoch fine-tune (%) | p50 ms b=1 | p50 ms b=32 "
                  "| speed-up b=1 | speed-up b=32 | left dense |"),
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            after = "" if r["acc_after"] is None else r["acc_after"]
            dense = ", ".join(sorted(r["skipped"])) or "-"
            lines.append(f"| {r['label']} | {r['params']:,} | {r['params_ratio']} | {r['acc_before']} | {after} | "
                         f"{r['latency_ms']['1']} | {r['latency_ms']['32']} | {r['speedup']['1']} | {r['speedup']['32']} | {dense} |")
        lines.append("")
    lines += [("Layers are left dense when the chosen rank would not reduce parameters (SVD: r >= mn/(m+n); "
              "Tucker: the three convs hold at least as many weights as the kernel); the records list them "
              "with the reason.")] + environment_block(meta)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return bench_main(__doc__, "lowrank", MODES, run, render, argv)


if __name__ == "__main__":
    sys.exit(main())
