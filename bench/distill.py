"""Hinton distillation on the MNIST subset: students trained alone vs distilled from a teacher.

    python bench/distill.py --quick                       # every experiment, 1 seed (~20 min)
    python bench/distill.py --experiment hinton           # one experiment, full mode (~20 min)

Five experiments; each section of bench/results/distill.md records its own command and time, and a
run of one experiment keeps the others' last published results (read back from distill.json).

``small`` — teacher: the cached trained LeNet-5 baseline (``effdl.zoo.trained("lenet5", "mnist")``,
trained plainly, so it memorises the training images and its soft targets on them are nearly
one-hot). Students: an MLP with one hidden layer of 32 units and LeNet-5 at width 0.25, T in
{1, 2, 4, 8, 20}, on three kinds of training images:
- plain: the training images, alpha 0.9;
- shift2: random shifts of up to 2 pixels; when distilling, the teacher labels the shifted image
  the student sees; alpha 0.9;
- mixup: shifts and mixup (Beta(1, 1)) with alpha 1.0, i.e. pure "function matching" (Beyer et
  al. 2022: the teacher labels mixed images, points between the training images where its
  outputs carry information the training labels do not).

``hinton`` — the setting of Hinton et al. 2015: a regularised teacher (LeNet-5 at width 2 trained
with random shifts of up to 2 pixels, trained in the run, one per seed) and an unregularised
student with two hidden layers (MLP 256-256), T in {2, 4, 8, 20}:
- plain: the student alone and distilled (alpha 0.9) on the plain training images: the teacher's
  soft targets are the only route for what it learnt from shifted images;
- shift2: the student alone on shifted images (its strongest training alone here), and "function
  matching" (alpha 1.0): the student sees shifted images labelled by the teacher.

``hinton-long`` — the same, 150 student epochs instead of 60, at one temperature fixed beforehand
(T=4), to see whether the gains grow with the schedule, as function matching's do in Beyer et al.

``hinton-confirm`` — hinton-long's function-matching row again on fresh seeds (3-5): a held-out
check of its result (it did not replicate: 0.33 of the gap against 0.52).

``hinton-patient`` — "consistent and patient" function matching (Beyer et al.): teacher and student
see the same shifted and mixed images for 300 epochs, T=4, fresh seeds 6-8; the student alone trains
on the same images for as long. Defined before it was run.

In every comparison the student alone and the distilled student share init, epochs, optimizer
(AdamW, cosine schedule, batch 64) and training images; the student alone is trained with cross
entropy (``learn.augment`` with the variant's augmentation). T is picked on the validation split;
the test split is reported. Target (issue 5): the distilled student closes at least half of the
test-accuracy gap between the student alone and the teacher. Reference (REFERENCE.md): Hinton et
al. 2015, full MNIST: teacher 67 errors, student alone 146, distilled at T=20: 74.
"""
from __future__ import annotations

