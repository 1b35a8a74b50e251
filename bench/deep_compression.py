"""Deep Compression (prune -> trained weight sharing -> Huffman) on LeNet-300-100 and LeNet-5, MNIST subset.

    python bench/deep_compression.py            # the full run; results in bench/results/deep_compression.md
    python bench/deep_compression.py --quick    # shorter fine-tuning, to check the script works

For each model, from the cached trained baseline: per-layer magnitude pruning (chained
``prune.magnitude`` steps, one per layer, iterative with fine-tuning, as Han et al. set per-layer
rates), recovery by ``learn.distill`` from the dense baseline, then ``share.cluster`` (k-means,
linear init, Huffman storage) whose shared centroids are trained by a second ``learn.distill``
(gradients of a cluster's weights summed into its centroid, as in Han's trained quantization; the
distillation loss instead of plain cross-entropy was chosen on validation). Every size is the size of the file actually written, and every file is read back and
checked bit for bit against the model it came from; every accuracy is of the model decoded from
the file:

    dense FP32 (compact file, all dense) | pruned (bitmask + values) | pruned + clustered
    (bitmask + b-bit indices + codebooks) | pruned + clustered + Huffman (relative indices)

A few candidate plans (per-layer sparsity x bits) are run per model; the one reported as *chosen* is
the smallest file whose **validation** accuracy is within 0.5 point of the baseline's; the test
split is only reported. Figure to meet: >= 35x smaller file at <= 0.5 point test-accuracy drop
(Han et al. 2016: 40x / 39x on full MNIST). No timings here.
"""
from __future__ import annotations

from _publish import bench_main, environment_block, zoo_task

import copy
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_DROP = 0.5  # points, on validation, to choose; reported on test
TARGET = 35.0

# lr 1e-3 for every fine-tuning: on LeNet-5's validation split it beat the baseline recipe's 3e-3
# (pruned: 97.5% vs 97.0%); distillation after pruning recovered a further 0.5 point on validation.
MODES = {
    "quick": {"prune_epochs": 1, "rounds": 2, "distill_epochs": 1, "kd_epochs": 1, "lr": 1e-3},
    "full": {"prune_epochs": 2, "rounds": 3, "distill_epochs": 4, "kd_epochs": 3, "lr": 1e-3},
}

# Per model: layer names (nn.Sequential indices), pruning plans (ordered steps of (sparsity, layers),
# each pruned per layer), and bit plans (bits per layer).
MODELS = {
    "mlp": {
        "label": "LeNet-300-100",
        "prune": {
            "fc 92/91/74% (Han)": [(0.92, ("1",)), (0.91, ("3",)), (0.74, ("5",))],
            "fc 95/92/75%": [(0.95, ("1",)), (0.92, ("3",)), (0.75, ("5",))],
        },
        "bits": {"4 bits": {"1": 4, "3": 4, "5": 4}, "3/3/4 bits": {"1": 3, "3": 3, "5": 4}},
    },
    "lenet5": {
        "label": "LeNet-5",
        "prune": {
            "conv 50/85%, fc 96/90/75%": [(0.96, ("7",)), (0.9, ("9",)), (0.85, ("3",)), (0.75, ("11",)), (0.5, ("0",))],
            "conv 50/85%, fc 97/92/80%": [(0.97, ("7",)), (0.92, ("9",)), (0.85, ("3",)), (0.8, ("11",)), (0.5, ("0",))],
            "conv 50/90%, fc 98/93/80%": [(0.98, ("7",)), (0.93, ("9",)), (0.9, ("3",)), (0.8, ("11",)), (0.5, ("0",))],
        },
        "bits": {"4 bits": {"0": 4, "3": 4, "7": 4, "9": 4, "11": 4},
                 "conv 4, fc 3 bits": {"0": 4, "3": 4, "7": 3, "9": 3, "11": 4},
                 "conv 5, fc 4 bits": {"0": 5, "3": 5, "7": 4, "9": 4, "11": 4}},
    },
}


def _acc(task, model) -> dict:
    return {s: round(100 * task.evaluate(model, s)["accuracy"], 2) for s in ("val", "test")}


