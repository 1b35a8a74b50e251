"""Order matters: prune -> distill -> quantize against the reversed and other orders, same final budget.

    python bench/sequencing.py --quick     # results in bench/results/sequencing.md

Every variant ends at the same budget: 90% of the weights zero and INT8 (per-channel weights,
static activations, quantize.ptq), on LeNet-5 and LeNet-300-100 with the MNIST subset, with the
same training epochs where training happens:

* prune -> distill -> quantize (the textbook's recommended order);
* distill -> prune -> quantize;
* prune -> quantize (no distillation: what the improve step adds);
* quantize -> prune: INT8 first; its int8 weights (dequantized) are then pruned by magnitude. A
  quantized model cannot be fine-tuned in float without leaving its integer grid, so the cut is not
  followed by recovery, and the model is re-quantized (re-calibrated) for deployment.

Accuracy is of the simulated-INT8 model (quantize.ptq's q/dq graph) on the test split; bytes are
the compact file effdl writes (bitmask-sparse int8 + scales). One seeded run per cell.
"""
from __future__ import annotations

from _publish import bench_main, environment_block, zoo_task

import copy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = {"quick": {"models": ("lenet5", "mlp"), "prune_epochs": 1.0, "distill_epochs": 4.0},
         "full": {"models": ("lenet5", "mlp"), "prune_epochs": 2.0, "distill_epochs": 8.0}}
SPARSITY = 0.9


def _int8_grid_model(q):
    """The float model with every quantized weight replaced by its dequantized int8 value."""
    model = copy.deepcopy(q.float_model)
    tensors = q.storage_tensors()
    for name in q.quantized_modules:
        w = model.get_submodule(name).weight
        scale = tensors[f"{name}.weight.scale"].reshape((-1,) + (1,) * (w.dim() - 1))
        w.data.copy_(tensors[f"{name}.weight.int8"].float() * scale)
    return model


def run(mode: dict, log) -> list[dict]:
    from effdl import apply
    from effdl.compress.prune import MagnitudeConfig
    from effdl.compress.quantize import PTQConfig
    from effdl.deploy.storage import model_tensors, save_compact
    from effdl.learn import DistillConfig
    from effdl.zoo import recipe_for
    import tempfile

    rows = []
    for name in mode["models"]:
        task = zoo_task(name)
        lr = recipe_for(name, "mnist").lr
        prune = MagnitudeConfig(sparsity=SPARSITY, schedule="iterative", rounds=3, finetune_epochs=mode["prune_epochs"], lr=lr)
        prune_only = MagnitudeConfig(sparsity=SPARSITY)
        kd = DistillConfig(epochs=mode["distill_epochs"], lr=1e-3)
        q = PTQConfig(calibration="percentile")

        def chain(*cfgs, start=None):
            m = start if start is not None else task.model
            for c in cfgs:
                m = apply(m, c, task=task)  # copies: the task's model stays the dense teacher
            return m

        variants = {
            "prune -> distill -> quantize": lambda: chain(prune, kd, q),
            "distill -> prune -> quantize": lambda: chain(kd, prune, q),
            "prune -> quantize": lambda: chain(prune, q),
            "quantize -> prune": lambda: chain(prune_only, q, start=_int8_grid_model(chain(q))),
        }
        base = task.evaluate(task.model, "test")["accuracy"]
        for label, make in variants.items():
            t0 = time.perf_counter()
            m = make()
            with tempfile.TemporaryDirectory() as tmp:
                size = save_compact(model_tensors(m), Path(tmp) / "m.safetensors")
            zeros = sum(int((m.float_model.get_submodule(n).weight == 0).sum()) for n in m.quantized_modules)
            total = sum(m.float_model.get_submodule(n).weight.numel() for n in m.quantized_modules)
            rows.append({"model": name, "order": label, "baseline_test": base, "test": task.evaluate(m, "test")["accuracy"],
                         "bytes": size, "sparsity": zeros / total, "seconds": time.perf_counter() - t0})
            log(f"{name} {label}: {100 * rows[-1]['test']:.2f}% {size} B sparsity {zeros / total:.3f}")
    return rows


def render(rows: list[dict], meta: dict) -> str:
    lines = ["# Sequencing: prune -> distill -> quantize vs other orders (same final budget)", "",
             f"Mode `{meta['mode_name']}`: {meta['mode']}; final budget {SPARSITY:.0%} zeros + INT8. Run: "
             f"`python bench/sequencing.py{' --quick' if meta['mode_name'] == 'quick' else ''}` ({meta['seconds']:.0f} s).", "",
             "| model | order | test acc (INT8) | drop vs FP32 baseline (pt) | weight sparsity | stored bytes |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['order']} | {100 * r['test']:.2f} | {100 * (r['baseline_test'] - r['test']):+.2f} | "
                     f"{r['sparsity']:.3f} | {r['bytes']:,} |")
    best = {}
    for r in rows:
        best.setdefault(r["model"], []).append((r["test"], r["order"]))
    lines += [""] + [f"- {m}: best order {max(v)[1]} ({100 * max(v)[0]:.2f}%); recommended order "
                     f"{'wins' if max(v)[1] == 'prune -> distill -> quantize' else 'does not win'}; "
                     f"quantize -> prune: {100 * dict((o, t) for t, o in v)['quantize -> prune']:.2f}%" for m, v in best.items()]
    return "\n".join(lines + environment_block(meta))


def main(argv: list[str] | None = None) -> int:
    return bench_main(__doc__, "sequencing", MODES, run, render, argv)


if __name__ == "__main__":
    sys.exit(main())
