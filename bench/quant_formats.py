"""Number formats for weights: test accuracy and stored bytes, LeNet-5/MNIST subset and the MNIST-1D CNN.

    python bench/quant_formats.py --quick     # about a minute; results in bench/results/quant_formats.md

Every row is one weight-only format applied to the cached trained baseline (effdl.zoo.trained) with
no calibration data and no fine-tuning: quantize.weights (INT8 per tensor vs per channel, INT4
group-wise g=32, INT2 per channel, power-of-two scales, log2 levels, 4-bit k-means codebooks) and
quantize.float (FP16, BF16, FP8 E4M3 / E5M2 with a per-tensor scale, and FP8 without it). "Bytes" is the
size of the compact safetensors file written from the model's storage tensors (packed codes +
scales, header included), the same number effdl.measure reports; "weight SQNR" is over all
Conv/Linear weights. Accuracy only: every model runs by dequantizing (no timing here).
--quick and the full run are the same grid (it is cheap); --quick only skips the FP8-unscaled rows.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from _publish import bench_main, environment_block

ROOT = Path(__file__).resolve().parents[1]
MODELS = (("lenet5", "mnist", "LeNet-5 / MNIST subset"), ("mnist1d_cnn", "mnist1d", "MNIST-1D CNN"))


def _grid(quick: bool):
    from effdl.compress.quantize.float_formats import FloatFormatConfig as Fl
    from effdl.compress.quantize.weight_only import WeightOnlyConfig as W

    rows = [
        ("INT8 per-tensor (min-max)", W(bits=8, granularity="tensor")),
        ("INT8 per-channel", W(bits=8, granularity="channel")),
        ("INT4 per-channel", W(bits=4, granularity="channel")),
        ("INT4 group g=32", W(bits=4, granularity="group", group_size=32)),
        ("INT4 group g=32 affine", W(bits=4, granularity="group", group_size=32, mode="affine")),
        ("INT2 per-channel", W(bits=2, granularity="channel")),
        ("INT2 group g=32 affine", W(bits=2, granularity="group", group_size=32, mode="affine")),
        ("INT4 pow2 scales (shift)", W(bits=4, format="pow2")),
        ("4-bit log2 levels", W(bits=4, format="log2")),
        ("4-bit codebook per tensor", W(bits=4, format="codebook", granularity="tensor")),
        ("4-bit codebook per channel", W(bits=4, format="codebook", granularity="channel")),
        ("FP16", Fl(format="fp16")),
        ("BF16", Fl(format="bf16")),
        ("FP8 E4M3 (scaled)", Fl(format="fp8_e4m3")),
        ("FP8 E5M2 (scaled)", Fl(format="fp8_e5m2")),
    ]
    if not quick:
        rows += [("FP8 E4M3 unscaled", Fl(format="fp8_e4m3", scaled=False)),
                 ("FP8 E5M2 unscaled", Fl(format="fp8_e5m2", scaled=False))]
    return rows


def _bytes(model, tmp: Path) -> int:
    from effdl.deploy.storage import model_tensors, save_compact

    return save_compact(model_tensors(model), tmp / "m.safetensors")


def _weight_sqnr(ref, model) -> float:
    import torch

    from effdl.compress.quantize.weight_only import WEIGHTED
    from effdl.deploy.parity import sqnr_db

    inner = getattr(model, "model", model)
    a = [m.weight.detach().reshape(-1) for m in ref.modules() if isinstance(m, WEIGHTED)]
    b = [m.weight.detach().reshape(-1) for m in inner.modules() if isinstance(m, WEIGHTED)]
    return round(sqnr_db(torch.cat(a), torch.cat(b)), 1)


MODES = {"quick": {"quick": True}, "full": {"quick": False}}

def run(mode: dict, log) -> dict:
    quick = mode["quick"]
    from effdl.core.registry import apply
    from effdl.core.tasks import ImageClassification
    from effdl.data import load_data
    from effdl.zoo import trained

    out: dict = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for model_name, data_name, label in MODELS:
            splits = load_data(data_name)
            base = trained(model_name, data_name)
            task = ImageClassification(base, splits.train, splits.val, splits.test, num_classes=splits.num_classes)
            acc0 = 100 * task.evaluate(base, "test")["accuracy"]
            b0 = _bytes(base, tmp)
            rows = [{"format": "FP32 (baseline)", "config": "-", "accuracy": round(acc0, 2), "drop": 0.0, "bytes": b0,
                     "ratio": 1.0, "weight_sqnr_db": None}]
            log(f"{label}: FP32 {acc0:.2f}% {b0} B")
            for name, cfg in _grid(quick):
                q = apply(task, cfg)
                acc = 100 * task.evaluate(q, "test")["accuracy"]
                nbytes = _bytes(q, tmp)
                row = {"format": name, "config": cfg.short(), "accuracy": round(acc, 2), "drop": round(acc0 - acc, 2),
                       "bytes": nbytes, "ratio": round(b0 / nbytes, 2), "weight_sqnr_db": _weight_sqnr(base, q)}
                rows.append(row)
                log(f"  {name}: {row['accuracy']}% ({row['drop']:+.2f}) {nbytes} B x{row['ratio']} SQNR {row['weight_sqnr_db']} dB")
            out[model_name] = {"label": label, "test_size": len(splits.test), "rows": rows}
    return out


def render(res: dict, meta: dict) -> str:
    L = ["# Weight number formats: accuracy and stored bytes", "",
         "Weight-only post-training quantization of the cached trained baselines, no fine-tuning, no calibration data. "
         "Test accuracy in % (one run; the formats are deterministic), drop in points vs FP32, bytes of the compact "
         "safetensors file (packed codes + float32 scales/zero points/codebooks + FP32 biases + header), ratio = FP32 bytes / bytes. "
         f"Run: `python bench/quant_formats.py{' --quick' if meta['mode']['quick'] else ''}` ({meta['seconds']:.0f} s).", ""]
    for r in res.values():
        L += [f"## {r['label']} ({r['test_size']} test examples)", "",
              "| format | config | test acc | drop | bytes | x smaller | weight SQNR (dB) |", "|---|---|---|---|---|---|---|"]
        for row in r["rows"]:
            sq = "-" if row["weight_sqnr_db"] is None else row["weight_sqnr_db"]
            L.append(f"| {row['format']} | `{row['config']}` | {row['accuracy']:.2f} | {row['drop']:+.2f} | {row['bytes']} | "
                     f"{row['ratio']} | {sq} |")
        L.append("")
    L += ["Notes: INT4 group-wise stores one float32 scale per 32 weights (1 extra bit per weight; 2 with affine zero points "
          "packed at 4 bits); LeNet-5 rows whose length is not a multiple of 32 (25, 150, 400, 120, 84) end with a shorter group. "
          "No sub-8-bit or FP8 kernel runs on this CPU: these models compute in float32 with dequantized weights, so they "
          "save bytes, not time."] + environment_block(meta)
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    return bench_main(__doc__, "quant_formats", MODES, run, render, argv)


if __name__ == "__main__":
    sys.exit(main())