def _same_bits(a, b) -> bool:
    import torch

    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def _prune(task, steps, mode, lr):
    import effdl

    model = task.model
    names = [n for s in steps for n in s[1]]
    for sparsity, layers in steps:
        cfg = effdl.prune.Magnitude(sparsity=sparsity, scope="layer", schedule="iterative", rounds=mode["rounds"],
                                    finetune_epochs=mode["prune_epochs"], lr=lr,
                                    exclude=tuple(n for n in names if n not in layers))
        model = effdl.apply(model, cfg, task=task)
    return model


def _cluster(task, pruned, bits: dict, mode: dict):
    """(clustered, clustered with trained centroids): one share.cluster step per bit width (disjoint
    layers), then the centroids trained by distillation from the dense baseline."""
    import effdl
    from effdl.compress.share import Cluster

    groups: dict[int, list[str]] = {}
    for name, b in bits.items():
        groups.setdefault(b, []).append(name)
    model = pruned
    for b, layers in sorted(groups.items()):
        model = effdl.apply(model, Cluster(bits=b, layers=tuple(layers), huffman=True), task=task)
    trained = effdl.apply(model, effdl.learn.Distill(epochs=mode["kd_epochs"], lr=mode["lr"]), task=task)
    return model, trained


def _file_stage(task, write, read, reference: dict, tmp: Path, name: str) -> dict:
    """Write a stage's file, read it back, check every tensor bit for bit; accuracy of the decoded model."""
    path = tmp / f"{name}.safetensors"
    size = write(path)
    assert size == path.stat().st_size
    decoded = read(path)
    state = decoded.state_dict()
    bad = [k for k, v in reference.items() if not _same_bits(state[k], v)]
    if bad:
        raise RuntimeError(f"{name}: decoded tensors differ from the model's: {bad[:5]}")
    return {"bytes": size, "exact": True, **_acc(task, decoded)}


def _layers_report(clustered) -> list[dict]:
    from effdl.compress.share import clustered_layers
    from effdl.compress.share.deep_compression import _bias, encode_layer

    rows = []
    for name, m, p in clustered_layers(clustered):
        w = m.weight
        nnz = int((p.mask).sum())
        fixed = len(encode_layer(name, p, False, 0, _bias(m)))
        rec = encode_layer(name, p, True, p.index_bits, _bias(m))
        k = rec[2 + len(name) + 1 + 4 * w.dim() + 2]  # 0: the fixed layout was smaller
        rows.append({"layer": name, "type": type(m).__name__.removeprefix("Parametrized"), "weights": w.numel(),
                     "sparsity": round(1 - nnz / w.numel(), 4), "bits": p.bits, "gap_bits_k": int(k),
                     "bytes_fixed": fixed, "bytes_huffman": len(rec),
                     "bits_per_nonzero_huffman": round(8 * len(rec) / nnz, 2)})
    return rows


