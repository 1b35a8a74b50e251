"""Olive peer: effdl's search vs Microsoft Olive's search on the same model, same trial budget.

    python bench/olive_peer.py --quick    # N = 8 trials each; results in bench/results/olive_peer.md
    python bench/olive_peer.py            # N = 30 trials each

Needs the optional extra ``peers`` (``pip install -e '.[peers]'``, i.e. olive-ai==0.13.0).

One model: effdl's trained LeNet-5 on its bundled MNIST subset (``build_task("zoo:lenet5", "mnist")``).
In one process, one after the other:

* **Olive 0.13** (two ``olive.workflows.run`` run configs built below): ``OnnxConversion`` of the
  PyTorch model, then a search over ``OnnxQuantization`` on that ONNX model with Olive's own default
  search space for the pass (quant_mode dynamic/static, precision, per_channel, reduce_range,
  quant_preprocess and, for static, calibrate_method, quant_format, activation type), joint order,
  Olive's TPE sampler, ``max_iter = N - 1`` (N iterations). Olive's built-in accuracy metric (on
  effdl's validation split) with the goal "at least the FP32 validation accuracy - 0.01", and its
  built-in latency metric (p50 at batch 1, ONNX Runtime with 2 threads) steer it. Olive 0.13 in this
  venv (pydantic 2.14) needed config-level workarounds, each explained in the results' notes.
* **effdl**: ``optimize(task, Goal(max_drop=0.01), search=SearchSettings(sampler="tpe", trials=N,
  pruner="median"), measure=MeasureSettings(threads=2))``.

Then every ONNX model Olive produced is measured again the way effdl measures an ONNX Runtime
candidate (effdl's ORT session options, 2 intra-op threads, ``measure_latency`` with 10 warm-up calls
and at least 30 timed calls, median; accuracy on validation and test via ``task.evaluate``; size =
the .onnx file). effdl's numbers come from its results.json. Both frontiers are scored with effdl's
hypervolume (drop / 0.01, latency / the FP32 baseline's ONNX Runtime latency measured here).

This file is also the ``user_script`` Olive imports (model loader, calibration data set, metric):
keep it importable without side effects.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
NAME = "olive_peer"
MODES = {"quick": {"trials": 8}, "full": {"trials": 30}}
THREADS = 2
MAX_DROP = 0.01
CALIBRATION_SAMPLES = 256  # training images for Olive's static-quantization calibration
WARMUP, REPEATS = 10, 30


# ---------------------------------------------------------------- shared helpers (and Olive's user script)

_TASK = None


def task():
    """The shared task (built once per importing module)."""
    global _TASK
    if _TASK is None:
        from effdl.specs import build_task

        _TASK = build_task("zoo:lenet5", "mnist")
    return _TASK


def load_model(model_path=None):
    """Olive's ``model_loader``: the trained LeNet-5 (a torch.nn.Module), in eval mode."""
    return task().model.eval()


def ort_predictor(path: str | Path):
    """batch -> logits through ONNX Runtime with effdl's session options (2 intra-op threads)."""
    import torch

    from effdl.deploy.ort_runtime import session

    sess = session(Path(path), THREADS)
    name = sess.get_inputs()[0].name

    def predict(x):
        return torch.from_numpy(sess.run(None, {name: x.detach().float().contiguous().numpy()})[0])

    return predict


def latency_ms(predict) -> float:
    from effdl.metrics.latency import measure_latency

    x = task().example_input(1, "val")
    return measure_latency(predict, x, warmup=WARMUP, repeats=REPEATS, threads=THREADS)["p50_ms"]


class _Split:
    """Olive data set over one split of the task: ({"input": x}, label) pairs."""

    def __init__(self, split: str, n: int | None = None):
        xs, ys = [], []
        for x, y in task().batches(split, 64):
            xs.extend(x)
            ys.extend(y)
            if n is not None and len(xs) >= n:
                break
        self.items = list(zip(xs[:n], ys[:n]))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        x, y = self.items[i]
        return {"input": x}, y


