"""Labels vs accuracy on the MNIST subset, with and without SimCLR pre-training (``learn.simclr``).

    python bench/selfsup.py --quick     # ~10 minutes on 2 busy cores; results in bench/results/selfsup.md

LeNet-5 (zoo) is pre-trained once with NT-Xent on the train split's images (labels unused: two
random affine + cutout views per image, projection head 84-84-64, tau 0.2, AdamW lr 3e-3). Then, for each number
of labels (class-balanced subsets of the train split), three models are fine-tuned with the same
steps: from scratch (the same random init the pre-training started from), the
pre-trained model fully fine-tuned, and the pre-trained model with only its classifier trained
(linear probe; lr 1e-2, the others 1e-3). Validation picks between full and linear for the "SimCLR (val pick)" column; test
accuracy is reported.
"""
from __future__ import annotations

from _publish import environment_block, publish

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LABELS = (10, 20, 50, 100, 500)
MODES = {"quick": {"pretrain_epochs": 40.0, "seeds": (0,), "steps": 300},
         "full": {"pretrain_epochs": 100.0, "seeds": (0, 1, 2), "steps": 500}}
FT_LR = {"full": 1e-3, "linear": 1e-2}
PRE_LR, TAU = 3e-3, 0.2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "selfsup.md")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from effdl.core.tasks import ImageClassification
    from effdl.data import load_data
    from effdl.learn import SimCLRConfig
    from effdl.learn.selfsup import finetune, pretrain
    from effdl.metrics.env import environment
    from effdl.zoo import build

    torch.set_num_threads(args.threads)
    mode_name = "quick" if args.quick else "full"
    mode = MODES[mode_name]
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f}s] {msg}", flush=True)

    data = load_data("mnist")
    torch.manual_seed(0)
    init = build("lenet5", input_shape=data.input_shape, num_classes=data.num_classes)
    task = ImageClassification(init, data.train, data.val, data.test, num_classes=data.num_classes)
    pre_cfg = SimCLRConfig(epochs=mode["pretrain_epochs"], lr=PRE_LR, temperature=TAU, batch_size=256, cutout=8,
                           finetune_steps=0)
    pretrained, losses = pretrain(copy.deepcopy(init), task, pre_cfg)
    per_epoch = max(1, len(losses) // int(mode["pretrain_epochs"]))
    log(f"pre-trained {mode['pretrain_epochs']:g} epochs: NT-Xent {losses[0]:.3f} -> "
        f"{statistics.fmean(losses[-per_epoch:]):.3f} (last epoch mean)")

    def acc(model) -> dict:
        return {"val": task.evaluate(model, "val")["accuracy"], "test": task.evaluate(model, "test")["accuracy"]}

    runs = []
    for seed in mode["seeds"]:
        for n in LABELS:
            row = {"labels": n, "seed": seed}
            for name, source, how in (("scratch", init, "full"), ("simclr_full", pretrained, "full"),
                                      ("simclr_linear", pretrained, "linear")):
                cfg = SimCLRConfig(labels=n, finetune=how, finetune_steps=mode["steps"], finetune_lr=FT_LR[how],
                                   seed=seed)
                row[name] = acc(finetune(copy.deepcopy(source), task, cfg))
            log(f"  {n} labels seed {seed}: " + ", ".join(f"{k} {row[k]['test']:.4f}"
                                                           for k in ("scratch", "simclr_full", "simclr_linear")))
            runs.append(row)

    meta = {"command": "python bench/selfsup.py " + " ".join(sys.argv[1:]), "mode": mode_name,
            "seeds": list(mode["seeds"]), "pretrain": pre_cfg.to_dict(), "finetune_steps": mode["steps"],
            "finetune_lr": FT_LR, "labels": list(LABELS), "nt_xent_first": losses[0],
            "nt_xent_last_epoch": statistics.fmean(losses[-per_epoch:]),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S %z"), "wall_s": time.perf_counter() - start,
            "environment": environment(threads=args.threads)}
    mean = statistics.fmean
    lines = ["# Self-supervised pre-training (SimCLR) vs labels: LeNet-5 on the MNIST subset", "",
             f"`{meta['command']}` — mode {mode_name}, labelled-subset seeds {meta['seeds']}; pre-training "
             f"{mode['pretrain_epochs']:g} epochs on the {len(data.train)} unlabelled train images (batch 256, "
             f"tau {TAU}, AdamW lr {PRE_LR}; NT-Xent {losses[0]:.3f} -> {meta['nt_xent_last_epoch']:.3f}); fine-tuning "
             f"{mode['steps']} steps, AdamW lr {FT_LR['full']} (full) / {FT_LR['linear']} (linear), cosine, batch min(64, labels). Finished {meta['finished']} "
             f"({meta['wall_s']:.0f} s).", "",
             "Test accuracy (mean over seeds); the val pick chooses full or linear per row on validation accuracy.", "",
             "| labels | scratch | SimCLR + full fine-tune | SimCLR + linear probe | SimCLR (val pick) | gain of the pick (pt) |",
             "|---|---|---|---|---|---|"]
    summary = {}
    for n in LABELS:
        rs = [r for r in runs if r["labels"] == n]
        picks = [r["simclr_full"] if r["simclr_full"]["val"] >= r["simclr_linear"]["val"] else r["simclr_linear"]
                 for r in rs]
        s, f, lin = (mean([r[k]["test"] for r in rs]) for k in ("scratch", "simclr_full", "simclr_linear"))
        p = mean([x["test"] for x in picks])
        summary[n] = {"scratch": s, "simclr_full": f, "simclr_linear": lin, "simclr_pick": p}
        lines.append(f"| {n} | {s:.4f} | {f:.4f} | {lin:.4f} | {p:.4f} | {100 * (p - s):+.1f} |")
    meta["summary"] = summary
    publish(args.out, "\n".join(lines + environment_block(meta)), {"meta": meta, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
