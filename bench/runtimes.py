"""Runtime benchmark: FP32 eager / torch.compile / ONNX Runtime and PTQ INT8 (PT2E + compile,
ORT QDQ) on trained zoo models, at batch 1 and 32, threads pinned to 2.

    python bench/runtimes.py --quick        # a few minutes; results in bench/results/runtimes.md

Method (REFERENCE.md): the process runs with steady glibc malloc thresholds (it re-executes itself
with them if they are missing); every lowering passes its parity check on real inputs first; the
variants of one model are timed interleaved (round-robin, order rotated every round), each timing
is the median of many calls after warm-up, and the reported p50 is the median over rounds. Foreign
CPU load during the run is measured and printed: timings taken on a busy machine are noisy.
"""
from __future__ import annotations

from _publish import environment_block, publish

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from effdl.metrics.latency import STEADY_MALLOC_ENV, reexec_with_steady_malloc

ROOT = Path(__file__).resolve().parents[1]


def _steady_allocator() -> None:
    reexec_with_steady_malloc([str(Path(__file__).resolve()), *sys.argv[1:]])


MODELS = [("lenet5", "mnist"), ("mlp", "mnist"), ("resnet20", "mnist"), ("mobilenetv2", "mnist"),
          ("mnist1d_cnn", "mnist1d")]
BATCHES = (1, 32)
MODES = {  # rounds of interleaved timing; per timing: calls and minimum seconds
    "quick": {"rounds": 3, "repeats": 15, "min_time_s": 0.05, "warmup": 3},
    "full": {"rounds": 7, "repeats": 50, "min_time_s": 0.3, "warmup": 10},
}


class CpuLoad:
    """CPU time used by other processes while this one runs, as a fraction of all cores."""

    def __init__(self) -> None:
        import psutil

        self.psutil = psutil
        self.proc = psutil.Process()
        self.t0, self.sys0, self.own0 = time.perf_counter(), self._busy(), self._own()

    def _busy(self) -> float:
        t = self.psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    def _own(self) -> float:
        c = self.proc.cpu_times()
        return c.user + c.system + c.children_user + c.children_system

    def foreign_fraction(self) -> float:
        wall = time.perf_counter() - self.t0
        cores = self.psutil.cpu_count() or 1
        foreign = (self._busy() - self.sys0) - (self._own() - self.own0)
        return max(0.0, foreign / (wall * cores)) if wall > 0 else 0.0


def _short(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0][:200] if msg else ''}"


def bench_model(model_name: str, data_name: str, mode: dict, threads: int, workdir: Path, log) -> dict:
    import torch

    from effdl.compress.quantize.ptq import PTQConfig
    from effdl.core.registry import apply
    from effdl.core.task import ImageClassification
    from effdl.data import load_data
    from effdl.deploy.parity import check_parity, parity_inputs
    from effdl.deploy.runtimes import lower, runtimes_for
    from effdl.metrics.latency import measure_latency
    from effdl.metrics.measure import fixed_batch
    from effdl.zoo import trained

    splits = load_data(data_name)
    model = trained(model_name, data_name).eval()
    task = ImageClassification(model, splits.train, splits.val, splits.test, num_classes=splits.num_classes)
    t0 = time.perf_counter()
    quantized = apply(task, PTQConfig())
    ptq_s = time.perf_counter() - t0
    inputs = parity_inputs(task, BATCHES)
    out = {"model": model_name, "data": data_name, "ptq_s": round(ptq_s, 2), "runtimes": {}}
    live = {}
    for src in (model, quantized):
        for rt in runtimes_for(src):
            t0 = time.perf_counter()
            entry: dict = {}
            out["runtimes"][rt] = entry
            try:
                low = lower(src, rt, task=task, workdir=workdir / model_name, threads=threads, batch_sizes=BATCHES)
                entry["lower_s"] = round(time.perf_counter() - t0, 2)
                entry["precision"] = low.precision
                entry["info"] = {k: v for k, v in low.info.items() if k in (
                    "compile_s", "export_s", "quantize_s", "int8_kernels_lowered", "qdq_nodes", "nodes_kept_float")}
                with torch.inference_mode():
                    parity = check_parity(model, low, inputs)
                    entry["accuracy"] = task.evaluate(fixed_batch(low.predict, BATCHES[-1]), "test")["accuracy"]
                entry["parity"] = parity.to_dict()
                live[rt] = low
            except Exception as exc:  # a failed lowering is a result of the benchmark, not a crash
                entry["error"] = _short(exc)
            log(f"  {model_name}: {rt} lowered in {time.perf_counter() - t0:.1f}s"
                + (f" ({entry['error']})" if "error" in entry else
                   f", parity {'ok' if entry['parity']['ok'] else 'FAIL'}, acc {entry['accuracy']:.4f}"))
    xs = {b: task.example_input(b) for b in BATCHES}
    keys = [(rt, b) for b in BATCHES for rt in live]
    samples: dict = {k: [] for k in keys}
    for r in range(mode["rounds"]):
        order = keys[r % len(keys):] + keys[:r % len(keys)] if keys else []
        for rt, b in order:
            with torch.inference_mode():
                lat = measure_latency(live[rt].predict, xs[b], warmup=mode["warmup"], repeats=mode["repeats"],
                                      min_time_s=mode["min_time_s"], threads=threads)
            samples[rt, b].append(lat["p50_ms"])
    for rt, b in keys:
        out["runtimes"][rt].setdefault("p50_ms", {})[str(b)] = statistics.median(samples[rt, b])
        out["runtimes"][rt].setdefault("p50_rounds_ms", {})[str(b)] = [round(v, 4) for v in samples[rt, b]]
    return out


