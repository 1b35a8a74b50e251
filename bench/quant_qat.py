"""QAT vs PTQ, binary/ternary and mixed precision: test accuracy and true stored bytes, LeNet-5 / MNIST subset.

    python bench/quant_qat.py --quick     # a few minutes; results in bench/results/quant_qat.md

Every row starts from the cached trained baseline (effdl.zoo.trained("lenet5", "mnist")):
INT4 group-wise (g=32) weights post-training (quantize.weights) vs quantization-aware training
(quantize.qat, min-max and LSQ scales), INT2 per channel the same way, INT8 static PTQ
(quantize.ptq) vs INT8 QAT (weights + uint8 activations, converted through quantize.ptq), binary
and ternary weights (quantize.binary / quantize.ternary) without and with STE training from the
float model, mixed precision (quantize.mixed, 2/4/8 or 2/3/4/8 bits at a 4- and 3-bit mean, next to uniform INT3), and a
control row: the float model fine-tuned exactly like the QAT rows, without quantization. "Bytes" is the
compact safetensors file written from the model's storage tensors (packed codes + scales + FP32
biases, header included), the number effdl.measure reports. Accuracy only (no timing): the sub-8-bit
models run by dequantizing; the INT8 rows run the simulated-INT8 (PT2E q/dq) graph.
The figure to meet: INT4 group-wise QAT within 1 point of FP32. One run, seed 0.
"""
from __future__ import annotations

import copy
import sys
import tempfile
import time
from pathlib import Path

from _publish import bench_main, environment_block

ROOT = Path(__file__).resolve().parents[1]


def _grid(epochs: float):
    from effdl.compress.quantize.binary import BinaryConfig, TernaryConfig
    from effdl.compress.quantize.mixed import MixedConfig
    from effdl.compress.quantize.ptq import PTQConfig
    from effdl.compress.quantize.qat import QATConfig
    from effdl.compress.quantize.weight_only import WeightOnlyConfig as W

    g32 = dict(granularity="group", group_size=32)
    return [
        ("INT4 g=32", "PTQ", W(bits=4, **g32)),
        ("INT4 g=32", "QAT", QATConfig(bits=4, epochs=epochs, **g32)),
        ("INT4 g=32", "QAT + LSQ scales", QATConfig(bits=4, epochs=epochs, learnable_scale=True, **g32)),
        ("INT4 g=32", "QAT, lr 1e-4", QATConfig(bits=4, epochs=epochs, lr=1e-4, **g32)),
        ("INT2 per channel", "PTQ", W(bits=2, granularity="channel")),
        ("INT2 per channel", "QAT", QATConfig(bits=2, epochs=epochs)),
        ("INT2 per channel", "QAT + LSQ scales", QATConfig(bits=2, epochs=epochs, learnable_scale=True)),
        ("INT8 W + A (static)", "PTQ", PTQConfig()),
        ("INT8 W + A (static)", "QAT", QATConfig(bits=8, activations=True, epochs=epochs)),
        ("binary (1 bit), first/last FP32", "no training", BinaryConfig(epochs=0)),
        ("binary (1 bit), first/last FP32", "STE training", BinaryConfig(epochs=epochs)),
        ("binary (1 bit), every layer", "STE training", BinaryConfig(epochs=epochs, keep_first_last=False)),
        ("ternary (2 bit), first/last FP32", "no training", TernaryConfig(epochs=0)),
        ("ternary (2 bit), first/last FP32", "STE training", TernaryConfig(epochs=epochs)),
        ("ternary (2 bit), every layer", "STE training", TernaryConfig(epochs=epochs, keep_first_last=False)),
        ("mixed 2/4/8, mean 4 bits", "sensitivity + DP", MixedConfig(budget_bits_per_weight=4.0, keep_first_last=False)),
        ("mixed 2/4/8, mean 3 bits", "sensitivity + DP", MixedConfig(budget_bits_per_weight=3.0, keep_first_last=False)),
        ("mixed 2/3/4/8, mean 3 bits", "sensitivity + DP",
         MixedConfig(budget_bits_per_weight=3.0, choices=(2, 3, 4, 8), keep_first_last=False)),
        ("mixed 2/3/4/8, mean 3 bits", "Hessian proxy + DP",
         MixedConfig(budget_bits_per_weight=3.0, choices=(2, 3, 4, 8), measure="hessian", keep_first_last=False)),
        ("INT3 per channel (uniform, 3 bits)", "PTQ", W(bits=3, granularity="channel")),
    ]


def _bytes(model, tmp: Path) -> int:
    from effdl.deploy.storage import model_tensors, save_compact

    return save_compact(model_tensors(model), tmp / "m.safetensors")


MODES = {"quick": {"quick": True}, "full": {"quick": False}}

