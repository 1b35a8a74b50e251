"""INT8 post-training quantization benchmark: effdl's PTQ options and peers' defaults, on trained
zoo models, accuracy on the test split and latency at batch 1 and 32 (threads pinned to 2).

    python bench/quant_ptq.py --quick       # results in bench/results/quant_ptq.md / .json

(a) per-channel (percentile, entropy, MSE clipping) vs per-tensor (min-max) INT8 accuracy drop on LeNet-5/MNIST and the
    MNIST-1D CNN (target: <= 0.3 point for per-channel);
(b) per-tensor vs per-channel vs per-tensor + CLE (+ bias correction) on MobileNetV2/MNIST, with the
    depthwise weights' SQNR and the logits' SQNR against FP32;
(c) peers' defaults side by side with effdl's INT8 runtimes on the same models: torch
    ``quantize_dynamic`` (Linear, default qconfig), ONNX Runtime ``quantize_dynamic`` and
    ``quantize_static`` (default: QDQ, S8S8, per-tensor, MinMax) vs effdl pt2e-int8 / ort-int8
    (``quantize.ptq`` defaults: static, per-channel, min-max; U8S8 and S8S8) and the dynamic pair, plus
    FP32 eager and ORT FP32;
(d) effdl's automatic INT8 choice (fastest verified of its runtimes) against each peer, per batch.

Accuracy in (a)/(b) is that of the simulated INT8 model (PT2E q/dq graph, the numerics pt2e-int8
compiles); in (c) it is measured on each runtime itself. Latency method (REFERENCE.md): steady glibc
malloc thresholds, variants of one model timed interleaved (order rotated every round), the median
of many calls per timing and the median over rounds. Foreign CPU load is measured and reported:
timings from a busy machine are not to be quoted.
"""
from __future__ import annotations

from _publish import environment_block, publish, zoo_task

import argparse
import contextlib
import io
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

from effdl.metrics.latency import STEADY_MALLOC_ENV, reexec_with_steady_malloc

ROOT = Path(__file__).resolve().parents[1]
BATCHES = (1, 32)
MODES = {
    "quick": {"rounds": 3, "repeats": 15, "min_time_s": 0.05, "warmup": 3, "peer_models": ["lenet5:mnist"]},
    "full": {"rounds": 7, "repeats": 50, "min_time_s": 0.3, "warmup": 10,
             "peer_models": ["lenet5:mnist", "mnist1d_cnn:mnist1d", "mlp:mnist"]},
}


def accuracy(predict, task, split: str = "test", batch: int = 32) -> float:
    """Accuracy with every call at exactly ``batch`` rows (the last chunk padded): compiled
    runtimes then run only the shapes they were compiled for."""
    import torch

    xs, ys = zip(*[(x, int(y)) for x, y in task.splits[split]])
    x, y = torch.stack(xs).float(), torch.tensor(ys)
    preds = []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            chunk = x[i:i + batch]
            n = len(chunk)
            if n < batch:
                chunk = torch.cat([chunk, chunk[-1:].expand(batch - n, *chunk.shape[1:])])
            preds.append(predict(chunk)[:n].argmax(1))
    return float((torch.cat(preds) == y).float().mean())


# -- (a) and (b): accuracy of effdl's options ------------------------------------------------------------
A_VARIANTS = {
    "per-channel percentile": {"weight_granularity": "channel", "calibration": "percentile"},
    "per-channel entropy (KL)": {"weight_granularity": "channel", "calibration": "entropy"},
    "per-channel MSE": {"weight_granularity": "channel", "calibration": "mse"},
    "per-tensor min-max": {"weight_granularity": "tensor", "calibration": "minmax"},
}
B_VARIANTS = {
    "per-channel": {"weight_granularity": "channel", "fold_bn": True},
    "per-tensor": {"weight_granularity": "tensor", "fold_bn": True},
    "per-tensor + CLE": {"weight_granularity": "tensor", "fold_bn": True, "equalize": True},
    "per-tensor + CLE + bias corr.": {"weight_granularity": "tensor", "fold_bn": True, "equalize": True,
                                      "bias_correction": True},
}


