"""`optimize`: build candidates, measure each for real, compute the frontier, choose, export, report."""
from __future__ import annotations

import shutil
from typing import TYPE_CHECKING, Callable
from pathlib import Path

from ..core.errors import ConfigError, suggest
from ..core.io import replace_dir, safe_child, sha256_file, state_digest, write_json
from ..metrics.env import environment
from . import sanity
from .pareto import pareto_front
from .results import TARGETS, Candidate, Export, Goal, MeasureSettings, Provenance, Results, SearchSummary
from .candidate import PrefixCache, jsonable, measure_candidate
from .runtime_choice import RuntimePlanner
from .strategies import CandidateSpec, candidates_for
from .study import Study

if TYPE_CHECKING:
    from ..automate.search import SearchSettings

Event = Callable[[str, "Candidate | CandidateSpec"], None]


def amount(value: float, goal: Goal) -> str:
    """A drop in the goal's terms, for sentences: '1.00 points' (absolute, a fraction metric such as
    accuracy), '5.00%' (relative), else the metric's own units."""
    if goal.relative:
        return f"{value * 100:.2f}%"
    if goal.higher_is_better is False:
        return f"{value:.4g}"
    return f"{value * 100:.2f} points"


def choose(candidates: list[Candidate], baseline: Candidate, goal: Goal) -> tuple[str | None, str]:
    """The feasible candidate with the lowest target footprint, and why.

    Feasible: its validation drop (``goal.drop``: direction and relative-ness from the goal) is
    within ``goal.max_drop``. Latencies within ``goal.latency_tie`` (relative) of the fastest, or
    within the fastest candidate's own p50-p90 spread, are measurement noise, not a real difference
    (a dense and a pruned FP32 model run the same kernels), so those count as tied and the tie goes
    to the smaller file, then the better quality. Sizes are exact: no tolerance.
    """
    key, other = TARGETS[goal.target], TARGETS["size" if goal.target == "latency" else "latency"]
    metric = goal.spec.name
    sign = 1.0 if goal.spec.higher_is_better else -1.0  # sign * value: larger is better
    ok = [c for c in candidates if c.ok]
    base_val = baseline.quality_val[metric]

    def within_budget(c: Candidate) -> bool:
        return goal.budget is None or getattr(c.footprint, key) <= goal.budget

    feasible = [c for c in ok if goal.feasible(base_val, c.quality_val[metric]) and within_budget(c)]
    if not feasible:
        # the closest ones (smallest drop among those within the budget, else the smallest footprints),
        # so the user sees how far the goal is and can relax it knowingly
        pool = [c for c in ok if c.recipe and within_budget(c)]
        near = (sorted(pool, key=lambda c: goal.drop(base_val, c.quality_val[metric])) if pool else
                sorted((c for c in ok if c.recipe), key=lambda c: getattr(c.footprint, key)))[:3]
        closest = "; ".join(f"{c.id} {c.label}: drop {amount(goal.drop(base_val, c.quality_val[metric]), goal)}, "
                            f"{getattr(c.footprint, key):.4g} {key}" for c in near)
        limit = f" and {key} <= {goal.budget:g}" if goal.budget is not None else ""
        return None, (f"no candidate is within {amount(goal.max_drop, goal)} of the baseline's validation {metric}"
                      f"{limit}" + (f"; the closest: {closest}" if closest else ""))

    def cost(c: Candidate, k: str) -> float:
        return getattr(c.footprint, k)

    best_c = min(feasible, key=lambda c: cost(c, key))
    lowest = cost(best_c, key)
    tol = goal.latency_tie if goal.target == "latency" else 0.0
    band = lowest * (1 + tol)
    if goal.target == "latency":  # the fastest candidate's own p50-p90 spread is noise too
        p90 = best_c.footprint.latency_ms_p90
        band = max(band, lowest if p90 is None else p90)
    tied = [c for c in feasible if cost(c, key) <= band]
    best = min(tied, key=lambda c: (cost(c, other), -sign * c.quality_val[metric]))
    drop = goal.drop(base_val, best.quality_val[metric])
    why = (f"lowest {key} among {len(feasible)} candidates within {amount(goal.max_drop, goal)} of the baseline's "
           f"validation {metric} (its drop: {amount(drop, goal)})")
    if len(tied) > 1:
        why += (f"; {len(tied)} candidates were within the noise of the lowest {key} (max of {tol * 100:.0f}% "
                f"and the fastest's p90), so the lowest {other} among them was taken")
    return best.id, why


