"""Search to a goal: Optuna samples recipes, effdl measures each for real, the study keeps them all.

One trial = one recipe sampled from a SearchSpace (or, for the ``grid`` sampler, one of a
strategy's fixed candidates), built, lowered to the runtimes that can win for it, checked for
parity, timed and evaluated, exactly like a grid candidate. Its measured numbers are the trial's
values:

- single objective (``random``, ``tpe``, ``cmaes``, ``grid``): minimise the goal's target
  footprint subject to validation drop <= max_drop (Optuna's constraints API, which TPE uses to
  sample feasible regions; CMA-ES takes no constraints, so an infeasible trial's value is
  penalised by its excess drop instead);
- multi-objective (``nsga2``, or several ``objectives``): maximise quality and minimise each
  footprint; the result is the measured Pareto set.

Pruners (median, hyperband) watch the validation drop at each epoch boundary of a trial's
fine-tuning (core.progress.epoch_trained) and stop hopeless trials early; Optuna's pruners need a
single objective. The study (any Optuna storage: SQLite, a journal file, PostgreSQL) carries the
job, so ``effdl worker`` processes can join it; trials are counted across workers.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import optuna

from ..core import progress
from ..core.errors import ConfigError, suggest
from ..pipeline.candidate import PrefixCache, jsonable, measure_candidate
from ..pipeline.optimize import finalize, measurement_key
from ..pipeline.recipe import Recipe
from ..pipeline.runtime_choice import RuntimePlanner
from ..pipeline.results import TARGETS, Candidate, Goal, MeasureSettings, Provenance, Results, SearchSummary
from ..pipeline.strategies import CandidateSpec, candidates_for
from .hypervolume import hypervolume, normalised, reference_point
from .space import SearchSpace, default_space
from .storage import claim, fail_running, open_storage, redact

SAMPLERS = ("grid", "random", "tpe", "nsga2", "cmaes")
#: heartbeats a running trial may miss before it counts as dead (a busy 2-core machine delays a few)
GRACE_BEATS = 6
PRUNERS = ("none", "median", "hyperband")
#: study user attributes
_JOB, _FINGERPRINT, _BASELINE = "effdl_job", "effdl_fingerprint", "effdl_baseline"
_RESULT, _REASON, _CONSTRAINT = "result", "reason", "quality_drop"
#: a trial whose candidate was built but could not run faithfully on any runtime (or did not build):
#: told to the sampler as complete and maximally infeasible, since samplers ignore failed trials and
#: would keep proposing a recipe that cannot work; flagged so the summary counts it as failed
_FAILED, FAILED_VIOLATION = "effdl_failed", 1e3


@dataclass(frozen=True)
class SearchSettings:
    """How to search. ``trials`` counts finished trials across every worker of the study (the
    baseline is measured once, outside them); ``timeout`` (seconds) stops this process's search."""

    sampler: str = "tpe"
    trials: int = 30
    timeout: float | None = None
    objectives: tuple[str, ...] | None = None  # footprints (latency, size); None: the goal's target
    #: "none" by default: a compressed model's fine-tuning curve starts far below its peers' and often
    #: recovers, so comparing curves at equal epochs stops exactly the aggressive candidates a frontier
    #: needs (docs/search.md has a measured case); opt in per search
    pruner: str = "none"
    seed: int = 0
    study: str = "effdl-search"
    space: SearchSpace | None = None  # None: the shipped space for the task's kind (grid: the strategy)
    #: trial parameters to evaluate first (e.g. automate.policy.sensitivity_seed), enqueued on a new study
    seeds: tuple[dict[str, Any], ...] = ()
    #: seconds between a running trial's heartbeats; a trial silent for GRACE_BEATS of them is taken as
    #: dead (its worker was killed) and retried by the next worker that starts a trial
    heartbeat: int = 20

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {self.sampler!r}.{suggest(self.sampler, SAMPLERS)} "
                              f"Available: {', '.join(SAMPLERS)}")
        if self.pruner not in PRUNERS:
            raise ConfigError(f"unknown pruner {self.pruner!r}.{suggest(self.pruner, PRUNERS)} "
                              f"Available: {', '.join(PRUNERS)}")
        if isinstance(self.trials, bool) or not isinstance(self.trials, int) or self.trials < 1:
            raise ConfigError(f"trials must be a positive integer, got {self.trials!r}")
        if self.timeout is not None and not self.timeout > 0:
            raise ConfigError(f"timeout must be a positive number of seconds, got {self.timeout!r}")
        for o in self.objectives or ():
            if o not in TARGETS:
                raise ConfigError(f"unknown objective {o!r}.{suggest(o, TARGETS)} Footprints: {', '.join(TARGETS)}")
        if self.objectives is not None and (not self.objectives or len(set(self.objectives)) != len(self.objectives)):
            raise ConfigError(f"objectives must be distinct footprints among {', '.join(TARGETS)}, got {self.objectives!r}")
        if isinstance(self.heartbeat, bool) or not isinstance(self.heartbeat, int) or self.heartbeat < 1:
            raise ConfigError(f"heartbeat must be a positive whole number of seconds, got {self.heartbeat!r}")
        if self.sampler == "cmaes" and self.objectives is not None and len(self.objectives) > 1:
            raise ConfigError("cmaes optimises one objective: use nsga2 for several footprints")

    def footprints(self, goal: Goal) -> tuple[str, ...]:
        return self.objectives or (goal.target,)

    def multi(self, goal: Goal) -> bool:
        return self.sampler == "nsga2" or len(self.footprints(goal)) > 1