def bench_accuracy(model_name: str, data_name: str, variants: dict, log) -> dict:
    import torch
    import torch.nn as nn

    from effdl.compress.quantize.equalize import weight_sqnr_db
    from effdl.compress.quantize.ptq import PTQConfig
    from effdl.core.registry import apply
    from effdl.deploy.parity import sqnr_db

    task = zoo_task(model_name, data_name)
    base = accuracy(task.model, task)
    x = torch.cat([xb for xb, _ in task.batches("val", 256)])
    with torch.no_grad():
        ref = task.model(x)
    rows = []
    for label, kw in variants.items():
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = apply(task, PTQConfig(**kw))
        with torch.no_grad():
            snr = sqnr_db(ref, q(x))
        acc = accuracy(q, task)
        dw = [n for n, m in q.float_model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
        gran = kw.get("weight_granularity", "channel")
        dw_snr = [weight_sqnr_db(q.float_model.get_submodule(n).weight, gran) for n in dw]
        rows.append({"variant": label, "config": kw, "accuracy": acc, "drop_points": 100 * (base - acc),
                     "logit_sqnr_db": snr,
                     "depthwise_weight_sqnr_db_mean": statistics.mean(dw_snr) if dw_snr else None,
                     "depthwise_weight_sqnr_db_min": min(dw_snr) if dw_snr else None,
                     "seconds": time.perf_counter() - t0})
        log(f"  {label}: acc {acc:.4f} (drop {100 * (base - acc):.2f} pt), logit SQNR {snr:.1f} dB")
    return {"model": model_name, "data": data_name, "float_accuracy": base,
            "n_test": len(task.splits["test"]), "rows": rows}


# -- (c): peers' defaults vs effdl's runtimes ------------------------------------------------------------
def _peer_torch_dynamic(task, threads):
    import copy

    import torch
    import torch.nn as nn
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = quantize_dynamic(copy.deepcopy(task.model), {nn.Linear}, dtype=torch.qint8)

    def predict(x):
        with torch.inference_mode():
            return model(x)
    return predict, {"how": "torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)"}


def _peer_ort(task, threads, workdir: Path, kind: str):
    from onnxruntime.quantization import quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from effdl.deploy.onnx_export import export_onnx
    from effdl.deploy.ort_runtime import _predict, _Reader, session

    float_path = workdir / f"{kind}-float.onnx"
    export_onnx(task.model, task.example_input(2), float_path)
    pre, out = workdir / f"{kind}-pre.onnx", workdir / f"{kind}.onnx"
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quant_pre_process(str(float_path), str(pre))
        if kind == "ort-dynamic-default":
            quantize_dynamic(str(pre), str(out))
            how = "onnxruntime.quantization.quantize_dynamic(model_in, model_out) (defaults)"
        else:
            quantize_static(str(pre), str(out), _Reader(task.calibration_batches(8, 32), "input"))
            how = "onnxruntime.quantization.quantize_static(model_in, model_out, reader) (defaults: QDQ, S8S8, per-tensor, MinMax)"
    return _predict(session(out, threads)), {"how": how}


def bench_peers(model_name: str, data_name: str, mode: dict, threads: int, workdir: Path, log) -> dict:
    from effdl.compress.quantize.ptq import PTQConfig
    from effdl.core.registry import apply
    from effdl.deploy.parity import check_parity, parity_inputs
    from effdl.deploy.runtimes import lower
    from effdl.metrics.latency import measure_latency

    task = zoo_task(model_name, data_name)
    wd = workdir / model_name
    wd.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        static = apply(task, PTQConfig())  # effdl's defaults: what a user gets without tuning
        dynamic = apply(task, PTQConfig(mode="dynamic"))
    builders = {
        "fp32 eager": lambda: (lower(task.model, "eager", task=task, workdir=wd, threads=threads).predict, {}),
        "fp32 ort": lambda: (lower(task.model, "ort", task=task, workdir=wd, threads=threads).predict, {}),
        "peer: torch quantize_dynamic": lambda: _peer_torch_dynamic(task, threads),
        "peer: ORT quantize_dynamic": lambda: _peer_ort(task, threads, wd, "ort-dynamic-default"),
        "peer: ORT quantize_static": lambda: _peer_ort(task, threads, wd, "ort-static-default"),
    }

    def effdl(rt, q):
        low = lower(q, rt, task=task, workdir=wd, threads=threads, batch_sizes=BATCHES)
        return low.predict, {"scheme": low.info.get("scheme"), "config": q.config.to_dict()}

    for rt, q in (("pt2e-int8", static), ("ort-int8", static), ("ort-int8-s8s8", static),
                  ("torch-int8-dynamic", dynamic), ("ort-int8-dynamic", dynamic)):
        builders[f"effdl {rt}"] = lambda rt=rt, q=q: effdl(rt, q)
    inputs = parity_inputs(task, BATCHES)
    variants, rows = {}, {}
    for label, build in builders.items():
        try:
            predict, extra = build()
            from effdl.deploy.lowered import Lowered

            par = check_parity(task.model, Lowered(label, "int8", False, predict), inputs)
            variants[label] = predict
            rows[label] = {"variant": label, "accuracy": accuracy(predict, task), "sqnr_db": par.sqnr_db, "parity_ok": par.ok,
                           "top1_agreement": par.top1_agreement, **extra}
            log(f"  {label}: acc {rows[label]['accuracy']:.4f}, SQNR {par.sqnr_db:.1f} dB")
        except Exception as exc:  # a peer failing is a result, not a crash
            rows[label] = {"variant": label, "error": f"{type(exc).__name__}: {str(exc).strip()[:200]}"}
            log(f"  {label}: failed {rows[label]['error']}")
    times: dict[tuple[str, int], list[float]] = {}
    for r in range(mode["rounds"]):
        order = list(variants)
        order = order[r % len(order):] + order[:r % len(order)]  # rotate: no variant always goes first
        for b in BATCHES:
            x = task.example_input(b)
            for label in order:
                res = measure_latency(variants[label], x, warmup=mode["warmup"], repeats=mode["repeats"],
                                      min_time_s=mode["min_time_s"], threads=threads)
                times.setdefault((label, b), []).append(res["p50_ms"])
    base = rows["fp32 eager"].get("accuracy")
    for label, row in rows.items():
        if "error" in row:
            continue
        row["drop_points"] = 100 * (base - row["accuracy"]) if base is not None else None
        for b in BATCHES:
            row[f"p50_ms_b{b}"] = statistics.median(times[label, b])
            row[f"speedup_vs_eager_b{b}"] = (statistics.median(times["fp32 eager", b]) / row[f"p50_ms_b{b}"])
    return {"model": model_name, "data": data_name, "rows": list(rows.values())}


# -- report ------------------------------------------------------------------------------------------
def _f(v, fmt="{:.2f}"):
    return "-" if v is None else fmt.format(v)


def render(a: list[dict], b: dict, c: list[dict], meta: dict) -> str:
    lines = ["# INT8 post-training quantization", "",
             f"`{meta['command']}` ({meta['mode']}), finished {meta['finished']}, {meta['wall_s']:.0f} s.", ""]
    if meta["warnings"]:
        lines += ["**Timing conditions:**", ""] + [f"- {w}" for w in meta["warnings"]] + [""]
    lines += ["## (a) Per-channel vs per-tensor INT8 (simulated INT8, test split)", "",
              "| model | FP32 acc | variant | INT8 acc | drop (pt) | logit SQNR (dB) |", "|---|---|---|---|---|---|"]
    for m in a:
        for r in m["rows"]:
            lines.append(f"| {m['model']}/{m['data']} | {m['float_accuracy']:.4f} | {r['variant']} | {r['accuracy']:.4f} "
                         f"| {r['drop_points']:.2f} | {r['logit_sqnr_db']:.1f} |")
    lines += ["", "Target: per-channel drop <= 0.3 point.", "",
              "## (b) Depthwise network: MobileNetV2/MNIST (BN folded)", "",
              "| variant | INT8 acc | drop (pt) | logit SQNR (dB) | depthwise weight SQNR mean / min (dB) |",
              "|---|---|---|---|---|"]
    for r in b["rows"]:
        lines.append(f"| {r['variant']} | {r['accuracy']:.4f} | {r['drop_points']:.2f} | {r['logit_sqnr_db']:.1f} "
                     f"| {_f(r['depthwise_weight_sqnr_db_mean'], '{:.1f}')} / {_f(r['depthwise_weight_sqnr_db_min'], '{:.1f}')} |")
    lines += ["", f"FP32 accuracy {b['float_accuracy']:.4f} on {b['n_test']} test images.", "",
              "## (c) Peers' defaults vs effdl INT8 runtimes (accuracy and SQNR on each runtime)", "",
              "| model | variant | acc | drop (pt) | SQNR (dB) | top-1 agree | p50 b1 (ms) | p50 b32 (ms) | x eager b1 | x eager b32 |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for m in c:
        for r in m["rows"]:
            if "error" in r:
                lines.append(f"| {m['model']} | {r['variant']} | failed: {r['error']} |||||||")
                continue
            lines.append(f"| {m['model']} | {r['variant']} | {r['accuracy']:.4f} | {_f(r.get('drop_points'))} "
                         f"| {r['sqnr_db']:.1f} | {r['top1_agreement']:.3f} | {r['p50_ms_b1']:.3f} | {r['p50_ms_b32']:.3f} "
                         f"| {r['speedup_vs_eager_b1']:.2f} | {r['speedup_vs_eager_b32']:.2f} |")
    lines += verdict_lines(c)
    lines += environment_block(meta)
    return "\n".join(lines)


SPEED_NOISE = 0.05  # p50 within 5% counts as "as fast": the spread between rounds of one variant


def verdicts(m: dict) -> list[dict]:
    """Per batch size: effdl's automatic INT8 choice (the fastest of its INT8 runtimes that passed
    parity, as ``effdl optimize`` picks) against each peer's default, on accuracy and p50."""
    rows = {r["variant"]: r for r in m["rows"] if "error" not in r}
    ours = [r for v, r in rows.items() if v.startswith("effdl ") and r["parity_ok"]]
    out = []
    for b in BATCHES:
        if not ours:
            break
        pick = min(ours, key=lambda r: r[f"p50_ms_b{b}"])
        for v, peer in rows.items():
            if not v.startswith("peer: "):
                continue
            ratio = peer[f"p50_ms_b{b}"] / pick[f"p50_ms_b{b}"]
            out.append({"batch": b, "effdl": pick["variant"], "peer": v, "acc_diff_points": 100 * (pick["accuracy"] - peer["accuracy"]),
                        "speed_ratio": ratio, "as_fast": ratio >= 1 - SPEED_NOISE,
                        "as_accurate": pick["accuracy"] >= peer["accuracy"]})
    return out


def verdict_lines(c: list[dict]) -> list[str]:
    lines = ["", "## (d) effdl's automatic INT8 choice vs each peer's default", "",
             "effdl's choice = the fastest of its five INT8 runtimes that passed parity, per batch size (what "
             f"`effdl optimize` picks). As fast: peer p50 / effdl p50 >= {1 - SPEED_NOISE:.2f} (5% noise band); "
             "as accurate: test accuracy >= the peer's (no tolerance; 1 image = 0.1 point).", "",
             "| model | batch | effdl choice | peer | acc diff (pt) | speed (peer p50 / effdl p50) | as accurate | as fast |",
             "|---|---:|---|---|---:|---:|---|---|"]
    met = total = 0
    for m in c:
        for v in verdicts(m):
            total += 1
            met += v["as_fast"] and v["as_accurate"]
            lines.append(f"| {m['model']} | {v['batch']} | {v['effdl'].removeprefix('effdl ')} | {v['peer'].removeprefix('peer: ')} "
                         f"| {v['acc_diff_points']:+.1f} | {v['speed_ratio']:.2f}x | {'yes' if v['as_accurate'] else 'NO'} "
                         f"| {'yes' if v['as_fast'] else 'NO'} |")
    lines += ["", f"Target (issue 4): at least as accurate and at least as fast as each peer: met in {met} of {total} cells."]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds and calls; peers on LeNet-5 only")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "quant_ptq.md")
    args = ap.parse_args(argv)
    reexec_with_steady_malloc([str(Path(__file__).resolve()), *sys.argv[1:]])
    sys.path.insert(0, str(ROOT / "src"))
    import tempfile

    import torch
    from runtimes import CpuLoad

    from effdl.metrics.env import environment
    from effdl.metrics.latency import timing_environment_warnings

    torch.set_num_threads(args.threads)
    mode_name = "quick" if args.quick else "full"
    mode = MODES[mode_name]
    load = CpuLoad()
    start = time.perf_counter()
    warnings_seen = list(timing_environment_warnings())

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f}s] {msg}", flush=True)

    a = []
    for model_name, data_name in (("lenet5", "mnist"), ("mnist1d_cnn", "mnist1d")):
        log(f"(a) {model_name}/{data_name}")
        a.append(bench_accuracy(model_name, data_name, A_VARIANTS, log))
    log("(b) mobilenetv2/mnist")
    b = bench_accuracy("mobilenetv2", "mnist", B_VARIANTS, log)
    c = []
    with tempfile.TemporaryDirectory(prefix="effdl-quant-") as tmp:
        for pair in mode["peer_models"]:
            model_name, _, data_name = pair.partition(":")
            log(f"(c) {model_name}/{data_name}")
            c.append(bench_peers(model_name, data_name, mode, args.threads, Path(tmp), log))
    foreign = load.foreign_fraction()
    kinds = {w.split("(")[0] for w in warnings_seen}
    warnings_seen += [w for w in timing_environment_warnings() if w.split("(")[0] not in kinds]
    if foreign > 0.05:
        warnings_seen.append(f"other processes used {foreign:.0%} of the CPU during the run: timings are "
                             "noisy; re-run on a quiet machine for numbers to quote")
    meta = {
        "command": "python bench/quant_ptq.py " + " ".join(sys.argv[1:]), "mode": mode_name,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %z"), "wall_s": time.perf_counter() - start,
        "threads": args.threads, "timing": mode, "foreign_cpu_fraction": round(foreign, 3),
        "malloc_env": {k: os.environ.get(k) for k in STEADY_MALLOC_ENV}, "warnings": warnings_seen,
        "environment": environment(threads=args.threads),
    }
    text = render(a, b, c, meta)
    publish(args.out, text, {"meta": meta, "a": a, "b": b, "c": c, "d": {m["model"]: verdicts(m) for m in c}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
