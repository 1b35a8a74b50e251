"""Runtime benchmark: FP32 eager / torch.compile / ONNX Runtime, BF16 (compile + autocast), static
INT8 (PT2E + compile, ORT QDQ) and dynamic INT8 (torch quantize_dynamic, ORT MatMulInteger) on
trained zoo models (CNNs, MLP, a small BERT-shaped encoder; the real MiniLM is bench/minilm.py),
at batch 1 and 32, threads pinned to 2.

    python bench/runtimes.py --quick        # a few minutes; results in bench/results/runtimes.md
    python bench/runtimes.py --render bench/results/runtimes.json   # re-render only

Per (model, batch) a summary gives the best FP32, INT8 and BF16 runtimes and effdl's automatic
choice (the fastest verified runtime over what ``effdl optimize`` measures for an FP32, a static-INT8,
a dynamic-INT8 and a BF16-weights candidate), and says how much slower the choice would be without
the BF16 candidate.

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
          ("mnist1d_cnn", "mnist1d"), ("encoder", "mnist")]
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


#: the candidates effdl tried by default before shrink-and-improve gained BF16 candidates (e44a1c6)
PRE_BF16_SOURCES = ("fp32", "int8-static", "int8-dynamic")


def candidate_configs() -> dict:
    """The candidates ``effdl optimize`` builds from a trained model whose runtimes are timed here:
    label -> technique config applied to the FP32 model (None: the FP32 model itself)."""
    from effdl.compress.quantize.float_formats import FloatFormatConfig
    from effdl.compress.quantize.ptq import PTQConfig

    return {"fp32": None, "int8-static": PTQConfig(), "int8-dynamic": PTQConfig(mode="dynamic"),
            "bf16-weights": FloatFormatConfig(format="bf16")}


def bench_model(model_name: str, data_name: str, mode: dict, threads: int, workdir: Path, log) -> dict:
    import torch

    from effdl.core.registry import apply
    from effdl.core.tasks import ImageClassification
    from effdl.data import load_data
    from effdl.deploy import runtimes
    from effdl.deploy.parity import check_parity, parity_inputs
    from effdl.metrics.latency import measure_latency
    from effdl.metrics.measure import fixed_batch, source_model
    from effdl.zoo import trained

    started = time.perf_counter()
    splits = load_data(data_name)
    model = trained(model_name, data_name).eval()
    task = ImageClassification(model, splits.train, splits.val, splits.test, num_classes=splits.num_classes)
    inputs = parity_inputs(task, BATCHES)
    out = {"model": model_name, "data": data_name, "sources": {}, "runtimes": {}}
    live = {}
    for label, config in candidate_configs().items():
        t0 = time.perf_counter()
        try:
            src = model if config is None else apply(task, config)
        except Exception as exc:  # e.g. dynamic INT8 of a model without Linear layers: a result, not a crash
            out["sources"][label] = {"error": _short(exc)}
            log(f"  {model_name}: building {label} failed ({_short(exc)})")
            continue
        tried = runtimes.runtimes_for(src)  # what `effdl optimize` measures for this candidate
        # A BF16-weights model's FP32 runtimes run the FP32 model's graph (weights decoded to FP32), at
        # the FP32 model's speed: they are not timed twice; its bf16 runtime is.
        timed = [rt for rt in tried if rt not in out["runtimes"]]
        out["sources"][label] = {"seconds": round(time.perf_counter() - t0, 2), "runtimes_for": tried, "timed": timed}
        # parity against the original FP32 model for every candidate (for a BF16-weights model this
        # includes the weight rounding; INT8 ones compare with their prepared float model, as effdl does)
        reference = source_model(src).eval() if runtimes.is_int8_model(src) else model
        for rt in timed:
            t0 = time.perf_counter()
            entry: dict = {"source": label}
            out["runtimes"][rt] = entry
            try:
                low = runtimes.lower(src, rt, task=task, workdir=workdir / model_name / label, threads=threads,
                                     batch_sizes=BATCHES)
                entry["lower_s"] = round(time.perf_counter() - t0, 2)
                entry["precision"] = low.precision
                entry["info"] = {k: v for k, v in low.info.items() if k in (
                    "compile_s", "export_s", "quantize_s", "int8_kernels_lowered", "qdq_nodes", "nodes_kept_float",
                    "amx", "converted")}
                with torch.inference_mode():
                    parity = check_parity(reference, low, inputs)
                    entry["accuracy"] = task.evaluate(fixed_batch(low.predict, BATCHES[-1]), "test")["accuracy"]
                entry["parity"] = parity.to_dict()
                live[rt] = low  # timed even when parity fails (shown, never chosen)
            except Exception as exc:  # a failed lowering is a result of the benchmark, not a crash
                entry["error"] = _short(exc)
            log(f"  {model_name}: {rt} ({label}) lowered in {time.perf_counter() - t0:.1f}s"
                + (f" ({entry['error']})" if "error" in entry else
                   f", parity {'ok' if entry['parity']['ok'] else 'FAIL'}, acc {entry['accuracy']:.4f}"))
    # one interleaved timing run over every lowering of this model (FP32, BF16, static and dynamic INT8)
    out["lowering_s"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
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
    out["timing_s"] = round(time.perf_counter() - started, 1)
    out["summary"] = {str(b): summarize(out["runtimes"], str(b)) for b in BATCHES}
    return out


def _verified(entry: dict, b: str) -> float | None:
    """p50 at batch ``b`` of a lowering that passed parity, else None."""
    if "error" in entry or not entry.get("parity", {}).get("ok"):
        return None
    return entry.get("p50_ms", {}).get(b)


def _fastest(rts: dict, b: str, keep) -> tuple[str, float] | None:
    timed = [(p50, rt) for rt, e in rts.items() if keep(e) and (p50 := _verified(e, b)) is not None]
    return (min(timed)[1], min(timed)[0]) if timed else None


def summarize(rts: dict, b: str) -> dict:
    """The summary row of one (model, batch), from the interleaved timings already taken.

    ``auto`` is what effdl picks by itself: the fastest verified runtime over every candidate's
    default runtimes (FP32, static INT8, dynamic INT8, BF16 weights), which is every runtime timed
    here; ``pre_bf16`` is the same without the BF16 candidate (effdl's default set before e44a1c6).
    """
    eager = rts.get("eager", {}).get("p50_ms", {}).get(b)
    row: dict = {"eager_p50_ms": eager}

    def pick(name: str, keep) -> None:
        best = _fastest(rts, b, keep)
        row[name] = None if best is None else {
            "runtime": best[0], "p50_ms": best[1], "speedup": eager / best[1] if eager else None}

    pick("best_fp32", lambda e: e.get("precision") == "fp32")
    pick("best_int8", lambda e: e.get("precision") == "int8")
    pick("bf16", lambda e: e.get("precision") == "bf16")
    pick("auto", lambda e: True)
    pick("pre_bf16", lambda e: e["source"] in PRE_BF16_SOURCES)
    auto, pre = row["auto"], row["pre_bf16"]
    row["agree"] = bool(auto and pre and auto["runtime"] == pre["runtime"])
    # how much slower the pre-BF16 default set is than effdl's choice now (1.0 = same runtime)
    row["pre_over_auto"] = pre["p50_ms"] / auto["p50_ms"] if auto and pre else None
    return row


#: REFERENCE.md ("The machines") ratios measured here by others: (what, model, batch, runtime, baseline, ratio).
#: The baseline is eager FP32 unless it is "ort" (ORT figures there are relative to ORT FP32). Batch None:
#: REFERENCE gives none; compared at batch 32. Its models differ in size from the zoo's (its encoder
#: has 6 layers, MiniLM width; the zoo encoder 2 layers, dim 64, 16 tokens), so only the direction
#: and rough size of a ratio are expected to carry over.
REFERENCE_RATIOS = [
    ("PT2E static INT8 + compile", "resnet20", 32, "pt2e-int8", "eager", 5.8),
    ("PT2E static INT8 + compile", "resnet20", 1, "pt2e-int8", "eager", 1.3),
    ("PT2E static INT8 + compile", "encoder", None, "pt2e-int8", "eager", 4.0),
    ("PT2E static INT8 + compile", "mlp", None, "pt2e-int8", "eager", 3.5),
    ("BF16 compile + autocast", "resnet20", 32, "bf16", "eager", 5.4),
    ("BF16 compile + autocast", "encoder", None, "bf16", "eager", 3.9),
    ("BF16 compile + autocast", "mlp", None, "bf16", "eager", 2.7),
    ("torch quantize_dynamic", "encoder", None, "torch-int8-dynamic", "eager", 1.75),
    ("torch quantize_dynamic", "mlp", None, "torch-int8-dynamic", "eager", 2.6),
    ("ORT quantize_dynamic vs ORT FP32", "encoder", None, "ort-int8-dynamic", "ort", 2.1),
    ("ORT quantize_dynamic vs ORT FP32", "mlp", None, "ort-int8-dynamic", "ort", 3.5),
    ("ORT static QDQ U8S8 vs ORT FP32", "resnet20", None, "ort-int8", "ort", 1.5),
    ("ORT static QDQ U8S8 vs ORT FP32", "encoder", None, "ort-int8", "ort", 1.8),
    ("ORT static QDQ U8S8 vs ORT FP32", "mlp", None, "ort-int8", "ort", 4.2),
    ("ORT FP32 vs eager (~5x on ResNet at batch 1)", "resnet20", 1, "ort", "eager", 5.0),
    ("ORT FP32 vs eager (slower on the encoder)", "encoder", None, "ort", "eager", None),
]
#: a measured ratio within this factor of REFERENCE's counts as agreeing
AGREE_FACTOR = 1.5


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


def _pick_cell(pick: dict | None, with_ms: bool = False) -> str:
    if not pick:
        return "none verified"
    ms = f", {_fmt_ms(pick['p50_ms'])} ms" if with_ms else ""
    return f"{pick['runtime']}{ms}, {pick['speedup']:.2f}x" if pick["speedup"] else pick["runtime"] + ms


def _bf16_cell(res: dict, b: str) -> str:
    e = res["runtimes"].get("bf16")
    if e is None:
        return "not run"
    if "error" in e:
        return "lowering failed"
    base, p50 = res["runtimes"].get("eager", {}).get("p50_ms", {}).get(b), e.get("p50_ms", {}).get(b)
    speed = f"{base / p50:.2f}x" if base and p50 else "?"
    return speed if e["parity"]["ok"] else f"parity FAIL ({speed})"


def summary_lines(results: list[dict]) -> list[str]:
    lines = ["## Summary per model and batch", "",
             ("Best FP32 / best INT8 / BF16: the fastest runtime of that precision that passed parity (speed-up vs eager "
             "FP32). **effdl automatic choice**: the fastest verified runtime over what `effdl optimize` measures for "
             "an FP32, a static-INT8, a dynamic-INT8 and a BF16-weights candidate (`runtimes_for` of each: bf16 is "
             "tried by default on BF16-weight models since e44a1c6); that is every runtime timed here, so it is also "
             "the fastest verified one. **Without BF16**: the same over the FP32 and INT8 candidates only (effdl's "
             "default set before BF16 candidates); the last column says whether they agree and, if not, how much "
             "slower the set without BF16 is. All from the one interleaved timing run per model."), "",
             ("| model | batch | eager p50 ms | best FP32 | best INT8 | BF16 | effdl automatic choice | without BF16 "
              "| agree? |"), "|---|---:|---:|---|---|---|---|---|---|"]
    disagree, rows = [], 0
    for res in results:
        if "summary" not in res:
            continue
        for b, row in res["summary"].items():
            rows += 1
            if row["agree"]:
                verdict = "yes"
            elif row["pre_over_auto"]:
                verdict = f"no: {row['pre_over_auto']:.2f}x slower without BF16"
                disagree.append((res["model"], b, row))
            else:
                verdict = "no verified runtime"
            eager = _fmt_ms(row["eager_p50_ms"]) if row["eager_p50_ms"] else ""
            lines.append(f"| {res['model']} | {b} | {eager} | {_pick_cell(row['best_fp32'], True)} | "
                         f"{_pick_cell(row['best_int8'])} | {_bf16_cell(res, b)} | {_pick_cell(row['auto'])} | "
                         f"{_pick_cell(row['pre_bf16'])} | {verdict} |")
    lines.append("")
    if disagree:
        worst = max(disagree, key=lambda d: d[2]["pre_over_auto"])
        lines.append(
            f"BF16 was the fastest verified runtime in {len(disagree)} of {rows} rows ("
            + ", ".join(f"{m} batch {b}: {row['pre_over_auto']:.2f}x" for m, b, row in disagree)
            + f" faster than the best FP32/INT8 runtime); worst case without the BF16 candidate: {worst[0]} batch "
            f"{worst[1]}, {worst[2]['pre_over_auto']:.2f}x slower. Keeping BF16 candidates in effdl's default set "
            "is what finds these.")
    else:
        lines.append(f"BF16 was the fastest verified runtime in none of the {rows} rows: on these models the FP32 "
                     "and INT8 candidates alone find effdl's fastest runtime.")
    return lines + [""]


def _ratio(res: dict, runtime: str, baseline: str, b: str) -> float | None:
    rts = res["runtimes"]
    num, den = _verified(rts.get(baseline, {}), b), _verified(rts.get(runtime, {}), b)
    return num / den if num and den else None


def reference_lines(results: list[dict]) -> list[str]:
    by_model = {r["model"]: r for r in results if "runtimes" in r}
    lines = ["## Against REFERENCE.md", "",
             (f"Ratios REFERENCE.md reports for this machine type (2 threads, steady allocator) next to this run's "
             f"(verified lowerings only). Batch as REFERENCE states it, else 32 (the batch-1 ratio is shown too). "
             f"Agree = within {AGREE_FACTOR}x either way. REFERENCE's models are larger than the zoo's (its encoder "
             f"is a 6-layer MiniLM-sized one; the zoo encoder has 2 layers, dim 64, 16 tokens), and small models "
             f"leave less work for INT8/BF16 kernels to speed up, so lower ratios here are expected. REFERENCE's "
             f"ORT static S8S8 figures (slower than FP32) are not re-measured: effdl's ort-int8 uses U8S8."), "",
             "| what | model | baseline | batch | REFERENCE | here | here at batch 1 | agree? |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for what, model, batch, runtime, baseline, ref in REFERENCE_RATIOS:
        res = by_model.get(model)
        if res is None:
            continue
        b = str(batch or 32)
        here = _ratio(res, runtime, baseline, b)
        here1 = _ratio(res, runtime, baseline, "1") if b != "1" else None
        if here is None:
            verdict = "not measured (lowering or parity failed)"
        elif ref is None:  # a direction only ("slower")
            verdict = "yes (slower)" if here < 1 else "no (faster here)"
        else:
            verdict = "yes" if 1 / AGREE_FACTOR <= here / ref <= AGREE_FACTOR else (
                "no (lower here)" if here < ref else "no (higher here)")
        lines.append(f"| {what} | {model} | {baseline} FP32 | {b} | {f'{ref:.2f}x' if ref else '< 1x'} | "
                     f"{f'{here:.2f}x' if here else ''} | {f'{here1:.2f}x' if here1 else ''} | {verdict} |")
    return lines + [""]


def render(results: list[dict], meta: dict) -> str:
    lines = [
        "# Runtime benchmark", "",
        f"`{meta['command']}` — {meta['mode']} mode, {meta['finished']}, {meta['wall_s']:.0f} s.", "",
        f"Threads pinned to {meta['threads']} (torch intra-op / ORT intra-op, ORT inter-op 1); malloc env "
        f"{meta['malloc_env']}; latency = median over {meta['timing']['rounds']} interleaved rounds of the per-round "
        f"median of >= {meta['timing']['repeats']} calls after {meta['timing']['warmup']} warm-up calls; every "
        "lowering of a model (FP32, bf16, static and dynamic INT8) is in the same interleaved rounds. "
        "Speed-up = eager FP32 p50 / runtime p50 at the same model and batch. Static INT8 = quantize.ptq defaults "
        "(per-channel int8 weights, uint8 activations, min/max calibration on 8 x 32 training images); dynamic "
        "INT8 = quantize.ptq mode='dynamic' (int8 Linear weights, activations quantized per batch). "
        "Parity is against the FP32 source on 264 real validation/test inputs at batch 1 and 32 "
        "(FP32: |y - x| <= 1e-5 + 1e-3 |x|; INT8 and BF16: SQNR >= 20 dB and top-1 agreement >= 0.99). "
        "BF16 = quantize.float format='bf16' (bf16-rounded weights) on the bf16 runtime (compile + CPU bf16 "
        "autocast); its parity is against the original FP32 model, so it includes the weight rounding. Source = "
        "the candidate a runtime was lowered from.",
        "",
    ]
    lines += [f"CPU time used by other processes during the run: {meta['foreign_cpu_fraction']:.0%} of all cores.", ""]
    if meta["warnings"]:
        lines += ["**Timing warnings**:", ""] + [f"- {w}" for w in meta["warnings"]] + [""]
    lines += summary_lines(results) + reference_lines(results)
    lines += ["## Every runtime", "",
              ("| model | data | batch | runtime | source | precision | p50 ms | speed-up vs eager "
               "| test acc | parity |"), "|---|---|---:|---|---|---|---:|---:|---:|---|"]
    for res in results:
        if "error" in res:
            lines.append(f"| {res['model']} | {res['data']} | | | | | | | | failed: {res['error']} |")
            continue
        for b in (str(x) for x in BATCHES):
            base = res["runtimes"].get("eager", {}).get("p50_ms", {}).get(b)
            for rt, e in res["runtimes"].items():
                p50 = e.get("p50_ms", {}).get(b)
                speed = f"{base / p50:.2f}x" if base and p50 else ""
                acc = f"{e['accuracy']:.4f}" if "accuracy" in e else ""
                lines.append(f"| {res['model']} | {res['data']} | {b} | {rt} | {e['source']} | "
                             f"{e.get('precision', '')} | "
                             f"{_fmt_ms(p50) if p50 else ''} | {speed} | {acc} | {_parity_cell(e)} |")
    lines += ["", "## Lowering details", "",
              "| model | runtime | lower s | details |", "|---|---|---:|---|"]
    for res in results:
        if "timing_s" in res:
            lines.append(f"| {res['model']} | (all) | {res['lowering_s']} | building, lowering and parity-checking "
                         f"every candidate; then {res['timing_s']} s of interleaved timing |")
        for label, src in res.get("sources", {}).items():
            if "error" in src:
                lines.append(f"| {res['model']} | ({label} model) | | building it failed: {src['error']} |")
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
    ap.add_argument("--render", type=Path, help="only re-render the tables from this results .json (no timing)")
    args = ap.parse_args(argv)
    if args.render:
        import json

        sys.path.insert(0, str(ROOT / "src"))
        from effdl.core.io import atomic_write

        data = json.loads(args.render.read_text())
        atomic_write(args.out, render(data["results"], data["meta"]))
        return 0
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