def run(mode: dict, log) -> dict:
    quick = mode["quick"]
    from effdl.core.records import records
    from effdl.core.registry import apply
    from effdl.core.tasks import ImageClassification
    from effdl.data import load_data
    from effdl.zoo import trained

    epochs = 2.0 if quick else 5.0
    splits = load_data("mnist")
    base = trained("lenet5", "mnist")
    task = ImageClassification(base, splits.train, splits.val, splits.test, num_classes=splits.num_classes)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        acc0 = 100 * task.evaluate(base, "test")["accuracy"]
        b0 = _bytes(base, tmp)
        rows.append({"weights": "FP32 (baseline)", "method": "-", "config": "-", "accuracy": round(acc0, 2), "drop": 0.0,
                     "bytes": b0, "ratio": 1.0, "seconds": 0.0, "note": ""})
        log(f"FP32 {acc0:.2f}% {b0} B")
        # control: the same fine-tuning without quantization, to separate training noise from quantization
        tuned = copy.deepcopy(base)
        task.train(tuned, epochs=epochs, lr=1e-3)
        acc_t = 100 * task.evaluate(tuned, "test")["accuracy"]
        rows.append({"weights": "FP32 (control)", "method": f"fine-tuned {epochs:g} epochs, lr 1e-3", "config": "-",
                     "accuracy": round(acc_t, 2), "drop": round(acc0 - acc_t, 2), "bytes": b0, "ratio": 1.0,
                     "seconds": 0.0, "note": "no quantization"})
        log(f"FP32 fine-tuned {acc_t:.2f}%")
        for weights, method, cfg in _grid(epochs):
            t = time.perf_counter()
            q = apply(task, cfg)
            secs = time.perf_counter() - t
            acc = 100 * task.evaluate(q, "test")["accuracy"]
            nbytes = _bytes(q, tmp)
            rec = records(q)
            note = ""
            if "qat_int8_agreement" in rec:
                note = f"int8 codes equal to the QAT grid: {100 * rec['qat_int8_agreement'].agreement:.1f}%"
            if hasattr(q, "bits") and isinstance(q.bits, dict):
                note = "bits " + ", ".join(f"{n}={b}" for n, b in q.bits.items())
            row = {"weights": weights, "method": method, "config": cfg.short(), "accuracy": round(acc, 2),
                   "drop": round(acc0 - acc, 2), "bytes": nbytes, "ratio": round(b0 / nbytes, 2),
                   "seconds": round(secs, 1), "note": note}
            rows.append(row)
            log(f"  {weights} / {method}: {row['accuracy']}% ({row['drop']:+.2f}) {nbytes} B x{row['ratio']} {note}")
    qat4 = next(r for r in rows if r["weights"] == "INT4 g=32" and r["method"] == "QAT")
    return {"label": "LeNet-5 / MNIST subset", "test_size": len(splits.test), "train_size": len(splits.train),
            "epochs": epochs, "rows": rows,
            "figure": {"target": "INT4 g=32 QAT drop <= 1 point", "drop": qat4["drop"], "met": qat4["drop"] <= 1.0}}


def render(res: dict, meta: dict) -> str:
    fig = res["figure"]
    L = ["# QAT vs PTQ, binary/ternary and mixed precision: accuracy and stored bytes", "",
         f"{res['label']}: {res['train_size']} training and {res['test_size']} test examples. Test accuracy in % (one run, "
         "seed 0), drop in points vs FP32, bytes of the compact safetensors file (packed codes + float32 scales + FP32 "
         f"biases + header), ratio = FP32 bytes / bytes. QAT and STE rows train {res['epochs']:g} epochs (AdamW, "
         "cosine schedule, lr 1e-3) from the trained float model; 'seconds' is the technique's wall time on a shared "
         f"machine (not a benchmark). Run: `python bench/quant_qat.py{' --quick' if meta['mode']['quick'] else ''}` "
         f"({meta['seconds']:.0f} s).", "",
         f"Figure: {fig['target']}: measured drop {fig['drop']:+.2f} points -> {'met' if fig['met'] else 'NOT met'}.", "",
         "| weights | method | config | test acc | drop | bytes | x smaller | seconds | note |",
         "|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        L.append(f"| {r['weights']} | {r['method']} | `{r['config']}` | {r['accuracy']:.2f} | {r['drop']:+.2f} | {r['bytes']} | "
                 f"{r['ratio']} | {r['seconds']} | {r['note']} |")
    L += ["", "Notes: INT8 rows store int8 weights + per-channel scales (QuantizedModel.storage_tensors); the INT8 QAT row "
          "is the QAT-trained float model converted by quantize.ptq with every layer's input range pinned to the trained "
          "(frozen moving-average) one, and whose weight grid (max|w|/127 per channel) differs from the "
          "QAT grid where scales were frozen before the last steps (share reported in the note). Binary/ternary keep one "
          "float32 scale per output channel; with first/last FP32, the first conv (150 weights) and the classifier "
          "(840 weights) stay float. Mixed precision measures each layer's validation-accuracy drop (400 examples: steps of 0.25 "
          "point) at each width, or the Hutchinson Hessian proxy, and allocates by exact knapsack assuming the layers' "
          "drops add up; the bits column names each layer's width (0, 3 = convs; 7, 9, 11 = Linear 400x120, 120x84, "
          "84x10)."] + environment_block(meta)
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    return bench_main(__doc__, "quant_qat", MODES, run, render, argv)


if __name__ == "__main__":
    sys.exit(main())