from _publish import environment_block, publish

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> (teacher, students {label: (zoo name, knobs)}, variants {name: (augmentation, alpha)},
# temperatures, student lr, epochs per mode). teacher None = the cached zoo LeNet-5 baseline; else
# (zoo name, knobs, training augmentation, epochs per mode, lr), trained in the run for each seed.
EXPERIMENTS = {
    "small": {
        "teacher": None,
        "students": {"mlp-32": ("mlp", {"hidden": (32,)}), "lenet5-w0.25": ("lenet5", {"width": 0.25})},
        "variants": {"plain": ({}, 0.9), "shift2": ({"shift": 2}, 0.9), "mixup": ({"shift": 2, "mixup": 1.0}, 1.0)},
        "temperatures": (1.0, 2.0, 4.0, 8.0, 20.0),
        "lr": 2e-3,
        "epochs": {"quick": 40.0, "full": 60.0},
    },
    "hinton": {
        "teacher": ("lenet5", {"width": 2.0}, {"shift": 2}, {"quick": 10.0, "full": 30.0}, 3e-3),
        "students": {"mlp-256x256": ("mlp", {"hidden": (256, 256)})},
        "variants": {"plain": ({}, 0.9), "shift2": ({"shift": 2}, 1.0)},
        "temperatures": (2.0, 4.0, 8.0, 20.0),
        "lr": 1e-3,
        "epochs": {"quick": 20.0, "full": 60.0},
    },
}
# The same comparison trained 2.5x longer: function matching keeps gaining from long schedules
# (Beyer et al. 2022). One temperature, fixed beforehand (T=4, the middle of the range above), keeps
# the run near 15 minutes; so no T is picked on this experiment's validation split.
EXPERIMENTS["hinton-long"] = {**EXPERIMENTS["hinton"], "temperatures": (4.0,), "epochs": {"quick": 40.0, "full": 150.0}}
SEEDS = {"quick": (0,), "full": (0, 1, 2)}
# A held-out replication of hinton-long's function-matching row: fresh seeds (teachers, students and
# shuffling never seen while choosing the setting) and the same fixed T=4, so its gap closed is an
# unbiased check of the figure rather than the best of several tries.
EXPERIMENTS["hinton-confirm"] = {**EXPERIMENTS["hinton-long"], "variants": {"shift2": ({"shift": 2}, 1.0)},
                                 "seeds": {"quick": (3,), "full": (3, 4, 5)}}
# One further attempt, fixed before it was run (seeds 6-8, unseen): "consistent and patient" function
# matching (Beyer et al. 2022): teacher and student see the same shifted *and mixed* images, for 300
# epochs; the student alone trains on the same shifted and mixed images for as long.
EXPERIMENTS["hinton-patient"] = {**EXPERIMENTS["hinton-long"],
                                 "variants": {"shift2+mixup": ({"shift": 2, "mixup": 1.0}, 1.0)},
                                 "epochs": {"quick": 40.0, "full": 300.0},
                                 "seeds": {"quick": (6,), "full": (6, 7, 8)}}


def make_task(model, data, seed: int):
    from effdl.core.tasks import ImageClassification

    return ImageClassification(model, data.train, data.val, data.test, num_classes=data.num_classes, seed=seed)


def scores(task, model) -> dict:
    return {"val": task.evaluate(model, "val")["accuracy"], "test": task.evaluate(model, "test")["accuracy"]}


def teacher_for(exp: dict, mode: str, seed: int, data, log):
    """The experiment's teacher for this seed: the cached zoo baseline, or one trained now."""
    import torch

    import effdl
    from effdl.learn.augment import AugmentConfig
    from effdl.zoo import build, trained

    if exp["teacher"] is None:
        return trained("lenet5", "mnist")
    name, knobs, aug, epochs, lr = exp["teacher"]
    torch.manual_seed(1000 + seed)  # teacher and student inits differ
    init = build(name, input_shape=data.input_shape, num_classes=data.num_classes, **knobs)
    start = time.perf_counter()
    teacher = effdl.apply(init, AugmentConfig(epochs=epochs[mode], lr=lr, **aug), task=make_task(init, data, seed))
    log(f"  teacher {name} {knobs} seed {seed} trained in {time.perf_counter() - start:.0f} s")
    return teacher


def run_student(exp: dict, label: str, variant: str, seed: int, epochs: float, teacher, data, log) -> dict:
    import torch

    import effdl
    from effdl.learn import DistillConfig
    from effdl.learn.augment import AugmentConfig
    from effdl.zoo import build

    name, knobs = exp["students"][label]
    torch.manual_seed(seed)
    init = build(name, input_shape=data.input_shape, num_classes=data.num_classes, **knobs)
    task = make_task(teacher, data, seed)  # the Task's model is the teacher ("task" teacher)
    aug, alpha = exp["variants"][variant]
    # alone: cross-entropy on the same (augmented) images, without running the teacher
    alone = effdl.apply(init, AugmentConfig(epochs=epochs, lr=exp["lr"], **aug), task=task)
    row = {"student": label, "variant": variant, "seed": seed, "params": sum(p.numel() for p in init.parameters()),
           "teacher": scores(task, teacher), "alone": scores(task, alone), "distilled": {}}
    tag = f"  {label} {variant} seed {seed}:"
    log(f"{tag} teacher test {row['teacher']['test']:.4f}; alone val {row['alone']['val']:.4f} "
        f"test {row['alone']['test']:.4f}")
    for t in exp["temperatures"]:
        cfg = DistillConfig(temperature=t, alpha=alpha, epochs=epochs, lr=exp["lr"], **aug)
        row["distilled"][str(t)] = scores(task, effdl.apply(init, cfg, task=task))
        log(f"{tag} T={t:g} val {row['distilled'][str(t)]['val']:.4f} test {row['distilled'][str(t)]['test']:.4f}")
    return row


def run_experiment(name: str, mode: str, data, log) -> list[dict]:
    exp = EXPERIMENTS[name]
    rows = []
    for seed in exp.get("seeds", SEEDS)[mode]:
        teacher = teacher_for(exp, mode, seed, data, log)
        rows += [run_student(exp, label, variant, seed, exp["epochs"][mode], teacher, data, log)
                 for label in exp["students"] for variant in exp["variants"]]
    return rows


def summarise(rows: list[dict], temperatures) -> dict:
    """Per (student, variant): mean accuracies over seeds, T picked on validation, gap closed."""
    mean = statistics.fmean
    summary = {}
    for key in dict.fromkeys((r["student"], r["variant"]) for r in rows):
        rs = [r for r in rows if (r["student"], r["variant"]) == key]
        per_t = {str(t): {s: mean([r["distilled"][str(t)][s] for r in rs]) for s in ("val", "test")}
                 for t in temperatures}
        best_t = max(per_t, key=lambda k: per_t[k]["val"])  # chosen on validation only
        s = {"student": key[0], "variant": key[1], "params": rs[0]["params"], "seeds": len(rs),
             "teacher_test": mean([r["teacher"]["test"] for r in rs]),
             "alone_val": mean([r["alone"]["val"] for r in rs]), "alone_test": mean([r["alone"]["test"] for r in rs]),
             "per_T": per_t, "best_T": float(best_t), "distilled_test": per_t[best_t]["test"]}
        # the spread over seeds, at the T picked on the mean (a test error is 0.1 point)
        s["gap_closed_per_seed"] = [
            (r["distilled"][best_t]["test"] - r["alone"]["test"]) / (r["teacher"]["test"] - r["alone"]["test"])
            if r["teacher"]["test"] > r["alone"]["test"] else float("nan") for r in rs]
        gap = s["teacher_test"] - s["alone_test"]
        s["gap_closed"] = (s["distilled_test"] - s["alone_test"]) / gap if gap > 0 else float("nan")
        summary[f"{key[0]} {key[1]}"] = s
    # The strict baseline: the student's best way of training alone (picked on validation over the
    # image variants), so augmentation alone never counts as the distillation's gain.
    for s in summary.values():
        best = max((x for x in summary.values() if x["student"] == s["student"]), key=lambda x: x["alone_val"])
        gap = s["teacher_test"] - best["alone_test"]
        plain = summary.get(f"{s['student']} plain")
        gap_plain = s["teacher_test"] - plain["alone_test"] if plain else float("nan")
        s["gap_closed_vs_plain_alone"] = ((s["distilled_test"] - plain["alone_test"]) / gap_plain
                                          if plain and gap_plain > 0 else float("nan"))
        s["best_alone_variant"] = best["variant"]
        s["best_alone_test"] = best["alone_test"]
        s["gap_closed_vs_best_alone"] = (s["distilled_test"] - best["alone_test"]) / gap if gap > 0 else float("nan")
        s["target_met"] = s["gap_closed"] >= 0.5
        s["target_met_vs_best_alone"] = s["gap_closed_vs_best_alone"] >= 0.5
    return summary


TITLES = {"small": "Small students taught by the plainly trained LeNet-5 baseline",
          "hinton": "Hinton's setting: a regularised teacher, an unregularised two-layer MLP student",
          "hinton-long": "Hinton's setting trained 2.5x longer, T fixed at 4",
          "hinton-confirm": "Held-out replication of hinton-long's function matching on fresh seeds 3-5",
          "hinton-patient": "Consistent and patient function matching (shift + mixup, 300 epochs), fresh seeds 6-8"}


def describe_teacher(exp: dict, meta: dict) -> str:
    if exp["teacher"] is None:
        return "the zoo LeNet-5 baseline (cached, trained plainly)"
    name, knobs, aug, epochs, lr = exp["teacher"]
    return (f"{name} {knobs} trained in the run for each seed with augmentation {aug}, "
            f"{epochs[meta['mode']]:g} epochs, AdamW lr {lr}")


def render_experiment(name: str, result: dict) -> list[str]:
    meta, rows = result["meta"], result["runs"]
    exp = EXPERIMENTS[name]
    temps = meta.get("temperatures", exp["temperatures"])
    summary = summarise(rows, temps)
    variants = ", ".join(f"{v} (augmentation {a}, alpha {al})" for v, (a, al) in exp["variants"].items())
    lines = [f"## {name}: {TITLES[name]}", "",
             (f"`{meta['command']}` — mode {meta['mode']}, seeds {meta['seeds']}, students {meta['epochs']:g} "
              f"epochs, AdamW lr {meta['lr']}, batch 64. Training images and alpha: {variants}; student alone = "
              f"cross-entropy on the same images. Finished {meta['finished']} ({meta['wall_s']:.0f} s)."), "",
             (f"Teacher: {describe_teacher(exp, meta)}; test accuracy (mean over seeds) "
              f"{statistics.fmean(s['teacher_test'] for s in summary.values()):.4f}."), "",
             "Accuracy (mean over seeds), validation / test:", "",
             "| student | training images | params | alone | " + " | ".join(f"T={t:g}" for t in temps) + " |",
             "|---|---|---|---|" + "---|" * len(temps)]
    for s in summary.values():
        lines.append(f"| {s['student']} | {s['variant']} | {s['params']:,} | {s['alone_val']:.4f} / "
                     f"{s['alone_test']:.4f} | "
                     + " | ".join(f"{p['val']:.4f} / {p['test']:.4f}" for p in s["per_T"].values()) + " |")
    pick = f"T fixed at {temps[0]:g}" if len(temps) == 1 else "T picked on validation"
    lines += ["", (f"{pick}; test accuracy of the pick, and the fraction of the student-alone -> "
                   "teacher test gap it closes: against the student alone on the same images (the issue's figure), "
                   "against the student alone on the plain images (Hinton's comparison), and against the student's "
                   "best training alone (variant picked on validation), so that what augmentation alone gives never "
                   "counts as the distillation's gain. Target: >= 0.5."), "",
              ("| student, training images | alone, same images (test) | best T (val) | distilled (test) "
               "| teacher (test) | gap closed (same images) | target | gap closed (vs plain alone) "
               "| best alone (test) | gap closed (vs best alone) | target |"),
              "|---|---|---|---|---|---|---|---|---|---|---|"]

    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    for label, s in summary.items():
        lines.append(f"| {label} | {s['alone_test']:.4f} | {s['best_T']:g} | {s['distilled_test']:.4f} | "
                     f"{s['teacher_test']:.4f} | {s['gap_closed']:.2f} | {met(s['target_met'])} | "
                     + ("- (no plain run) | " if math.isnan(s["gap_closed_vs_plain_alone"])
                        else f"{s['gap_closed_vs_plain_alone']:.2f} | ") +
                     f"{s['best_alone_test']:.4f} ({s['best_alone_variant']}) | "
                     f"{s['gap_closed_vs_best_alone']:.2f} | {met(s['target_met_vs_best_alone'])} |")
    lines += ["", "Gap closed (same images) per seed, at the T picked on the mean: "
              + "; ".join(f"{label}: " + ", ".join(f"{g:.2f}" for g in s["gap_closed_per_seed"])
                          for label, s in summary.items()) + "."]
    env = environment_block(meta)
    env[1] = f"### Environment of the {name} run"
    return lines + env


def render(results: dict) -> str:
    lines = ["# Distillation on the MNIST subset (3,600 train / 400 val / 1,000 test images)", ""]
    for name in EXPERIMENTS:
        if name in results:
            lines += render_experiment(name, results[name]) + [""]
    return "\n".join(lines)


def previous_results(out: Path) -> dict:
    """The last published results, per experiment (the JSON of older versions held 'small' only)."""
    path = out.with_suffix(".json")
    if not path.exists():
        return {}
    payload = json.loads(path.read_text())
    if "experiments" in payload:
        return payload["experiments"]
    meta = dict(payload["meta"], temperatures=payload["meta"].get("temperatures"))
    for r in payload["runs"]:  # older runs used one teacher for every seed
        r.setdefault("teacher", payload["teacher"])
    return {"small": {"meta": meta, "runs": payload["runs"]}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--experiment", choices=[*EXPERIMENTS, "all"], default="all")
    ap.add_argument("--threads", type=int, default=1)  # tiny models: one thread is faster on a busy machine
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "distill.md")
    ap.add_argument("--render", action="store_true", help="only re-render the tables from the results .json")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    results = previous_results(args.out)
    if args.render:  # the summaries in the JSON are refreshed too
        if not results:
            ap.error(f"--render: no results in {args.out.with_suffix('.json')}: run an experiment first")
        for name, result in results.items():
            result["meta"]["summary"] = summarise(result["runs"], result["meta"]["temperatures"])
        publish(args.out, render(results), {"experiments": results}, echo=False)
        return 0
    import torch

    from effdl.data import load_data
    from effdl.metrics.env import environment

    torch.set_num_threads(args.threads)
    mode = "quick" if args.quick else "full"
    data = load_data("mnist")
    for name in EXPERIMENTS if args.experiment == "all" else [args.experiment]:
        start = time.perf_counter()

        def log(msg: str, name: str = name, start: float = start) -> None:
            print(f"[{name} {time.perf_counter() - start:6.1f}s] {msg}", flush=True)

        exp = EXPERIMENTS[name]
        rows = run_experiment(name, mode, data, log)
        meta = {"command": "python bench/distill.py " + " ".join(sys.argv[1:] if argv is None else argv),
                "mode": mode, "seeds": list(exp.get("seeds", SEEDS)[mode]), "epochs": exp["epochs"][mode], "lr": exp["lr"],
                "variants": {k: {"augment": a, "alpha": al} for k, (a, al) in exp["variants"].items()},
                "temperatures": list(exp["temperatures"]), "finished": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                "wall_s": time.perf_counter() - start, "environment": environment(threads=args.threads)}
        results[name] = {"meta": meta, "runs": rows}
        meta["summary"] = summarise(rows, exp["temperatures"])
        # published after each experiment, so a finished one survives a later failure
        publish(args.out, render(results), {"experiments": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