def run_model(model_name: str, mode: dict, log) -> dict:
    import torch

    import effdl
    from effdl.compress.share import load_deep_compressed, save_deep_compressed
    from effdl.deploy.storage import load_compact, save_compact

    spec = MODELS[model_name]
    task = zoo_task(model_name)
    base = task.model
    lr = mode["lr"]
    tmp = Path(tempfile.mkdtemp(prefix=f"dc-{model_name}-"))

    def compact_stage(model, name):
        ref = {k: v.detach() for k, v in model.state_dict().items()}

        def read(path):
            fresh = copy.deepcopy(base)
            fresh.load_state_dict(load_compact(path))
            return fresh
        return _file_stage(task, lambda p: save_compact(ref, p), read, ref, tmp, name)

    dense = compact_stage(base, "dense")
    log(f"{model_name}: dense {dense}")
    out = {"label": spec["label"], "dense": dense, "candidates": []}
    for pname, steps in spec["prune"].items():
        t = time.perf_counter()
        pruned_only = _prune(task, steps, mode, lr)
        pruned = effdl.apply(pruned_only, effdl.learn.Distill(epochs=mode["distill_epochs"], lr=lr), task=task)
        pruned_stage = compact_stage(pruned, "pruned")
        log(f"  {pname}: pruned {_acc(task, pruned_only)}, + distilled {pruned_stage} ({time.perf_counter() - t:.0f} s)")
        for bname, bits in spec["bits"].items():
            untrained, clustered = _cluster(task, pruned, bits, mode)
            ref = {k: v.detach() for k, v in clustered.state_dict().items() if "parametrizations" not in k}
            for name, m in clustered.named_modules():
                if hasattr(m, "parametrizations"):
                    ref[f"{name}.weight"] = m.weight.detach()
            stages = {}
            for huff in (False, True):
                stages["clustered+huffman" if huff else "clustered"] = _file_stage(
                    task, lambda p, h=huff, c=clustered: save_deep_compressed(c, p, huffman=h),
                    lambda p: load_deep_compressed(p, copy.deepcopy(base)), ref, tmp,
                    "huffman" if huff else "clustered")
            cand = {"prune": pname, "bits": bname, "pruned_before_distill": _acc(task, pruned_only), "pruned": pruned_stage,
                    "clustered_no_finetune": _acc(task, untrained), **stages,
                    "layers": _layers_report(clustered)}
            for key in ("pruned", "clustered", "clustered+huffman"):
                cand[key]["ratio"] = round(dense["bytes"] / cand[key]["bytes"], 2)
                cand[key]["val_drop"] = round(dense["val"] - cand[key]["val"], 2)
                cand[key]["test_drop"] = round(dense["test"] - cand[key]["test"], 2)
            log(f"    {bname}: no-ft {cand['clustered_no_finetune']}, clustered {stages['clustered']}, "
                f"huffman {stages['clustered+huffman']}")
            out["candidates"].append(cand)
        del pruned, pruned_only
        torch.manual_seed(0)
    ok = [c for c in out["candidates"] if c["clustered+huffman"]["val_drop"] <= MAX_DROP]
    pool = ok or out["candidates"]
    key = (lambda c: c["clustered+huffman"]["bytes"]) if ok else (lambda c: c["clustered+huffman"]["val_drop"])
    best = min(pool, key=key)
    out["chosen"] = out["candidates"].index(best)
    out["chosen_meets_val_rule"] = bool(ok)
    h = best["clustered+huffman"]
    out["meets_figure"] = bool(h["ratio"] >= TARGET and h["test_drop"] <= MAX_DROP)
    return out


def run(mode: dict, log) -> dict:
    return {m: run_model(m, mode, log) for m in MODELS}


def _kib(n: int) -> str:
    return f"{n / 1024:.1f}"