def _fmt_ms(v: float) -> str:
    return f"{v:.3f}" if v < 1 else f"{v:.2f}"


def _parity_cell(entry: dict) -> str:
    if "error" in entry:
        return "lowering failed"
    p = entry["parity"]
    if p["lossless"]:
        detail = f"max abs err {p['max_abs_err']:.1e}"
    else:
        detail = f"SQNR {p['sqnr_db']:.1f} dB, agree {p['top1_agreement']:.3f}"
    return ("ok" if p["ok"] else "FAIL") + f" ({detail})"


def render(results: list[dict], meta: dict) -> str:
    lines = [
        "# Runtime benchmark", "",
        f"`{meta['command']}` — {meta['mode']} mode, {meta['finished']}, {meta['wall_s']:.0f} s.", "",
        f"Threads pinned to {meta['threads']} (torch intra-op / ORT intra-op, ORT inter-op 1); malloc env "
        f"{meta['malloc_env']}; latency = median over {meta['timing']['rounds']} interleaved rounds of the per-round "
        f"median of >= {meta['timing']['repeats']} calls after {meta['timing']['warmup']} warm-up calls. "
        "Speed-up = eager FP32 p50 / runtime p50 at the same model and batch. INT8 = quantize.ptq defaults "
        "(per-channel int8 weights, uint8 activations, min/max calibration on 8 x 32 training images). "
        "Parity is against the FP32 source on 264 real validation/test inputs at batch 1 and 32 "
        "(FP32: |y - x| <= 1e-5 + 1e-3 |x|; INT8: SQNR >= 20 dB and top-1 agreement >= 0.99).", "",
    ]
    lines += [f"CPU time used by other processes during the run: {meta['foreign_cpu_fraction']:.0%} of all cores.", ""]
    if meta["warnings"]:
        lines += ["**Timing warnings**:", ""] + [f"- {w}" for w in meta["warnings"]] + [""]
    lines += ["| model | data | batch | runtime | precision | p50 ms | speed-up vs eager | test acc | parity |",
              "|---|---|---:|---|---|---:|---:|---:|---|"]
    for res in results:
        if "error" in res:
            lines.append(f"| {res['model']} | {res['data']} | | | | | | | failed: {res['error']} |")
            continue
        for b in (str(x) for x in BATCHES):
            base = res["runtimes"].get("eager", {}).get("p50_ms", {}).get(b)
            for rt, e in res["runtimes"].items():
                p50 = e.get("p50_ms", {}).get(b)
                speed = f"{base / p50:.2f}x" if base and p50 else ""
                acc = f"{e['accuracy']:.4f}" if "accuracy" in e else ""
                lines.append(f"| {res['model']} | {res['data']} | {b} | {rt} | {e.get('precision', '')} | "
                             f"{_fmt_ms(p50) if p50 else ''} | {speed} | {acc} | {_parity_cell(e)} |")
    lines += ["", "## Lowering details", "",
              "| model | runtime | lower s | details |", "|---|---|---:|---|"]
    for res in results:
        for rt, e in res.get("runtimes", {}).items():
            detail = e.get("error") or ", ".join(f"{k}={v}" for k, v in e.get("info", {}).items() if v not in ({}, [], None))
            lines.append(f"| {res['model']} | {rt} | {e.get('lower_s', '')} | {detail} |")
    lines += environment_block(meta)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds and calls (a few minutes)")
    ap.add_argument("--models", default=",".join(f"{m}:{d}" for m, d in MODELS),
                    help="comma-separated model:data pairs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "runtimes.md")
    args = ap.parse_args(argv)
    _steady_allocator()
    sys.path.insert(0, str(ROOT / "src"))
    import tempfile

    import torch

    from effdl.metrics.env import environment
    from effdl.metrics.latency import timing_environment_warnings

    torch.set_num_threads(args.threads)
    mode_name = "quick" if args.quick else "full"
    mode = MODES[mode_name]
    load = CpuLoad()
    start = time.perf_counter()
    warnings_seen = list(timing_environment_warnings())
    results = []

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f}s] {msg}", flush=True)

    with tempfile.TemporaryDirectory(prefix="effdl-bench-") as tmp:
        for pair in args.models.split(","):
            model_name, _, data_name = pair.partition(":")
            log(f"{model_name} on {data_name}")
            try:
                results.append(bench_model(model_name, data_name, mode, args.threads, Path(tmp), log))
            except Exception as exc:  # one model failing must not lose the others' results
                results.append({"model": model_name, "data": data_name, "error": _short(exc)})
                log(f"  failed: {_short(exc)}")
    foreign = load.foreign_fraction()
    kinds = {w.split("(")[0] for w in warnings_seen}  # one line per kind: the start's reading stays
    warnings_seen += [w for w in timing_environment_warnings() if w.split("(")[0] not in kinds]
    if foreign > 0.05:
        warnings_seen.append(f"other processes used {foreign:.0%} of the CPU during the run: timings are "
                             "noisy; re-run on a quiet machine for numbers to quote")
    meta = {
        "command": "python bench/runtimes.py " + " ".join(sys.argv[1:]), "mode": mode_name,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %z"), "wall_s": time.perf_counter() - start,
        "threads": args.threads, "timing": mode, "foreign_cpu_fraction": round(foreign, 3),
        "malloc_env": {k: os.environ.get(k) for k in STEADY_MALLOC_ENV}, "warnings": warnings_seen,
        "environment": environment(threads=args.threads),
    }
    text = render(results, meta)
    publish(args.out, text, {"meta": meta, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