try:  # Olive's data components, registered when Olive imports this file as its user script
    from olive.data.registry import Registry

    @Registry.register_dataset()
    def effdl_mnist(data_name=None, split: str = "val", n: int | None = None, **kwargs):
        return _Split(split, n)

    @Registry.register_post_process()
    def effdl_argmax(output, **kwargs):
        return output.argmax(dim=-1)
except ImportError:  # pragma: no cover - without the peers extra
    pass


# ---------------------------------------------------------------- the two searches

IO_CONFIG = {"input_names": ["input"], "input_shapes": [[1, 1, 28, 28]], "output_names": ["logits"],
             "dynamic_axes": {"input": {"0": "batch"}, "logits": {"0": "batch"}}}


def _common(out: Path) -> dict:
    return {
        "systems": {"local": {"type": "LocalSystem",
                              "accelerators": [{"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]}},
        "host": "local",
        "target": "local",
        "cache_dir": str(out / "cache"),
        "clean_cache": True,
        "output_dir": str(out / "output"),
        "log_severity_level": 1,
    }


def olive_conversion_config(out: Path) -> dict:
    """Olive workflow 1 (no search): the PyTorch LeNet-5 to ONNX with Olive's OnnxConversion."""
    script = str(Path(__file__).resolve())
    return {
        "input_model": {"type": "PyTorchModel", "model_script": script, "script_dir": str(BENCH),
                        "model_loader": "load_model", "io_config": IO_CONFIG},
        "passes": {"conversion": {"type": "OnnxConversion", "target_opset": 17}},
        "search_strategy": False,
        **_common(out),
    }


def olive_search_config(onnx_path: str, trials: int, out: Path, base_val: float) -> dict:
    """Olive workflow 2: search OnnxQuantization's parameters on the converted model, N samples."""
    script = str(Path(__file__).resolve())
    return {
        "input_model": {"type": "ONNXModel", "model_path": onnx_path},
        "data_configs": [
            {"name": "calibration", "user_script": script, "script_dir": str(BENCH),
             "load_dataset_config": {"type": "effdl_mnist", "split": "train", "n": CALIBRATION_SAMPLES},
             "dataloader_config": {"batch_size": 1}},
            {"name": "validation", "user_script": script, "script_dir": str(BENCH),
             "load_dataset_config": {"type": "effdl_mnist", "split": "val"},
             "post_process_data_config": {"type": "effdl_argmax"},
             "dataloader_config": {"batch_size": 100}},
            {"name": "batch1", "user_script": script, "script_dir": str(BENCH),
             "load_dataset_config": {"type": "effdl_mnist", "split": "val", "n": 1},
             "dataloader_config": {"batch_size": 1}},
        ],
        # Olive's own evaluators (a "custom" metric cannot be serialised by Olive 0.13 here: see the notes)
        "evaluators": {"effdl_like": {"type": "OnnxEvaluator", "metrics": [
            {"name": "accuracy", "type": "accuracy", "backend": "torch_metrics", "data_config": "validation",
             "sub_types": [{"name": "accuracy_score", "priority": 1,
                            # = max-degradation 0.01 off the FP32 model's validation accuracy (see the notes)
                            "goal": {"type": "threshold", "value": base_val - MAX_DROP},
                            "metric_config": {"task": "multiclass", "num_classes": 10}}]},
            {"name": "latency", "type": "latency", "data_config": "batch1",
             "sub_types": [{"name": "p50", "priority": 2,
                            "metric_config": {"warmup_num": WARMUP, "repeat_test_num": REPEATS}}],
             "user_config": {"inference_settings": {"onnx": {"session_options": {
                 "intra_op_num_threads": THREADS, "inter_op_num_threads": 1, "execution_mode": 0,
                 "graph_optimization_level": 99}}}}},
        ]}},
        # no parameter fixed: Olive searches its own default search space for this pass
        "passes": {"quantization": {"type": "OnnxQuantization", "data_config": "calibration"}},
        # max_iter bounds the search: Olive 0.13 drops sampler_config (max_samples, seed) when it builds the
        # engine here (see the notes), and stops once the iteration count exceeds max_iter, so N - 1 gives N
        # iterations; an iteration that draws an invalid parameter combination is counted but not run
        "search_strategy": {"execution_order": "joint", "sampler": "tpe", "max_iter": trials - 1,
                            "sampler_config": {"max_samples": trials, "seed": 0}},
        "evaluator": "effdl_like",
        "evaluate_input_model": False,
        **_common(out),
    }


def _nodes(workflow) -> tuple[list[dict], set]:
    fp = workflow.footprint
    frontier_ids = set(fp.output_model_ids or [])
    nodes = []
    for model_id, node in fp.nodes.items():
        path = ((node.model_config_data or {}).get("config") or {}).get("model_path")
        metrics = {k: v.value for k, v in node.metrics.value.items()} if node.metrics is not None else None
        nodes.append({"id": model_id, "parent": node.parent_model_id, "from_pass": node.from_pass,
                      "pass_config": node.pass_run_config, "model_path": path, "olive_metrics": metrics,
                      "olive_frontier": model_id in frontier_ids,
                      "olive_goals_met": bool(node.metrics and node.metrics.if_goals_met)})
    return nodes, frontier_ids


def run_olive(trials: int, out: Path, base_val: float, log) -> dict:
    import torch
    from olive.workflows import run as olive_run

    torch.set_num_threads(THREADS)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cfg1 = olive_conversion_config(out / "conversion")
    (out / "olive_conversion_config.json").write_text(json.dumps(cfg1, indent=1))
    conv_nodes, _ = _nodes(olive_run(cfg1))
    conv = [n for n in conv_nodes if n["from_pass"] and n["model_path"]]
    if not conv:
        raise RuntimeError(f"Olive's OnnxConversion produced no model: {conv_nodes}")
    onnx_path = conv[-1]["model_path"]
    t1 = time.perf_counter()
    cfg2 = olive_search_config(onnx_path, trials, out / "search", base_val)
    (out / "olive_search_config.json").write_text(json.dumps(cfg2, indent=1))
    steps = _StepLog()
    logging.getLogger("olive").addHandler(steps)
    try:
        nodes, frontier_ids = _nodes(olive_run(cfg2))
    finally:
        logging.getLogger("olive").removeHandler(steps)
    t2 = time.perf_counter()
    samples = [n for n in nodes if n["from_pass"]]
    log(f"olive: conversion {t1 - t0:.1f} s, search {t2 - t1:.1f} s, {len(steps.steps)} samples run "
        f"(last iteration {max(steps.steps, default=0)}), {len(steps.failed)} failed, {len(samples)} distinct "
        f"quantized models, {len(frontier_ids)} output models")
    return {"seconds": t2 - t0, "conversion_seconds": t1 - t0, "search_seconds": t2 - t1,
            "nodes": conv + samples, "samples_run": len(steps.steps), "iterations": max(steps.steps, default=0),
            "failed_samples": steps.failed, "output_model_ids": sorted(frontier_ids)}


class _StepLog(logging.Handler):
    """Counts Olive's search steps from its log: 'Step %d with search point ...' and '... FAILED.'."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.steps: list[int] = []
        self.failed: list[dict] = []

    def emit(self, record):
        msg = str(record.msg)
        if msg.startswith("Step %d with search point"):
            self.steps.append(int(record.args[0]))
        elif msg.startswith("Step %d search point") and msg.endswith("FAILED."):
            reason = ""
            if record.exc_info and record.exc_info[1] is not None:
                reason = f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
            self.failed.append({"step": int(record.args[0]), "point": str(record.args[1])[:400], "reason": reason})


def run_effdl(trials: int, out: Path, log) -> dict:
    import torch

    from effdl import Goal
    from effdl.automate.search import SearchSettings
    from effdl.pipeline.optimize import optimize
    from effdl.pipeline.results import MeasureSettings

    torch.set_num_threads(THREADS)
    t0 = time.perf_counter()
    results = optimize(task(), Goal(max_drop=MAX_DROP), out_dir=out,
                       search=SearchSettings(sampler="tpe", trials=trials, pruner="median"),
                       measure=MeasureSettings(threads=THREADS))
    seconds = time.perf_counter() - t0
    data = json.loads((out / "results.json").read_text())
    log(f"effdl: {seconds:.1f} s, {len(data['candidates'])} candidates, chosen {data.get('chosen')}")
    rows = []
    for c in data["candidates"]:
        fp = c.get("footprint") or {}
        rows.append({"id": c["id"], "label": c["label"], "status": c["status"], "reason": c.get("reason"),
                     "runtime": c.get("runtime"), "trial": c.get("trial"), "params": c.get("params"),
                     "val": (c.get("quality_val") or {}).get("accuracy"), "test": (c.get("quality") or {}).get("accuracy"),
                     "latency_ms": fp.get("latency_ms_p50"), "size_bytes": fp.get("size_bytes"),
                     "on_frontier": bool(c.get("on_frontier")), "baseline": c["id"] == data["baseline"]})
    return {"seconds": seconds, "rows": rows, "chosen": data.get("chosen"), "baseline": data["baseline"],
            "search": data.get("search"), "out_dir": str(out)}


# ---------------------------------------------------------------- measuring and scoring

def measure_onnx(path: str) -> dict:
    predict = ort_predictor(path)
    return {"val": task().evaluate(predict, "val")["accuracy"], "test": task().evaluate(predict, "test")["accuracy"],
            "latency_ms": latency_ms(predict), "size_bytes": Path(path).stat().st_size}


def frontier_flags(points: list[tuple[float, float]]) -> list[bool]:
    """Non-dominated in (validation drop, latency), both minimised; equal points are both kept."""
    return [not any(q != p and q[0] <= p[0] and q[1] <= p[1] for q in points) for p in points]


def score(rows: list[dict], base_val: float, base_latency: float) -> dict:
    from effdl.automate.hypervolume import hypervolume, normalised, reference_point

    ok = [r for r in rows if r.get("val") is not None and r.get("latency_ms") is not None]
    pts = [normalised(base_val - r["val"], MAX_DROP, [r["latency_ms"]], [base_latency]) for r in ok]
    within = [r for r in ok if r["val"] >= base_val - MAX_DROP - 1e-9]
    best = min(within, key=lambda r: r["latency_ms"]) if within else None
    return {"hypervolume": hypervolume(pts, reference_point(1)),
            "best_latency_ms": best["latency_ms"] if best else None,
            "best_id": best["id"] if best else None,
            "best_speedup": base_latency / best["latency_ms"] if best else None}


def run(mode: dict, log) -> dict:
    import onnxruntime
    import torch

    from effdl.deploy.ort_runtime import lower_ort

    trials = mode["trials"]
    work = Path(mode["work_dir"])
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(THREADS)
    t = task()
    # the shared baseline: FP32 LeNet-5 exported by effdl, through ONNX Runtime, 2 threads
    low = lower_ort(t.model.eval(), task=t, workdir=work / "baseline", threads=THREADS, batch_sizes=(1, 32))
    baseline = measure_onnx(str(low.artifact))
    baseline["eager_val"] = t.evaluate(t.model, "val")["accuracy"]
    log(f"baseline FP32 ORT: {baseline}")

    out: dict = {"trials": trials, "baseline": baseline, "work_dir": str(work)}
    try:
        import olive

        out["olive_version"] = olive.__version__
        olive_res = run_olive(trials, work / "olive", baseline["val"], log)
    except Exception as exc:  # report what failed rather than lose the effdl half
        import traceback

        olive_res = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
        log(f"olive FAILED: {olive_res['error']}")
    if "nodes" in olive_res:
        rows = []
        for n in olive_res["nodes"]:
            if not n["model_path"] or not str(n["model_path"]).endswith(".onnx") or not Path(n["model_path"]).exists():
                continue
            m = measure_onnx(n["model_path"])
            rows.append({"id": n["id"][:24], "from_pass": n["from_pass"], "config": n["pass_config"],
                         "olive_metrics": n["olive_metrics"], "olive_frontier": n["olive_frontier"],
                         "olive_goals_met": n["olive_goals_met"],
                         "searched": (n["from_pass"] or "").lower() == "onnxquantization", **m})
            log(f"olive {rows[-1]['id']}: val {m['val']:.4f} latency {m['latency_ms']:.4f} ms")
        searched = [r for r in rows if r["searched"]]
        for r, f in zip(searched, frontier_flags([(baseline["val"] - r["val"], r["latency_ms"]) for r in searched])):
            r["on_frontier"] = f
        olive_res["rows"] = rows
        olive_res["score"] = score(searched, baseline["val"], baseline["latency_ms"])
        olive_res["score_with_conversion"] = score(rows, baseline["val"], baseline["latency_ms"])
    out["olive"] = olive_res

    effdl_res = run_effdl(trials, work / "effdl", log)
    effdl_res["score"] = score([r for r in effdl_res["rows"] if r["status"] == "ok" and not r["baseline"]],
                               baseline["val"], baseline["latency_ms"])
    out["effdl"] = effdl_res
    out["versions"] = {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                       "olive-ai": out.get("olive_version")}
    return out


# ---------------------------------------------------------------- the report

def _f(v, fmt="{:.4f}"):
    return "–" if v is None else fmt.format(v)


def _short(cfg: dict | None) -> str:
    if not cfg:
        return ""
    keys = ("quant_mode", "precision", "activation_type", "quant_format", "calibrate_method", "per_channel",
            "reduce_range", "quant_preprocess")
    # parameters a sample did not use (e.g. calibrate_method of a dynamic one) are left as search parameters
    return ", ".join(f"{k}={cfg[k]}" for k in keys
                     if isinstance(cfg.get(k), (str, bool, int, float)) and "OLIVE_" not in str(cfg[k]))


def render(res: dict, meta: dict) -> str:
    b = res["baseline"]
    o, e = res.get("olive", {}), res["effdl"]
    lines = [f"# Olive peer: effdl search vs Olive {res['versions'].get('olive-ai')} search, LeNet-5 / MNIST subset",
             "", f"Mode `{meta['mode_name']}`: N = {res['trials']} trials each, one process, "
             f"{THREADS} threads. Written by `{meta['command']}` in {meta['seconds']:.0f} s.", "",
             "## Shared baseline", "",
             f"FP32 LeNet-5 exported by effdl, ONNX Runtime, batch 1, {THREADS} threads: validation accuracy "
             f"{b['val']:.4f} (eager {b['eager_val']:.4f}), test {b['test']:.4f}, latency p50 {b['latency_ms']:.4f} ms, "
             f"{b['size_bytes'] / 1024:.1f} KiB. Every hypervolume below is normalised by this latency; "
             f"\"within 1 point\" means validation accuracy >= {b['val'] - MAX_DROP:.4f}.", "",
             "## Summary", "",
             "| side | search wall s | models measured | best latency within 1 point (ms) | speed-up vs baseline | "
             "hypervolume |", "|---|---|---|---|---|---|"]
    for name, r in (("effdl", e), ("Olive", o)):
        s = r.get("score")
        if not s:
            lines.append(f"| {name} | – | – | failed | – | – |")
            continue
        n = len([x for x in r["rows"] if x.get("searched", True) and not x.get("baseline")])
        lines.append(f"| {name} | {r['seconds']:.0f} | {n} | {_f(s['best_latency_ms'])} ({s['best_id']}) | "
                     f"{_f(s['best_speedup'], '{:.2f}x')} | {s['hypervolume']:.4f} |")
    if o.get("score_with_conversion"):
        s2 = o["score_with_conversion"]
        lines.append(f"| Olive incl. its FP32 conversion (workflow 1, not a search sample) | {o['seconds']:.0f} | "
                     f"{len(o['rows'])} | {_f(s2['best_latency_ms'])} ({s2['best_id']}) | "
                     f"{_f(s2['best_speedup'], '{:.2f}x')} | {s2['hypervolume']:.4f} |")
    lines += ["", "## Commands", "", "```",
              "pip install -e '.[peers]'        # olive-ai==0.13.0; torch stays 2.13.0",
              meta["command"], f"python bench/{NAME}.py --render <work dir>/{NAME}.json   # re-render this file",
              "```"]
    lines += ["", "## effdl (numbers from its results.json)", "",
              f"Chosen: {e['chosen']}. Latency is on each candidate's fastest verified runtime (effdl's measurement); "
              "size is effdl's compact safetensors file.", "",
              "| candidate | runtime | val acc | test acc | latency ms | size KiB | on frontier |",
              "|---|---|---|---|---|---|---|"]
    for r in e["rows"]:
        label = f"{r['id']} {r['label']}" + (" (baseline)" if r["baseline"] else "")
        if r["status"] != "ok":
            lines.append(f"| {label} | failed: {(r['reason'] or '')[:80]} | | | | | |")
            continue
        lines.append(f"| {label} | {r['runtime']} | {_f(r['val'])} | {_f(r['test'])} | {_f(r['latency_ms'])} | "
                     f"{_f(r['size_bytes'] and r['size_bytes'] / 1024, '{:.1f}')} | {'yes' if r['on_frontier'] else ''} |")
    lines += ["", "## Olive (each ONNX model measured again here, effdl-style)", ""]
    if "rows" not in o:
        lines += ["Olive did not run:", "", "```", o.get("error", "?"), o.get("traceback", ""), "```"]
    else:
        lines += ["\"on frontier\": non-dominated in (validation drop, latency) among the searched models, from the "
                  "numbers in this table; \"Olive output\": in Olive's own output (its Pareto frontier of the models "
                  "meeting its accuracy goal, from its evaluator's numbers).", "",
                  "| candidate | pass config | val acc | test acc | latency ms | size KiB | on frontier | Olive output |"
                  " Olive's own val acc / latency ms |", "|---|---|---|---|---|---|---|---|---|"]
        for r in o["rows"]:
            om = r.get("olive_metrics") or {}
            own = " / ".join(_f(v) for k, v in sorted(om.items())) if om else ""
            tag = "" if r["searched"] else " (workflow 1: FP32 conversion, not a search sample)"
            lines.append(f"| {r['id']}{tag} | {_short(r['config'])} | {_f(r['val'])} | {_f(r['test'])} | "
                         f"{_f(r['latency_ms'])} | {r['size_bytes'] / 1024:.1f} | "
                         f"{'yes' if r.get('on_frontier') else ''} | {'yes' if r['olive_frontier'] else ''} | {own} |")
    lines += _notes(res)
    lines += ["", "## Versions", "", "```json", json.dumps(res["versions"], indent=1), "```", "",
              "## Environment", "", "```json", json.dumps(meta["environment"], indent=1), "```", ""]
    return "\n".join(lines)


def _notes(res: dict) -> list[str]:
    o, e, b = res.get("olive", {}), res["effdl"], res["baseline"]
    n = res["trials"]
    lines = ["", "## How each side was run", "",
             f"* **effdl**: `optimize(task, Goal(max_drop=0.01), out_dir=..., search=SearchSettings(sampler=\"tpe\", "
             f"trials={n}, pruner=\"median\"), measure=MeasureSettings(threads=2))`, the shipped search space for "
             "image classification (pruning, distillation, fine-tuning, quantization, ... with every runtime a "
             "candidate lowers to); Optuna TPE, seed 0, "
             f"{min(8, max(2, n // 4))} start-up trials. Its figures are its own measurements from results.json."
             + (f" Search summary: {e['search'].get('trials')} trials ({e['search'].get('complete')} complete, "
                f"{e['search'].get('pruned')} pruned, {e['search'].get('failed')} failed), stopped by "
                f"{e['search'].get('stopped_by')}." if e.get("search") else ""),
             "* **Olive 0.13.0**, two `olive.workflows.run` workflows in this process (configs written next to the "
             "raw results): (1) `OnnxConversion` (opset 17, dynamic batch) of the PyTorch model, no search; (2) "
             "`OnnxQuantization` on that ONNX model with no parameter fixed, so Olive searches its own default space "
             "for the pass: quant_mode {dynamic, static}, precision {int8, uint8}, per_channel, reduce_range, "
             "quant_preprocess and, for static, calibrate_method {MinMax, Entropy, Percentile}, quant_format "
             "{QOperator, QDQ} and the activation type (192 points when left unbounded). Calibration: 256 training "
             "images, batch 1. `search_strategy`: joint, sampler `tpe` (Optuna's TPESampler, multivariate, "
             f"10 random start-up trials, so a {n}-trial search is {'entirely' if n <= 10 else 'partly'} random), "
             f"`max_iter` = {n - 1}. Evaluator: Olive's built-in `accuracy` metric (torchmetrics accuracy_score on the "
             "validation split through our data config, argmax post-processing) with the goal 'at least the FP32 "
             "validation accuracy - 0.01', and its built-in `latency` metric (p50 at batch 1, 10 warm-up + 30 runs, "
             "ONNX Runtime with 2 intra-op threads, 1 inter-op thread, sequential, all graph optimisations).",
             ""]
    if "rows" in o:
        lines += [f"Olive ran {o.get('samples_run')} samples in {o.get('iterations')} iterations "
                  f"({len(o.get('failed_samples') or [])} failed): an iteration that draws an invalid parameter "
                  "combination counts towards `max_iter` but builds nothing. Wall time: conversion "
                  f"{o['conversion_seconds']:.1f} s + search {o['search_seconds']:.1f} s; effdl's {e['seconds']:.0f} s "
                  "include fine-tuning and distilling the candidates it samples, Olive's include no training at all.", ""]
    conv = [r for r in o.get("rows", []) if not r["searched"]]
    es = e.get("score") or {}
    if conv and es.get("best_latency_ms"):
        c = conv[0]
        lines += [f"Olive's plain FP32 conversion, measured the same way, ran at {c['latency_ms']:.4f} ms "
                  f"(validation {c['val']:.4f}) against {b['latency_ms']:.4f} ms for effdl's FP32 export and "
                  f"{es['best_latency_ms']:.4f} ms for effdl's best candidate within 1 point: on this model the gaps "
                  "between FP32 exports, and between effdl's best and the baseline, are of the size of export "
                  "differences and timing noise, so the speed-up column says little either way; the clear "
                  "difference is that every INT8 model Olive sampled is slower than FP32 at batch 1.", ""]
    lines += ["## What did not work in Olive 0.13.0 here, and what was done instead", "",
              "This venv has pydantic 2.14.4 (Olive asks for pydantic>=2.0). Nothing in Olive was patched; each "
              "problem was worked around in the run config:", "",
              "1. A `custom` metric (the documented way to plug in one's own evaluate function) cannot run: "
              "`olive.workflows.run` serialises the config first and `Metric.serialize_backend` calls "
              "`.model_dump()` on the backend that Olive itself sets to None for custom metrics "
              "(`AttributeError: 'NoneType' object has no attribute 'model_dump'`). Instead: Olive's built-in "
              "accuracy and latency metrics fed with effdl's data (a registered data set and post-processing in this "
              "script), set up to measure what effdl measures.",
              "2. An evaluator without an explicit `type` crashes while Olive looks for resource paths in the config "
              "(`ResourceType(None)` -> `None.lower()`, an AttributeError the lookup does not catch). Instead: "
              "`type: OnnxEvaluator`. That evaluator cannot evaluate the PyTorch input model, so the accuracy goal "
              "is given as a `threshold` (the FP32 validation accuracy measured here minus 0.01, what "
              "`max-degradation 0.01` resolves to) and `evaluate_input_model` is false.",
              "3. `search_strategy.sampler_config` (`max_samples`, `seed`) is dropped on the way from the run config "
              "to the engine (a field declared as the base `ConfigBase` dumps as `{}`), so the sampler searches the "
              "whole space (192 points, several minutes, observed). Instead: `max_iter` = N - 1 (Olive stops once the "
              "iteration count exceeds it), the nearest bound Olive offers; it counts invalid draws too, so Olive "
              "can run fewer than N samples. The sampler's seed is Olive's default (1), not 0.",
              "4. A sample whose pass run is already in Olive's cache fails "
              "(`ValueError: \"FootprintNode\" object has no field \"model_config\"`: the footprint updates an "
              "aliased field by its alias). With conversion and quantization in one searched workflow the conversion "
              "is cached after the first sample, so every later sample failed (observed: 1 model from 192 points). "
              "Instead: conversion as its own workflow, then the search over quantization alone. A sample that "
              "repeats an earlier effective config (e.g. two dynamic samples differing only in static-only "
              "parameters) still fails this way; a working Olive would only reuse the cached model for it.",
              "", "## Unequal in this comparison", "",
              "* The search spaces differ in kind: effdl samples recipes that retrain (pruning with fine-tuning, "
              "distillation, quantization) and measures each on every runtime it lowers to (eager, torch.compile, "
              "ORT FP32/INT8, ...) keeping the fastest; Olive searches post-training ONNX Runtime quantization "
              "settings only, with no option to leave the model in FP32 and no training.",
              "* effdl's latencies and accuracies are its own (results.json, measured during its search on each "
              "candidate's fastest runtime); Olive's are re-measured here with effdl's ORT session options and "
              "`measure_latency`. The FP32 baseline through ORT measured here "
              f"({b['latency_ms']:.4f} ms) normalises both hypervolumes.",
              "* Sizes: effdl reports its compact safetensors file; Olive's column is the .onnx file.",
              "* LeNet-5 at batch 1 runs in tens of microseconds, where per-call overhead dominates: ORT's INT8 "
              "graphs add (de)quantisation nodes and run slower than FP32 here, so an INT8-only search cannot beat "
              "the FP32 baseline's latency, and a point no faster than the baseline adds nothing to the hypervolume "
              "(reference latency ratio 1.0).",
              "* One measurement per model on a shared 2-core machine: latencies within a few percent are ties; "
              "the validation split has 400 images, so 1 point of accuracy is 4 images.", ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N = 8 trials each (else 30)")
    ap.add_argument("--out", type=Path, default=BENCH / "results" / f"{NAME}.md")
    ap.add_argument("--work", type=Path, help="where both searches write (default: a new temporary directory)")
    ap.add_argument("--render", type=Path, help="only re-render the markdown from a raw .json of an earlier run")
    args = ap.parse_args(argv)
    if args.render:
        data = json.loads(args.render.read_text())
        args.out.write_text(data["notes_prefix"] + render(data["results"], data["meta"]) if "notes_prefix" in data
                            else render(data["results"], data["meta"]))
        return 0
    import torch

    from effdl.metrics.env import environment

    torch.set_num_threads(THREADS)
    mode_name = "quick" if args.quick else "full"
    mode = dict(MODES[mode_name], work_dir=str(args.work or tempfile.mkdtemp(prefix="olive_peer_")))
    start = time.perf_counter()
    res = run(mode, lambda s: print(s, flush=True))
    meta = {"mode_name": mode_name, "mode": mode, "seconds": time.perf_counter() - start,
            "command": " ".join(["python", f"bench/{NAME}.py", *(argv if argv is not None else sys.argv[1:])]),
            "environment": environment(threads=THREADS)}
    raw = Path(mode["work_dir"]) / f"{NAME}.json"
    raw.write_text(json.dumps({"meta": meta, "results": res}, indent=1, default=str))
    args.out.write_text(render(res, meta))
    print(f"wrote {args.out} (raw numbers: {raw})")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH))
    raise SystemExit(main())