def render(res: dict, meta: dict) -> str:
    m = meta["mode"]
    lines = [
        "# Deep Compression: prune -> trained weight sharing -> Huffman (MNIST subset)", "",
        f"Mode `{meta['mode_name']}`: pruning in chained per-layer `prune.magnitude` steps (iterative, "
        f"{m['rounds']} rounds x {m['prune_epochs']} epochs of fine-tuning each), {m['distill_epochs']} epochs of "
        "`learn.distill` from the dense baseline, then `share.cluster` (linear init, Huffman storage with the gap "
        f"width chosen per layer) with its shared centroids trained by {m['kd_epochs']} epochs of `learn.distill`; "
        f"AdamW at lr {m['lr']} throughout. Train 3,600 / validation 400 / test 1,000 real "
        f"digits. Reproduce: `python bench/deep_compression.py{' --quick' if meta['mode_name'] == 'quick' else ''}` "
        f"({meta['seconds']:.0f} s).", "",
        "Every size is the file actually written (safetensors, compact layout; the Deep Compression stages in "
        "`effdl.compress.share.deep_compression`'s container), read back and checked bit for bit; every "
        "accuracy is of the model decoded from that file. The chosen plan is the smallest file within "
        f"{MAX_DROP} point of the baseline on **validation**; test is only reported. "
        f"Figure to meet: >= {TARGET:.0f}x smaller at <= {MAX_DROP} point test drop "
        "(Han et al. 2016, full MNIST: LeNet-300-100 40x, LeNet-5 39x).", "",
    ]
    for model_name, r in res.items():
        d = r["dense"]
        best = r["candidates"][r["chosen"]]
        h = best["clustered+huffman"]
        verdict = "met" if r["meets_figure"] else "NOT met"
        lines += [f"## {r['label']} (`zoo.trained('{model_name}', 'mnist')`)", "",
                  f"Chosen: **{best['prune']}, {best['bits']}**: {d['bytes']:,} -> {h['bytes']:,} bytes "
                  f"(**{h['ratio']}x**), test {d['test']} -> {h['test']} ({h['test_drop']:+.2f} points drop), "
                  f"validation {d['val']} -> {h['val']}. Figure: {verdict}."
                  + ("" if r["chosen_meets_val_rule"] else " (no plan met the validation rule; the least-drop one is shown)"),
                  "", "| stage | bytes | KiB | x smaller | val acc | test acc | test drop (pt) | read back exact |",
                  "|---|---:|---:|---:|---:|---:|---:|---|",
                  f"| dense FP32 | {d['bytes']:,} | {_kib(d['bytes'])} | 1.00 | {d['val']} | {d['test']} | 0.00 | yes |"]
        for key, label in (("pruned", "pruned (bitmask + values)"), ("clustered", "pruned + clustered (bitmask + b-bit indices)"),
                           ("clustered+huffman", "pruned + clustered + Huffman")):
            s = best[key]
            lines.append(f"| {label} | {s['bytes']:,} | {_kib(s['bytes'])} | {s['ratio']} | {s['val']} | {s['test']} | "
                         f"{s['test_drop']:+.2f} | {'yes' if s['exact'] else 'NO'} |")
        nf, pb = best["clustered_no_finetune"], best["pruned_before_distill"]
        lines += ["", f"Pruned before distillation: val {pb['val']}, test {pb['test']}. Clustered before the centroids "
                  f"were trained: val {nf['val']}, test {nf['test']}.", "",
                  "Per layer (chosen plan):", "",
                  "| layer | type | weights | sparsity | bits | gap bits k (0: fixed layout kept) | bytes (bitmask + indices) | bytes (Huffman) | bits / non-zero (whole record) |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for row in best["layers"]:
            lines.append(f"| {row['layer']} | {row['type']} | {row['weights']:,} | {row['sparsity']:.3f} | {row['bits']} | "
                         f"{row['gap_bits_k']} | {row['bytes_fixed']:,} | {row['bytes_huffman']:,} | {row['bits_per_nonzero_huffman']} |")
        lines += ["", "All candidate plans:", "",
                  "| prune | bits | pruned x / test | clustered x / test | Huffman x | val drop | test drop |",
                  "|---|---|---|---|---:|---:|---:|"]
        for i, c in enumerate(r["candidates"]):
            mark = " **(chosen)**" if i == r["chosen"] else ""
            p, cl, h = c["pruned"], c["clustered"], c["clustered+huffman"]
            lines.append(f"| {c['prune']}{mark} | {c['bits']} | {p['ratio']}x / {p['test']} | {cl['ratio']}x / {cl['test']} | "
                         f"{h['ratio']}x | {h['val_drop']:+.2f} | {h['test_drop']:+.2f} |")
        lines.append("")
    lines += ["Notes: a layer's record holds its codebook and float32 bias too, hence the bits per non-zero of "
              "the small layers. The file holds the safetensors header too (on LeNet-5 the 236 float32 biases "
              "alone are ~0.9 KiB of the budget). The container's filler gaps carry no weight (Han's carry a "
              "zero weight), and the gap width k is chosen per layer for the smallest coded size. One seeded "
              "run per plan; with 400 validation / 1,000 test images one image is 0.25 / 0.1 point."]
    return "\n".join(lines) + "\n" + "\n".join(environment_block(meta))


def main(argv: list[str] | None = None) -> int:
    return bench_main(__doc__, "deep_compression", MODES, run, render, argv)


if __name__ == "__main__":
    sys.exit(main())
