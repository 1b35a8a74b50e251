"""Structured pruning benchmark: ResNet-20 on the MNIST subset with 50% of the channels removed.

    python bench/structured.py --quick      # a few minutes; results in bench/results/structured.md

Variants: the dense baseline (zoo "resnet20" trained on "mnist", cached), effdl prune.channels
with l1 and taylor saliency, and Torch-Pruning's own high-level MagnitudePruner (L1 importance)
with the same ratio, the same protected layers (first conv, classifier) and the same fine-tuning
budget (Task.train, AdamW + cosine). Each is measured for test accuracy, params, MACs and latency
at batch 1 and 32 on eager / compile / ort (each lowering parity-checked first), with interleaved
timing rounds, medians, 2 threads and steady malloc (bench/runtimes.py's method). Data: the 28x28
MNIST digits as bundled (no padding or upsampling).
"""
from __future__ import annotations

from _publish import environment_block, publish

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

from effdl.metrics.latency import STEADY_MALLOC_ENV, reexec_with_steady_malloc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from runtimes import CpuLoad, _short

BATCHES = (1, 32)
RUNTIMES = ("eager", "compile", "ort")
MODES = {
    "quick": {"epochs": 2, "rounds": 3, "repeats": 15, "min_time_s": 0.05, "warmup": 3},
    "full": {"epochs": 10, "rounds": 7, "repeats": 50, "min_time_s": 0.3, "warmup": 10},
}


def torch_pruning_variant(model, task, ratio: float, protect_first: bool):
    """Torch-Pruning's high-level pruner, protecting exactly what effdl protects."""
    import torch_pruning as tp

    from effdl.compress.prune.structured import default_protected

    model = copy.deepcopy(model).eval()
    protected = [model.get_submodule(n) for n in default_protected(model, protect_first)]
    pruner = tp.pruner.MagnitudePruner(model, task.example_input(2), importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=ratio, ignored_layers=protected)
    pruner.step()
    return model.eval()


def build_variants(task, ratio: float, epochs: float, lr: float, train_threads: int, protect_first: bool, log) -> dict:
    import torch

    from effdl.compress.prune.structured import ChannelPruneConfig
    from effdl.core.registry import apply

    variants = {"dense": task.model}
    before = torch.get_num_threads()
    torch.set_num_threads(train_threads)  # training time is not a result; timing threads are set later
    try:
        for name, make in (
            ("effdl l1", lambda: apply(task, ChannelPruneConfig(ratio=ratio, saliency="l1", finetune_epochs=epochs, lr=lr,
                                                                 protect_first=protect_first))),
            ("effdl taylor", lambda: apply(task, ChannelPruneConfig(ratio=ratio, saliency="taylor", finetune_epochs=epochs, lr=lr,
                                                                     protect_first=protect_first))),
            ("torch-pruning l1", lambda: task.train(torch_pruning_variant(task.model, task, ratio, protect_first), epochs=epochs, lr=lr)),
        ):
            t0 = time.perf_counter()
            variants[name] = make()
            log(f"  {name}: pruned + fine-tuned {epochs} epochs in {time.perf_counter() - t0:.1f}s")
    finally:
        torch.set_num_threads(before)
    return variants


