"""Attention-head pruning (prune.heads): what removing heads gains and costs, measured.

    python bench/heads.py --quick          # results in bench/results/heads.md

(a) effdl's zoo encoder (BERT-shaped, 2 layers x 4 heads, patch tokens) trained on the MNIST subset:
    25/50/75% of the heads removed by Taylor importance (Michel et al. 2019), by L1 and at random
    (control), each followed by the same short fine-tune; test accuracy right after the cut (the
    saliency's own quality) and after the fine-tune, parameters, and p50 latency
    of the pruned model vs the unpruned one (eager and ONNX Runtime, batch 1 and 32).
(b) the real pretrained all-MiniLM-L6-v2 (6 x 12 heads): 25/50% of the heads removed by L1 with no
    fine-tuning (there is no labelled text data here); cosine similarity of the mean-pooled sentence
    embeddings to the unpruned model's, on the English sentences of the model card shipped in the
    package, and eager latency at batch 16 x 128 tokens and batch 1 x 30 tokens.

Latency: interleaved variants, median of rounds, threads pinned, steady malloc (re-exec). Accuracy
numbers are one seeded run.
"""
from __future__ import annotations

from _publish import bench_main, environment_block, zoo_task

import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = {"quick": {"ratios": (0.25, 0.5, 0.75), "epochs": 2.0, "rounds": 3, "minilm_ratios": (0.25, 0.5), "random_seeds": 5},
         "full": {"ratios": (0.25, 0.5, 0.75), "epochs": 4.0, "rounds": 5, "minilm_ratios": (0.25, 0.5, 0.75),
                  "random_seeds": 10}}


def _interleaved(fns: dict, x, rounds: int, threads: int) -> dict[str, float]:
    from effdl.metrics.latency import measure_latency

    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            times[k].append(measure_latency(fn, x, warmup=3, repeats=20, min_time_s=0.1, threads=threads)["p50_ms"])
    return {k: statistics.median(v) for k, v in times.items()}


def encoder_part(mode: dict, threads: int, workdir: Path, log) -> list[dict]:
    import torch

    from effdl.compress.prune import HeadPruneConfig, head_counts
    from effdl.core.registry import apply
    from effdl.deploy.runtimes import lower

    task = zoo_task("encoder")
    base = task.evaluate(task.model, "test")["accuracy"]
    variants = {"unpruned": task.model}
    rows = [{"variant": "unpruned", "ratio": 0.0, "saliency": "-", "test": base, "test_before_ft": base, "heads": sum(head_counts(task.model).values()),
             "params": sum(p.numel() for p in task.model.parameters())}]
    for ratio in mode["ratios"]:
        for saliency in ("taylor", "l1", "random"):
            # the random control is one draw of many: its mean over seeds is the fair reference
            seeds = range(mode["random_seeds"]) if saliency == "random" else (0,)
            befores, afters = [], []
            for seed in seeds:
                m = apply(task, HeadPruneConfig(ratio=ratio, saliency=saliency, seed=seed))
                befores.append(task.evaluate(m, "test")["accuracy"])  # the saliency's own quality: damage before recovery
                task.train(m, epochs=mode["epochs"], lr=5e-4)
                afters.append(task.evaluate(m, "test")["accuracy"])
            name = f"{ratio:.0%} {saliency}" + (f" (mean of {len(seeds)} seeds)" if len(seeds) > 1 else "")
            rows.append({"variant": name, "ratio": ratio, "saliency": saliency, "test": statistics.mean(afters),
                         "test_before_ft": statistics.mean(befores),
                         "heads": sum(head_counts(m).values()), "params": sum(p.numel() for p in m.parameters())})
            if saliency == "taylor":
                variants[name] = m
            log(f"encoder {name}: {100 * rows[-1]['test']:.1f}%")
    lat: dict[str, dict] = {}
    for b in (1, 32):
        x = task.example_input(b)
        eager = {k: (lambda xx, m=m: m(xx)) for k, m in variants.items()}
        with torch.inference_mode():
            lat[f"eager b{b}"] = _interleaved(eager, x, mode["rounds"], threads)
        ort = {k: lower(m, "ort", task=task.with_model(m), workdir=workdir / k.replace(" ", "_").replace("%", ""),
                        threads=threads, batch_sizes=(b,)) for k, m in variants.items()}
        lat[f"ort b{b}"] = _interleaved({k: (lambda xx, lw=lw: lw.predict(xx)) for k, lw in ort.items()}, x,
                                        mode["rounds"], threads)
    for r in rows:
        r["latency_ms"] = {k: v.get(r["variant"]) for k, v in lat.items() if r["variant"] in v}
    return rows