def resolve_goal(task, goal: Goal | None, measure: MeasureSettings) -> Goal:
    """``goal`` (default: Goal()) with the task's metric and direction, checked against what the task reports."""
    if goal is None:
        goal = Goal()
    if not isinstance(goal, Goal):
        raise ConfigError(f"goal must be an effdl Goal, e.g. Goal(max_drop=0.01, target='size'), got {type(goal).__name__}")
    if not isinstance(measure, MeasureSettings):
        raise ConfigError(f"measure must be a MeasureSettings, got {type(measure).__name__}")
    goal = goal.resolve(task)
    reported = task.evaluate(task.model, "val")
    if goal.metric not in reported:
        raise ConfigError(f"metric {goal.metric!r} is not one the task reports: {list(reported)}."
                          f"{suggest(goal.metric, reported)}")
    return goal


def measurement_key(task, goal: Goal, measure: MeasureSettings, provenance: Provenance | None) -> dict:
    """Every setting that changes a measured number: the measurement settings, the baseline's weights,
    the data and how much of it is evaluated (e.g. a text task's eval limit). The goal's metric and
    limits only change the choice, so they are not in it."""
    return {**measure.key(goal), "baseline_model": state_digest(task.model)[:16],
            "data": provenance.data if provenance else None, "task": type(task).__name__,
            "examples": {s: task.num_examples(s) for s in ("train", "val", "test")}}


def optimize(
    task,
    goal: Goal | None = None,
    *,
    out_dir: str | Path,
    candidates: list[CandidateSpec] | None = None,
    strategy: str = "shrink-and-improve",
    measure: MeasureSettings = MeasureSettings(),
    storage: str | None = None,
    provenance: Provenance | None = None,
    on_event: Event | None = None,
    search: "SearchSettings | None" = None,
    job: dict | None = None,
    check_baseline: bool = True,
) -> Results:
    """Measure every candidate (``candidates``, else those of ``strategy``) on ``task``; choose by ``goal``.

    ``goal`` None: the default Goal (the task's primary metric, at most 0.01 worse, lowest latency
    at batch 1). Writes results.json, the chosen model, pareto.csv and report.html under ``out_dir``,
    and returns the Results. ``on_event(event, candidate)`` is called with "start" (the
    CandidateSpec), then "done" or "resumed" (the measured Candidate). A re-run with the same
    ``out_dir`` resumes: candidates measured with the same recipe, baseline model and measurement
    settings are read back, not redone.

    ``search`` (an automate.SearchSettings) searches instead of measuring a fixed list: recipes are
    sampled from a search space (or, for sampler "grid", drawn from the ``strategy``'s candidates)
    against the measured numbers, in the Optuna study ``search.study`` of ``storage``; ``job`` (the
    model/data specs) is stored with the study so `effdl worker` can join it.

    ``check_baseline``: first make sure the task's model is a working model of its data (no better
    than chance, or far below a linear probe, raises BaselineError before anything is built; see
    pipeline.sanity). Pass False to compress such a model on purpose.
    """
    goal = resolve_goal(task, goal, measure)
    if check_baseline:
        sanity.check_baseline(task, goal, provenance.data if provenance else None)
    if search is not None:
        from ..automate.search import run_search

        return run_search(task, goal, out_dir=out_dir, settings=search, measure=measure, storage=storage,
                          provenance=provenance, on_event=on_event, strategy=strategy, candidates=candidates,
                          job=job)
    out_dir = Path(out_dir)
    specs = candidates if candidates is not None else candidates_for(strategy, task=task)
    key_settings = measurement_key(task, goal, measure, provenance)
    study = Study(out_dir, storage)
    done = study.finished()
    cache = PrefixCache(task)
    planner = RuntimePlanner()  # lowers each candidate only to the runtimes that can still win for it
    emit = on_event or (lambda ev, c: None)
    sign = 1.0 if goal.higher_is_better else -1.0  # the study maximises its first value
    results: list[Candidate] = []
    for spec in specs:
        key = spec.key(key_settings)
        if key in done:
            results.append(done[key])
            emit("resumed", done[key])
            continue
        emit("start", spec)
        trial = study.start(key, spec.id)
        cand = measure_candidate(spec, cache, task, out_dir, goal, measure, planner)
        values = (sign * cand.quality_val[goal.metric], getattr(cand.footprint, TARGETS[goal.target])) if cand.ok else None
        study.finish(trial, cand, values)
        results.append(cand)
        emit("done", cand)
    return finalize(results, out_dir=out_dir, goal=goal, provenance=provenance, threads=measure.threads)