def measure_variants(variants: dict, task, mode: dict, threads: int, workdir: Path, log) -> dict:
    import torch

    from effdl.deploy.parity import check_parity, parity_inputs
    from effdl.deploy.runtimes import lower
    from effdl.metrics.flops import count_macs
    from effdl.metrics.latency import measure_latency

    inputs = parity_inputs(task, BATCHES)
    out, live = {}, {}
    for name, model in variants.items():
        entry = out[name] = {
            "test_accuracy": task.evaluate(model, "test")["accuracy"],
            "params": sum(p.numel() for p in model.parameters()),
            "macs": count_macs(model, task.example_input(1))["macs"],
            "runtimes": {},
        }
        for rt in RUNTIMES:
            e = entry["runtimes"][rt] = {}
            try:
                low = lower(model, rt, task=task, workdir=workdir / name.replace(" ", "_"), threads=threads, batch_sizes=BATCHES)
                with torch.inference_mode():
                    parity = check_parity(model, low, inputs)
                e["parity_ok"], e["max_abs_err"] = parity.ok, parity.to_dict().get("max_abs_err")
                if parity.ok:
                    live[name, rt] = low
            except Exception as exc:  # a failed lowering is a result, not a crash
                e["error"] = _short(exc)
        log(f"  {name}: acc {entry['test_accuracy']:.4f}, params {entry['params']}, "
            f"lowered {sorted(rt for n, rt in live if n == name)}")
    xs = {b: task.example_input(b) for b in BATCHES}
    keys = [(name, rt, b) for b in BATCHES for (name, rt) in live]
    samples: dict = {k: [] for k in keys}
    for r in range(mode["rounds"]):
        order = keys[r % len(keys):] + keys[:r % len(keys)] if keys else []
        for name, rt, b in order:
            with torch.inference_mode():
                lat = measure_latency(live[name, rt].predict, xs[b], warmup=mode["warmup"], repeats=mode["repeats"],
                                      min_time_s=mode["min_time_s"], threads=threads)
            samples[name, rt, b].append(lat["p50_ms"])
    for name, rt, b in keys:
        out[name]["runtimes"][rt].setdefault("p50_ms", {})[str(b)] = statistics.median(samples[name, rt, b])
    return out


def _speedups(res: dict, name: str, b: str) -> dict[str, float]:
    dense, mine = res["dense"]["runtimes"], res[name]["runtimes"]
    return {rt: dense[rt]["p50_ms"][b] / mine[rt]["p50_ms"][b] for rt in RUNTIMES
            if b in dense.get(rt, {}).get("p50_ms", {}) and b in mine.get(rt, {}).get("p50_ms", {})}