def _sentences() -> list[str]:
    from effdl.zoo.minilm import minilm_dir

    text = (minilm_dir() / "README.md").read_text(encoding="utf-8")
    text = text.split("---", 2)[-1]  # drop the YAML front matter
    text = re.sub(r"```.*?```", " ", text, flags=re.S)
    text = re.sub(r"[#*`|\[\]()_>]", " ", text)
    sents = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= 6]
    return sents


def minilm_part(mode: dict, threads: int, log) -> list[dict]:
    import torch
    import torch.nn.functional as F
    from tokenizers import Tokenizer

    from effdl.compress.prune import HeadPruneConfig, head_counts
    from effdl.core.registry import apply
    from effdl.zoo.minilm import load_minilm, mean_pooled, minilm_dir

    tok = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    sents = _sentences()
    tok.enable_padding(pad_id=0)
    tok.enable_truncation(128)
    enc = tok.encode_batch(sents)
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    model = load_minilm()
    models = {"unpruned": model}
    for ratio in mode["minilm_ratios"]:
        models[f"{ratio:.0%} l1"] = apply(model, HeadPruneConfig(ratio=ratio, saliency="l1"))
    with torch.inference_mode():
        ref = mean_pooled(model, ids, mask)
        rows = []
        for name, m in models.items():
            cos = F.cosine_similarity(mean_pooled(m, ids, mask), ref)
            rows.append({"variant": name, "heads": sum(head_counts(m).values()),
                         "params": sum(p.numel() for p in m.parameters()),
                         "cos_mean": float(cos.mean()), "cos_min": float(cos.min()), "n_sentences": len(sents)})
            log(f"minilm {name}: mean cos {rows[-1]['cos_mean']:.4f}")
        gen = torch.Generator().manual_seed(0)
        shapes = {"b16 x 128": (16, 128), "b1 x 30": (1, 30)}
        for label, (b, t) in shapes.items():
            x = torch.randint(1000, 20000, (b, t), generator=gen)
            lat = _interleaved({k: (lambda xx, m=m: m(input_ids=xx)) for k, m in models.items()}, x, mode["rounds"], threads)
            for r in rows:
                r.setdefault("latency_ms", {})[f"eager {label}"] = lat[r["variant"]]
    return rows


def run(mode: dict, log) -> dict:
    import tempfile

    import torch

    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        return {"encoder": encoder_part(mode, threads, Path(tmp), log), "minilm": minilm_part(mode, threads, log)}


def render(res: dict, meta: dict) -> str:
    enc, mini = res["encoder"], res["minilm"]
    base = enc[0]
    keys = list(base["latency_ms"])
    lines = ["# Attention-head pruning (prune.heads)", "",
             f"Mode `{meta['mode_name']}`: {meta['mode']}. Run: `python bench/heads.py{' --quick' if meta['mode_name'] == 'quick' else ''}` "
             f"({meta['seconds']:.0f} s), {meta['threads']} thread(s).", "",
             "## (a) zoo encoder on the MNIST subset (fine-tuned after pruning)", "",
             "| variant | heads | params | test acc before fine-tune | after | " + " | ".join(f"{k} ms" for k in keys) + " | speed-up (" + ", ".join(keys) + ") |",
             "|---|---|---|---|---|" + "---|" * (len(keys) + 1)]
    for r in enc:
        lat = r.get("latency_ms") or {}
        cells = " | ".join(f"{lat[k]:.3f}" if lat.get(k) else "-" for k in keys)
        speed = ", ".join(f"{base['latency_ms'][k] / lat[k]:.2f}x" for k in keys if lat.get(k)) or "-"
        lines.append(f"| {r['variant']} | {r['heads']} | {r['params']:,} | {100 * r['test_before_ft']:.1f} | "
                     f"{100 * r['test']:.1f} | {cells} | {speed} |")
    mkeys = list(mini[0]["latency_ms"])
    lines += ["", f"## (b) pretrained all-MiniLM-L6-v2, L1 head pruning, no fine-tuning ({mini[0]['n_sentences']} model-card sentences)", "",
              "| variant | heads | params | mean cos | min cos | " + " | ".join(f"{k} ms" for k in mkeys) + " | speed-up |",
              "|---|---|---|---|---|" + "---|" * (len(mkeys) + 1)]
    for r in mini:
        speed = ", ".join(f"{mini[0]['latency_ms'][k] / r['latency_ms'][k]:.2f}x" for k in mkeys)
        lines.append(f"| {r['variant']} | {r['heads']} | {r['params']:,} | {r['cos_mean']:.4f} | {r['cos_min']:.4f} | "
                     + " | ".join(f"{r['latency_ms'][k]:.2f}" for k in mkeys) + f" | {speed} |")
    return "\n".join(lines + environment_block(meta))


def main(argv: list[str] | None = None) -> int:
    return bench_main(__doc__, "heads", MODES, run, render, argv, threads=2, steady_malloc=True)


if __name__ == "__main__":
    sys.exit(main())