def _sampler(settings: SearchSettings, grid_size: int) -> optuna.samplers.BaseSampler:
    """Constrained samplers (TPE, NSGA-II) read each trial's ``quality_drop`` constraint (Trial.set_constraint)."""
    s = settings.sampler
    if s == "grid":
        return optuna.samplers.GridSampler({"grid": list(range(grid_size))}, seed=settings.seed)
    if s == "random":
        return optuna.samplers.RandomSampler(seed=settings.seed)
    if s == "tpe":
        # few trials: start modelling early; multivariate + group handle the conditional slots
        return optuna.samplers.TPESampler(seed=settings.seed, n_startup_trials=min(8, max(2, settings.trials // 4)),
                                          multivariate=True, group=True)
    if s == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=settings.seed, population_size=max(4, min(20, settings.trials // 3)))
    # categorical slots are sampled independently of the CMA-ES distribution (Optuna logs it; effdl's
    # search sets Optuna's log level to errors)
    return optuna.samplers.CmaEsSampler(seed=settings.seed, n_startup_trials=min(5, max(1, settings.trials // 5)))


def _pruner(settings: SearchSettings, multi: bool) -> optuna.pruners.BasePruner:
    if settings.pruner == "none" or multi:  # Optuna's pruners compare one intermediate value
        return optuna.pruners.NopPruner()
    if settings.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=2)
    return optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3)


def _fingerprint(key_settings: dict, goal: Goal, settings: SearchSettings, space: list | None, grid: list | None) -> str:
    blob = json.dumps({"measure": key_settings, "goal": goal.model_dump(mode="json"), "sampler": settings.sampler,
                       "objectives": list(settings.footprints(goal)), "space": space, "grid": grid,
                       "seed": settings.seed, "seeds": list(settings.seeds)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _open_study(settings: SearchSettings, goal: Goal, storage: str | None, out_dir: Path, fingerprint: str,
                sampler, pruner) -> optuna.Study:
    store = open_storage(storage, out_dir / "study.db", heartbeat_interval=settings.heartbeat,
                         grace_period=GRACE_BEATS * settings.heartbeat)
    multi = settings.multi(goal)
    directions = ["maximize"] * multi + ["minimize"] * len(settings.footprints(goal))
    study = optuna.create_study(study_name=settings.study, storage=store, sampler=sampler, pruner=pruner,
                                directions=directions, load_if_exists=True)
    held = study.user_attrs.get(_FINGERPRINT)
    if held is None:
        study.set_user_attr(_FINGERPRINT, fingerprint)
    elif held != fingerprint:
        raise ConfigError(f"study {settings.study!r} in {redact(storage or str(out_dir / 'study.db'))} holds a different "
                          "search (another task, data, goal, space, sampler or measurement settings): pick another "
                          "--study name, or another --out/--storage")
    return study


class _Search:
    """The state one process needs to run trials of a study."""

    def __init__(self, task, goal: Goal, settings: SearchSettings, measure: MeasureSettings, out_dir: Path,
                 baseline: Candidate, space: SearchSpace | None, grid: list[CandidateSpec] | None,
                 on_event: Callable, planner: RuntimePlanner) -> None:
        self.task, self.goal, self.settings, self.measure = task, goal, settings, measure
        self.out_dir, self.baseline = out_dir, baseline
        self.space, self.grid, self.emit = space, grid, on_event
        self.cache = PrefixCache(task)
        self.planner = planner
        self.multi = settings.multi(goal)
        self.sign = 1.0 if goal.higher_is_better else -1.0
        self.base_val = baseline.quality_val[goal.metric]

    def spec(self, trial: optuna.Trial) -> CandidateSpec:
        tid = f"t{trial.number:03d}"
        if self.grid is not None:
            picked = self.grid[trial.suggest_categorical("grid", list(range(len(self.grid))))]
            return CandidateSpec(tid, picked.label, picked.recipe, picked.runtimes)
        recipe = self.space.suggest(trial, self.task.model)
        return CandidateSpec(tid, recipe.label(), recipe)

    def _epoch_check(self, trial: optuna.Trial) -> Callable:
        steps = [0]

        def check(task, model, epochs: float) -> None:
            steps[0] += 1
            drop = self.goal.drop(self.base_val, task.evaluate(model, "val")[self.goal.metric])
            # the excess over the allowance: every trial within max_drop reports 0, so the pruner never
            # stops a trial that is feasible so far, only those further from feasible than their peers
            trial.report(max(0.0, drop - self.goal.max_drop), steps[0])
            if trial.should_prune():
                trial.set_constraint(_CONSTRAINT, drop - self.goal.max_drop)
                raise optuna.TrialPruned(f"validation drop {drop:.4g} (allowed {self.goal.max_drop:g}) at epoch "
                                         f"boundary {steps[0]}, {epochs:.2g} epochs into this training")
        return check

    def objective(self, trial: optuna.Trial) -> float | list[float]:
        # which process ran it; a retry copies its dead original's attributes, whose reason is not this one's
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        if _REASON in trial.user_attrs:
            trial.set_user_attr(_REASON, None)
        spec = self.spec(trial)
        self.emit("start", spec)
        try:
            if self.multi or self.settings.pruner == "none":
                cand = measure_candidate(spec, self.cache, self.task, self.out_dir, self.goal, self.measure, self.planner)
            else:
                with progress.checking_epochs(self._epoch_check(trial)):
                    cand = measure_candidate(spec, self.cache, self.task, self.out_dir, self.goal, self.measure,
                                             self.planner)
        except optuna.TrialPruned as exc:
            trial.set_user_attr(_REASON, f"pruned: {exc}")
            raise
        except Exception as exc:  # recorded on the trial; the study goes on
            trial.set_user_attr(_REASON, f"{type(exc).__name__}: {exc}")
            raise
        cand = cand.model_copy(update={"trial": trial.number, "params": jsonable(trial.params)})
        values = self.values(cand) if cand.ok else None
        if cand.ok and values is None:
            cand = cand.model_copy(update={"status": "failed", "reason": "a measured objective is not a finite number"})
        trial.set_user_attr(_RESULT, json.dumps(cand.model_dump(mode="python"), default=str))
        self.emit("done", cand)
        if not cand.ok:
            trial.set_user_attr(_REASON, cand.reason or "failed")
            trial.set_user_attr(_FAILED, True)
            trial.set_constraint(_CONSTRAINT, FAILED_VIOLATION)
            if self.goal.budget is not None:
                trial.set_constraint("budget", FAILED_VIOLATION)
            return self.failed_values()
        drop = self.goal.drop(self.base_val, cand.quality_val[self.goal.metric])
        trial.set_constraint(_CONSTRAINT, drop - self.goal.max_drop)  # <= 0: feasible
        if self.goal.budget is not None:  # in units of the budget, so both constraints weigh alike
            spent = getattr(cand.footprint, TARGETS[self.goal.target])
            trial.set_constraint("budget", spent / self.goal.budget - 1.0)
        return values

    def failed_values(self) -> float | list[float]:
        """What a failed candidate tells the sampler: no gain over the baseline (its quality and
        footprints), plus, where the sampler reads no constraints (CMA-ES), the largest penalty."""
        base = self.baseline
        feet = [getattr(base.footprint, TARGETS[f]) for f in self.settings.footprints(self.goal)]
        if self.multi:
            return [self.sign * self.base_val, *feet]
        return feet[0] * (1.0 + FAILED_VIOLATION) if self.settings.sampler == "cmaes" else feet[0]

    def values(self, cand: Candidate) -> float | list[float] | None:
        feet = [getattr(cand.footprint, TARGETS[f]) for f in self.settings.footprints(self.goal)]
        quality = cand.quality_val.get(self.goal.metric)
        if quality is None or any(v is None or not math.isfinite(v) for v in [quality, *feet]):
            return None
        if self.multi:
            return [self.sign * quality, *feet]
        if self.settings.sampler == "cmaes":  # no constraints API: penalise the excess drop
            excess = max(0.0, self.goal.drop(self.base_val, quality) - self.goal.max_drop)
            base_foot = getattr(self.baseline.footprint, TARGETS[self.settings.footprints(self.goal)[0]])
            return feet[0] + base_foot * excess / max(self.goal.max_drop, 1e-12)
        return feet[0]


def _counted(study: optuna.Study) -> int:
    """Trials that use up the budget: finished (complete, pruned, failed) and those running now, less
    the failed ones that were re-queued (a dead worker's trial: its retry counts instead)."""
    S = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs.get("failed_trial") for t in trials}
    return sum(t.state in (S.COMPLETE, S.PRUNED, S.RUNNING) or (t.state == S.FAIL and t.number not in retried)
               for t in trials)


def _trials_left(study: optuna.Study, trials: int) -> Callable:
    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if _counted(study) >= trials:
            study.stop()
    return callback


def _drain(study: optuna.Study, runner: _Search, settings: SearchSettings, callbacks: list) -> None:
    """Before the results are written: wait for other workers' running trials, and run the retries of
    trials whose worker died (a running trial whose heartbeat stopped is failed after the grace
    period and re-queued by the storage's retry callback), so every trial of the budget is measured."""
    S = optuna.trial.TrialState
    while True:
        with warnings.catch_warnings():  # marked experimental; it is the documented way to reap dead trials
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        waiting = study.get_trials(deepcopy=False, states=(S.WAITING,))
        if waiting:
            study.optimize(runner.objective, n_trials=len(waiting), callbacks=callbacks, catch=(Exception,),
                           gc_after_trial=False, show_progress_bar=False)
            continue
        if not study.get_trials(deepcopy=False, states=(S.RUNNING,)):
            return
        if not getattr(study._storage, "get_heartbeat_interval", lambda: None)():
            # a storage without heartbeats (the journal file) cannot tell a dead worker's trial from a
            # live one: write the results from what is finished rather than wait for ever
            return
        time.sleep(settings.heartbeat)


def _candidates(study: optuna.Study) -> list[Candidate]:
    """The study's measured candidates (complete, or failed with a recorded result), by trial number."""
    out = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if _RESULT in t.user_attrs and t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL):
            out.append(Candidate.model_validate(json.loads(t.user_attrs[_RESULT])))
    return out


def _summary(study: optuna.Study, settings: SearchSettings, goal: Goal, baseline: Candidate,
             candidates: list[Candidate], storage: str, seconds: float, stopped_by: str) -> SearchSummary:
    S = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    feet = settings.footprints(goal)
    base_feet = [getattr(baseline.footprint, TARGETS[f]) for f in feet]
    base_val = baseline.quality_val[goal.metric]
    points, history = [], []
    for c in candidates:
        if c.ok:
            drop = goal.drop(base_val, c.quality_val[goal.metric])
            points.append(normalised(drop, goal.max_drop if goal.max_drop > 0 else 1.0,
                                     [getattr(c.footprint, TARGETS[f]) for f in feet], base_feet))
            history.append(round(hypervolume(points, reference_point(len(feet))), 6))
    importances: dict[str, float] = {}
    try:
        target = (lambda t: t.values[1]) if settings.multi(goal) else None
        with warnings.catch_warnings():  # "few trials per regime": the numbers still say which knob mattered
            warnings.simplefilter("ignore")
            importances = {k: round(float(v), 4) for k, v in
                           optuna.importance.get_param_importances(study, target=target).items()}
    except (RuntimeError, ValueError, ZeroDivisionError):  # too few complete trials or one parameter value
        importances = {}
    metric = goal.spec.name
    return SearchSummary(
        sampler=settings.sampler, study=study.study_name, storage=redact(storage),
        objectives=(["quality"] if settings.multi(goal) else []) + [TARGETS[f] for f in feet],
        constraint=None if settings.multi(goal) else f"validation {metric} drop <= {goal.max_drop:g}",
        pruner=None if settings.pruner == "none" or settings.multi(goal) else settings.pruner,
        trials=sum(t.state in (S.COMPLETE, S.PRUNED, S.FAIL) for t in trials),
        complete=sum(t.state == S.COMPLETE and not t.user_attrs.get(_FAILED) for t in trials),
        pruned=sum(t.state == S.PRUNED for t in trials),
        failed=sum(t.state == S.FAIL or (t.state == S.COMPLETE and bool(t.user_attrs.get(_FAILED))) for t in trials),
        hypervolume=history,
        hypervolume_axes=[f"{metric} drop / max_drop"] + [f"{TARGETS[f]} / baseline" for f in feet],
        hypervolume_reference=list(reference_point(len(feet))), importances=importances,
        seconds=round(seconds, 1), stopped_by=stopped_by)


def _baseline(study: optuna.Study, task, goal: Goal, measure: MeasureSettings, out_dir: Path, emit,
              planner: RuntimePlanner) -> Candidate:
    """The baseline measured once per study (every runtime its model fits), stored with the study; its
    runtime latencies are the planner's first evidence (also in a worker or a resumed run)."""
    held = study.user_attrs.get(_BASELINE)
    if held is not None:
        cand = Candidate.model_validate(json.loads(held))
        planner.observe("float", {rt: m.latency_ms_p50 for rt, m in cand.runtimes.items()},
                        batch_size=goal.batch_size, source=cand.id)
        emit("resumed", cand)
        return cand
    spec = CandidateSpec("c00", "baseline (FP32)", Recipe())
    emit("start", spec)
    cand = measure_candidate(spec, PrefixCache(task), task, out_dir, goal, measure, planner)
    emit("done", cand)
    if not cand.ok:
        raise ConfigError(f"the baseline could not be measured: {cand.reason}")
    study.set_user_attr(_BASELINE, json.dumps(cand.model_dump(mode="python"), default=str))
    return cand


def _plan(task, settings: SearchSettings, strategy: str,
          candidates: list[CandidateSpec] | None) -> tuple[SearchSpace | None, list[CandidateSpec] | None]:
    if settings.sampler == "grid":
        specs = candidates if candidates is not None else candidates_for(strategy, task=task)
        grid = [s for s in specs if s.recipe.steps]  # the baselines are measured apart
        if not grid:
            raise ConfigError("the grid has no candidates with steps: give candidates or a strategy to draw from")
        return None, grid
    if candidates is not None:
        raise ConfigError(f"candidates are a fixed list: search them with sampler 'grid', not {settings.sampler!r}")
    return settings.space or default_space(task), None


def run_search(task, goal: Goal, *, out_dir: str | Path, settings: SearchSettings, measure: MeasureSettings,
               storage: str | None = None, provenance: Provenance | None = None, on_event=None,
               strategy: str = "shrink-and-improve", candidates: list[CandidateSpec] | None = None,
               job: dict | None = None, finish: bool = True) -> Results | None:
    """Run (or resume, or join) the search ``settings`` on ``task``; ``goal`` is resolved.

    Measures the baseline once per study, then runs trials until the study holds ``settings.trials``
    of them (counted across all workers) or ``settings.timeout`` passes, then (``finish``) writes
    results.json, the chosen model and the report from every measured trial of the study.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(logging.ERROR)  # effdl reports each trial itself (on_event, the report)
    emit = on_event or (lambda ev, c: None)
    space, grid = _plan(task, settings, strategy, candidates)
    key_settings = measurement_key(task, goal, measure, provenance)
    fingerprint = _fingerprint(key_settings, goal, settings, space.to_list() if space else None,
                               [s.recipe.to_list() for s in grid] if grid else None)
    multi = settings.multi(goal)
    with warnings.catch_warnings():  # TPE's multivariate/group are marked experimental; effdl relies on them knowingly
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = _sampler(settings, len(grid or ()))
    study = _open_study(settings, goal, storage, out_dir, fingerprint, sampler, _pruner(settings, multi))
    if job is not None and _JOB not in study.user_attrs:
        grid_rows = [{"label": g.label, "steps": g.recipe.to_list(), "runtimes": list(g.runtimes or ())}
                     for g in grid] if grid is not None else None
        study.set_user_attr(_JOB, jsonable({**job, "goal": goal.model_dump(mode="json"),
                                            "measure": asdict(measure), "search": _settings_dict(settings),
                                            "strategy": strategy, "grid": grid_rows}))
    if storage is None and claim(out_dir / "study.db"):
        # this process alone uses the out dir's study: a RUNNING trial there was left by a run that died;
        # re-queue it now rather than after the heartbeat grace period
        fail_running(study, "interrupted: the process running it died", retry=True)
    seeds = tuple(settings.seeds) + (space.seeds if space is not None else ())
    if seeds and not study.get_trials(deepcopy=False):
        for params in seeds:
            study.enqueue_trial(params)
    planner = RuntimePlanner()
    baseline = _baseline(study, task, goal, measure, out_dir, emit, planner)
    runner = _Search(task, goal, settings, measure, out_dir, baseline, space, grid, emit, planner)
    for cand in _candidates(study):
        emit("resumed", cand)
    t0 = time.perf_counter()

    def results(stopped_by: str, export: bool) -> Results:
        candidates = [baseline] + _candidates(study)
        summary = _summary(study, settings, goal, baseline, candidates[1:], storage or str(out_dir / "study.db"),
                           time.perf_counter() - t0, stopped_by)
        return finalize(candidates, out_dir=out_dir, goal=goal, provenance=provenance, threads=measure.threads,
                        search=summary, export=export)

    def snapshot(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        # results.json and the report after every trial, so `effdl report` / a browser refresh shows
        # a running search (the chosen model is exported once, at the end)
        results("running", export=False)

    callbacks = [_trials_left(study, settings.trials)] + ([snapshot] if finish else [])
    if _counted(study) < settings.trials:
        study.optimize(runner.objective, n_trials=None, timeout=settings.timeout, callbacks=callbacks,
                       catch=(Exception,), gc_after_trial=False, show_progress_bar=False)
    if not finish:
        return None
    _drain(study, runner, settings, callbacks)
    seconds = time.perf_counter() - t0
    stopped_by = ("trials" if _counted(study) >= settings.trials else
                  "timeout" if settings.timeout is not None and seconds >= settings.timeout else "space exhausted")
    return results(stopped_by, export=True)


def _settings_dict(settings: SearchSettings) -> dict[str, Any]:
    out = {k: v for k, v in asdict(settings).items() if k != "space"}
    out["space"] = settings.space.to_list() if settings.space is not None else None
    return out


def settings_from_dict(data: dict[str, Any]) -> SearchSettings:
    """The SearchSettings a study's job stored (for workers)."""
    data = dict(data)
    space = data.pop("space", None)
    objectives = data.pop("objectives", None)
    data["seeds"] = tuple(data.get("seeds", ()))
    return SearchSettings(**data, objectives=tuple(objectives) if objectives else None,
                          space=SearchSpace.from_list(space) if space is not None else None)


def job_grid(job: dict[str, Any]) -> list[CandidateSpec] | None:
    """The grid a study's job holds (sampler 'grid'), as CandidateSpecs a worker measures alike."""
    rows = job.get("grid")
    if rows is None:
        return None
    return [CandidateSpec(f"g{i:02d}", r["label"], Recipe.from_list(r["steps"]), tuple(r["runtimes"]) or None)
            for i, r in enumerate(rows)]


def study_job(study_name: str, storage: str) -> dict[str, Any]:
    """The job a study was created with (model, data, goal, measurement and search settings)."""
    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(storage, Path("study.db")))
    except KeyError:
        raise ConfigError(f"no study named {study_name!r} in {redact(storage)}: start it with `effdl optimize "
                          f"--search ... --study {study_name} --storage URL` first") from None
    job = study.user_attrs.get(_JOB)
    if job is None:
        raise ConfigError(f"study {study_name!r} in {redact(storage)} was not started by `effdl optimize --search` "
                          "(it has no job to join)")
    return job


__all__ = ["SAMPLERS", "PRUNERS", "SearchSettings", "run_search", "settings_from_dict", "study_job"]