def render(res: dict, meta: dict) -> str:

    dense = res["dense"]
    lines = [
        "# Structured pruning benchmark (ResNet-20, MNIST subset)", "",
        f"`{meta['command']}` — {meta['mode']} mode, {meta['finished']}, {meta['wall_s']:.0f} s.", "",
        f"Data: the bundled 28x28 MNIST subset (3,600 train / 400 val / 1,000 test), not padded or upsampled. "
        f"Pruning: {meta['ratio']:.0%} of the units of every prunable channel group ("
        + ("first conv and classifier protected, so stage 1's residual channels stay 16" if meta["protect_first"]
           else "only the classifier protected") + f"), then {meta['epochs']} fine-tuning epochs (AdamW, "
        f"lr {meta['lr']}, cosine) for every pruned variant. Latency: median over {meta['timing']['rounds']} "
        f"interleaved rounds of the per-round median, {meta['threads']} threads, malloc env {meta['malloc_env']}; "
        "every lowering passed its parity check (rtol 1e-3 / atol 1e-5, batch 1 and 32) before being timed.", "",
        f"CPU time used by other processes during the run: {meta['foreign_cpu_fraction']:.0%} of all cores.", "",
    ]
    if meta["warnings"]:
        lines += ["**Timing warnings**:", ""] + [f"- {w}" for w in meta["warnings"]] + [""]
    lines += ["| variant | test acc | drop (pt) | params | params ratio | MACs | MACs ratio | "
              + " | ".join(f"{rt} b{b} ms" for b in BATCHES for rt in RUNTIMES)
              + " | best speed-up b1 | best speed-up b32 |",
              "|---|---:|---:|---:|---:|---:|---:|" + "---:|" * (len(BATCHES) * len(RUNTIMES)) + "---:|---:|"]
    for name, e in res.items():
        cells = []
        for b in (str(x) for x in BATCHES):
            for rt in RUNTIMES:
                v = e["runtimes"].get(rt, {}).get("p50_ms", {}).get(b)
                cells.append(f"{v:.3f}" if v else ("failed" if "error" in e["runtimes"].get(rt, {}) else ""))
        best = []
        for b in (str(x) for x in BATCHES):
            sp = _speedups(res, name, b)
            rt = max(sp, key=sp.get) if sp else None
            best.append(f"{sp[rt]:.2f}x ({rt})" if rt else "")
        lines.append(
            f"| {name} | {e['test_accuracy']:.4f} | {100 * (dense['test_accuracy'] - e['test_accuracy']):+.1f} | "
            f"{e['params']:,} | {e['params'] / dense['params']:.3f} | {e['macs']:,} | {e['macs'] / dense['macs']:.3f} | "
            + " | ".join(cells) + f" | {best[0]} | {best[1]} |")
    fast = min(((rt, dense["runtimes"][rt]["p50_ms"]["32"]) for rt in RUNTIMES if "32" in dense["runtimes"].get(rt, {}).get("p50_ms", {})),
               key=lambda t: t[1], default=(None, None))[0]
    lines += ["", ("Speed-up = the dense model's p50 / the variant's p50 on the same runtime and batch. "
                   f"Fastest verified dense runtime at batch 32: {fast}."), ""]
    lines += ["## Figures checked", ""]
    for name in (n for n in res if n.startswith("effdl")):
        drop = 100 * (dense["test_accuracy"] - res[name]["test_accuracy"])
        sp = _speedups(res, name, "32").get(fast)
        lines.append(f"- {name}: accuracy drop {drop:.1f} pt (target <= 1.0: {'met' if drop <= 1.0 else 'NOT met'}); "
                     f"speed-up at batch 32 on {fast}: {sp:.2f}x (target >= 1.7: {'met' if sp and sp >= 1.7 else 'NOT met'})"
                     if sp else f"- {name}: accuracy drop {drop:.1f} pt; no verified timing on {fast}")
    tp_acc = res.get("torch-pruning l1", {}).get("test_accuracy")
    if tp_acc is not None:
        for name in (n for n in res if n.startswith("effdl")):
            ok = res[name]["test_accuracy"] >= tp_acc
            lines.append(f"- {name} vs Torch-Pruning MagnitudePruner at {res[name]['macs'] / res['torch-pruning l1']['macs']:.2f}x "
                         f"its MACs: {res[name]['test_accuracy']:.4f} vs {tp_acc:.4f} ({'at least as accurate' if ok else 'LESS accurate'})")
    lines += environment_block(meta)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 fine-tuning epochs and fewer timing rounds")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--epochs", type=float, default=None, help="fine-tuning epochs (default: 2 quick, 10 full)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2, help="threads for every timed runtime")
    ap.add_argument("--train-threads", type=int, default=2, help="threads for fine-tuning (1 on a shared machine)")
    ap.add_argument("--no-protect-first", action="store_true",
                    help="prune the first conv's channels too (only the classifier protected), for every variant")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "structured.md")
    args = ap.parse_args(argv)
    reexec_with_steady_malloc([str(Path(__file__).resolve()), *sys.argv[1:]])
    import tempfile

    import torch

    from effdl.core.tasks import ImageClassification
    from effdl.data import load_data
    from effdl.metrics.env import environment
    from effdl.metrics.latency import timing_environment_warnings
    from effdl.zoo import trained

    mode_name = "quick" if args.quick else "full"
    mode = MODES[mode_name]
    epochs = args.epochs if args.epochs is not None else mode["epochs"]
    torch.set_num_threads(args.threads)
    load, start = CpuLoad(), time.perf_counter()
    warnings_seen = list(timing_environment_warnings())

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f}s] {msg}", flush=True)

    splits = load_data("mnist")
    model = trained("resnet20", "mnist").eval()
    task = ImageClassification(model, splits.train, splits.val, splits.test, num_classes=splits.num_classes)
    log("building variants")
    variants = build_variants(task, args.ratio, epochs, args.lr, args.train_threads, not args.no_protect_first, log)
    with tempfile.TemporaryDirectory(prefix="effdl-structured-") as tmp:
        res = measure_variants(variants, task, mode, args.threads, Path(tmp), log)
    foreign = load.foreign_fraction()
    if foreign > 0.05:
        warnings_seen.append(f"other processes used {foreign:.0%} of the CPU during the run: timings are noisy; "
                             "re-run on a quiet machine for numbers to quote")
    meta = {
        "command": "python bench/structured.py " + " ".join(sys.argv[1:]), "mode": mode_name,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %z"), "wall_s": time.perf_counter() - start,
        "ratio": args.ratio, "protect_first": not args.no_protect_first, "epochs": epochs, "lr": args.lr, "threads": args.threads, "train_threads": args.train_threads,
        "timing": mode, "foreign_cpu_fraction": round(foreign, 3),
        "malloc_env": {k: os.environ.get(k) for k in STEADY_MALLOC_ENV}, "warnings": warnings_seen,
        "environment": environment(threads=args.threads),
    }
    text = render(res, meta)
    publish(args.out, text, {"meta": meta, "results": res})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