def finalize(candidates: list[Candidate], *, out_dir: str | Path, goal: Goal, provenance: Provenance | None,
             threads: int, search: SearchSummary | None = None, export: bool = True) -> Results:
    """Drops, frontiers, the choice, the exported model (``export``) and the report, from measured
    candidates (the first is the baseline; ``goal`` is resolved)."""
    from ..report import write_report

    metric = goal.spec.name
    baseline = candidates[0]
    if not baseline.ok:
        raise ConfigError(f"the baseline could not be measured: {baseline.reason}")
    filled = []
    for c in candidates:
        if c.ok:
            c = c.model_copy(update={"quality_drop": goal.drop(baseline.quality[metric], c.quality[metric]),
                                     "quality_drop_val": goal.drop(baseline.quality_val[metric], c.quality_val[metric])})
        filled.append(c)
    ok = [c for c in filled if c.ok]
    frontier = {t: pareto_front([(c.id, c.quality_val[metric], getattr(c.footprint, k)) for c in ok],
                                higher_is_better=goal.spec.higher_is_better)
                for t, k in TARGETS.items()}
    filled = [c.model_copy(update={"frontier": {t: c.id in ids for t, ids in frontier.items()},
                                   "on_frontier": c.id in frontier[goal.target]}) for c in filled]
    chosen, reason = choose(filled, filled[0], goal)
    results = Results(goal=goal, provenance=provenance, environment=jsonable(environment(threads=threads)),
                      baseline=baseline.id, chosen=chosen, chosen_reason=reason, frontier=frontier, candidates=filled,
                      search=search)
    if chosen and export:
        results = results.model_copy(update={"export": export_chosen(results, Path(out_dir))})
    results.save(Path(out_dir) / "results.json")
    write_report(results, out_dir)
    return results


def export_chosen(results: Results, out_dir: Path) -> Export:
    """Copy the chosen candidate's verified artifacts to out_dir/model with its recipe and sha256s."""
    cand = results.chosen_candidate
    mdir = out_dir / "model"
    staging = out_dir / ".model.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    files = {}
    names = {"model": "model.safetensors", "onnx": "model.onnx", "structure": "structure.json"}
    for kind, rel in cand.artifacts.items():
        dst = staging / names[kind]
        shutil.copyfile(safe_child(out_dir, rel), dst)
        files[dst.name] = sha256_file(dst)
    prov = results.provenance or Provenance()
    recipe = {"base_model": prov.model, "data": prov.data, "steps": cand.recipe,
              "runtime": cand.runtime, "candidate": cand.id, "sha256": files, "effdl_version": results.effdl_version}
    write_json(staging / "recipe.json", recipe)
    replace_dir(staging, mdir)  # the exported folder appears whole or not at all
    return Export(dir="model", files=sorted(files) + ["recipe.json"])
