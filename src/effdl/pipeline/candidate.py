"""One candidate: build its recipe (reusing built prefixes), store it, measure it on its runtimes.

``measure_candidate`` turns a CandidateSpec into a measured Candidate: the recipe is applied
(``PrefixCache`` reuses 'prune 80% + distill' for 'prune 80% + distill + int8'), the model is
stored as safetensors, lowered to each runtime, checked for parity and timed; the fastest verified
runtime gives the candidate's quality and footprint. A candidate that raises is recorded as failed.

Given a ``RuntimePlanner`` (pipeline.runtime_choice), a candidate is lowered only to the runtimes that
could still win on the evidence of earlier candidates (unless ``MeasureSettings.all_runtimes``), the
skipped ones recorded with why; and a model identical to one already measured in this process takes
that measurement, marked ``reused_from``.
"""
from __future__ import annotations

import copy
import json
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import optuna
import torch.nn as nn

from ..compress.lowrank import structure_of  # pruned shapes + factorized layers
from ..core.compressed import float_reference, runtime_kind
from ..core.io import write_json
from ..core.progress import StageTimer
from ..core.records import dump_records, records
from ..core.registry import apply
from ..metrics.measure import measure_runtime, runtime_footprint, runtime_quality, static_footprint
from .results import Candidate, Goal, MeasureSettings
from .runtime_choice import ReuseKey, RuntimePlanner, candidate_runtimes
from .strategies import CandidateSpec


class PrefixCache:
    """Models built from recipe prefixes, so 'prune 80% + distill + int8' reuses 'prune 80% + distill'.

    Holds at most ``limit`` built models and at most ``budget`` bytes of their tensors (default: 4
    copies of the task's model, at least 256 MiB), least recently used going first: a search proposes
    many distinct prefixes, and each held model costs its weights' memory (540 MB for a 135M-parameter
    FP32 LM, where 16 held models filled 12 GB)."""

    def __init__(self, task, limit: int = 16, budget: int | None = None) -> None:
        self.task = task
        self.limit = limit
        self.budget = budget if budget is not None else max(256 << 20, 4 * _tensor_bytes(task.model))
        self.models: OrderedDict[str, tuple[nn.Module, int]] = OrderedDict()

    def build(self, steps) -> nn.Module:
        model, done = self.task.model, []
        for step in steps:
            done.append(step.to_dict())
            key = json.dumps(done, sort_keys=True)
            if key not in self.models:
                built = apply(model, step, task=self.task)
                self.models[key] = (built, _tensor_bytes(built))
            self.models.move_to_end(key)
            model = self.models[key][0]
            while len(self.models) > 1 and (len(self.models) > self.limit or
                                            sum(b for _, b in self.models.values()) > self.budget):
                self.models.popitem(last=False)  # never the one just built: it is the most recent
        return copy.deepcopy(model) if steps else model


def _tensor_bytes(model: nn.Module) -> int:
    """Bytes of a model's distinct parameter and buffer storages (ties counted once)."""
    seen: dict[int, int] = {}
    for t in [*model.parameters(), *model.buffers()]:
        seen.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
    return sum(seen.values())


def jsonable(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists), so a fresh candidate equals a resumed one."""
    return json.loads(json.dumps(obj, default=str))


def reused(earlier: Candidate, fresh: dict[str, Any]) -> Candidate:
    """``earlier``'s measurement under the new id, label and recipe in ``fresh``, marked ``reused_from``.

    ``fresh`` holds what was built for this candidate (its stored model, layers, records, seconds):
    those are its own; the runtimes, quality and footprint are the earlier candidate's, not re-timed."""
    artifacts = {**earlier.artifacts, **fresh.pop("artifacts")}  # its own model file; the earlier ONNX
    update = {**fresh, "artifacts": artifacts, "reused_from": earlier.reused_from or earlier.id,
              "trial": None, "params": {}}
    return Candidate.model_validate(jsonable({**earlier.model_dump(mode="python"), "records": {}, **update}))


def measure_candidate(spec: CandidateSpec, cache: PrefixCache, task, out_dir: Path, goal: Goal,
                       settings: MeasureSettings, planner: RuntimePlanner | None = None) -> Candidate:
    """Build, store and measure ``spec`` (see the module docstring). ``planner`` None: every runtime
    the model fits, no reuse."""
    t0 = time.perf_counter()
    result: dict[str, Any] = {"id": spec.id, "label": spec.label, "recipe": spec.recipe.to_list(), "status": "failed"}
    timer = StageTimer()

    def done(**fields) -> Candidate:
        result.update(fields, seconds=round(time.perf_counter() - t0, 2), stage_seconds=timer.seconds)
        return Candidate.model_validate(jsonable(result))

    cdir = out_dir / "candidates" / spec.id
    try:
        with timer.stage("apply"):
            model = cache.build(spec.recipe.steps)
        with timer.stage("store"):
            fp = static_footprint(model, task, cdir / "model.safetensors")
        result["layers"] = fp.pop("layers")
        if records(model):  # e.g. sensitivity curves, lottery history: drawn by the report
            result["records"] = dump_records(records(model))  # JSON now, so a fresh candidate equals a resumed one
        # layer shapes, so a structurally pruned model reloads without pickle (prune.structure_of / rebuild)
        write_json(cdir / "structure.json", structure_of(float_reference(model)))
    except optuna.TrialPruned:  # a search's pruner stopped its fine-tuning: not a failure of the recipe
        raise
    except Exception as exc:  # a candidate that raises is recorded and the study goes on
        return done(reason=f"building the candidate failed: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}")
    artifacts = {"model": str((cdir / "model.safetensors").relative_to(out_dir)),
                 "structure": str((cdir / "structure.json").relative_to(out_dir))}
    names = candidate_runtimes(model, spec, settings.runtimes)
    reuse_key = None
    if planner is not None:
        reuse_key = ReuseKey.of(model, names, settings.key(goal))
        earlier = planner.recall(reuse_key)
        if earlier is not None:
            fresh = {k: result[k] for k in ("layers", "records") if k in result}
            fresh.update(id=spec.id, label=spec.label, recipe=result["recipe"], artifacts=artifacts,
                         seconds=round(time.perf_counter() - t0, 2), stage_seconds=timer.seconds)
            return reused(earlier, fresh)
        if not settings.all_runtimes:
            names, result["runtimes_skipped"] = planner.plan(model, spec, names)
    batch_sizes = settings.batch_sizes(goal)
    measured, runtimes = {}, {}
    for rt in names:
        with timer.stage(f"measure {rt}"):  # lower, check parity, time
            res = measure_runtime(model, rt, task, workdir=cdir / rt, batch_sizes=batch_sizes,
                                  threads=settings.threads, tolerances=settings.tolerances, repeats=settings.repeats)
        measured[rt] = res
        entry = {"status": res.status, "reason": res.reason, "precision": res.precision,
                 "latency_by_batch": res.latency, "parity": res.parity, "info": res.info}
        if res.status == "ok":
            lat = res.latency[str(goal.batch_size)]
            loads = res.lowered.artifact
            entry.update(latency_ms_p50=lat["p50_ms"], latency_ms_p90=lat["p90_ms"],
                         artifact_bytes=Path(loads).stat().st_size if loads is not None else fp["size_bytes"])
        runtimes[rt] = entry
    result["runtimes"] = runtimes
    if planner is not None:
        planner.observe(runtime_kind(model), {rt: e.get("latency_ms_p50") for rt, e in runtimes.items()},
                        batch_size=goal.batch_size, source=spec.id)
    ok = {rt: r for rt, r in measured.items() if r.status == "ok"}
    if not ok:
        reasons = "; ".join(f"{rt}: {r.reason}" for rt, r in measured.items())
        return done(reason=f"no runtime passed: {reasons}", footprint=fp)
    best = min(ok, key=lambda rt: ok[rt].latency[str(goal.batch_size)]["p50_ms"])
    res = ok[best]
    with timer.stage("evaluate"):
        quality = runtime_quality(res, task, goal.batch_size)
        fp.update(runtime_footprint(res, task, goal.batch_size))
        fp["deployed_bytes"] = runtimes[best]["artifact_bytes"]
    if res.lowered.artifact is not None:
        artifacts["onnx"] = str(Path(res.lowered.artifact).relative_to(out_dir))
    else:
        onnx_ok = [r for r in ok.values() if r.lowered.artifact is not None]
        if onnx_ok:
            artifacts["onnx"] = str(Path(onnx_ok[0].lowered.artifact).relative_to(out_dir))
    cand = done(status="ok", runtime=best, quality=quality["test"], quality_val=quality["val"], footprint=fp,
                artifacts=artifacts)
    if planner is not None:
        planner.remember(reuse_key, cand)
    return cand


