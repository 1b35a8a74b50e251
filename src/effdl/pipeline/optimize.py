"""`optimize`: build candidates, measure each for real, compute the frontier, choose, export, report."""
from __future__ import annotations

import copy
import json
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch.nn as nn

from .. import __version__
from ..core.errors import ConfigError, suggest
from ..core.io import sha256_file, write_json
from ..compress.lowrank import structure_of  # pruned shapes + factorized layers
from ..core.records import records
from ..core.registry import apply
from ..metrics.env import environment
from ..metrics.measure import (
    Tolerances, measure_runtime, runtime_footprint, runtime_quality, static_footprint,
)
from .pareto import pareto_front
from .strategies import CandidateSpec, candidates_for
from .study import Study

SCHEMA_VERSION = 1
TARGETS = {"latency": "latency_ms_p50", "size": "size_bytes"}


class _PrefixCache:
    """Models built from recipe prefixes, so 'prune 80% + distill + int8' reuses 'prune 80% + distill'."""

    def __init__(self, task) -> None:
        self.task = task
        self.models: dict[str, nn.Module] = {"[]": task.model}

    def build(self, steps) -> nn.Module:
        model, done = self.task.model, []
        for step in steps:
            done.append(step.to_dict())
            key = json.dumps(done, sort_keys=True)
            if key not in self.models:
                self.models[key] = apply(model, step, task=self.task)
            model = self.models[key]
        return copy.deepcopy(model) if steps else model


def _runtimes_for(model: nn.Module, spec: CandidateSpec, allowed: tuple[str, ...] | None) -> list[str]:
    from ..deploy.runtimes import runtimes_for

    names = list(spec.runtimes) if spec.runtimes else runtimes_for(model)
    if allowed:
        names = [n for n in names if n in allowed] or names[:1]
    return names


def _measure_candidate(spec, cache, task, out_dir, *, batch_sizes, batch_size, threads, tolerances, allowed_runtimes):
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "id": spec.id, "label": spec.label, "recipe": spec.recipe.to_list(), "status": "failed", "reason": None,
        "runtime": None, "runtimes": {}, "quality": {}, "quality_val": {}, "footprint": {},
    }
    cdir = out_dir / "candidates" / spec.id
    try:
        model = cache.build(spec.recipe.steps)
        fp = static_footprint(model, task, cdir / "model.safetensors")
        result["layers"] = fp.pop("layers")
        if records(model):  # e.g. sensitivity curves, lottery history: drawn by the report
            result["records"] = records(model)
        # layer shapes, so a structurally pruned model reloads without pickle (prune.structure_of / rebuild)
        write_json(cdir / "structure.json", structure_of(getattr(model, "float_model", model)))
    except Exception as exc:  # a candidate that raises is recorded and the study goes on
        result["reason"] = f"building the candidate failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        result["seconds"] = round(time.perf_counter() - t0, 2)
        return result
    measured = {}
    for rt in _runtimes_for(model, spec, allowed_runtimes):
        res = measure_runtime(model, rt, task, workdir=cdir / rt, batch_sizes=batch_sizes, threads=threads, tolerances=tolerances)
        measured[rt] = res
        entry = res.to_dict()
        if res.status == "ok":
            lat = res.latency[str(batch_size)]
            entry.update(latency_ms_p50=lat["p50_ms"], latency_ms_p90=lat["p90_ms"])
        result["runtimes"][rt] = entry
    ok = {rt: r for rt, r in measured.items() if r.status == "ok"}
    if not ok:
        reasons = "; ".join(f"{rt}: {r.reason}" for rt, r in measured.items())
        result["reason"] = f"no runtime passed: {reasons}"
        result["footprint"] = fp
        result["seconds"] = round(time.perf_counter() - t0, 2)
        return result
    best = min(ok, key=lambda rt: ok[rt].latency[str(batch_size)]["p50_ms"])
    res = ok[best]
    quality = runtime_quality(res, task, batch_size)
    fp.update(runtime_footprint(res, task, batch_size))
    result.update(status="ok", runtime=best, quality=quality["test"], quality_val=quality["val"], footprint=fp)
    result["artifacts"] = {"model": str((cdir / "model.safetensors").relative_to(out_dir)),
                           "structure": str((cdir / "structure.json").relative_to(out_dir))}
    if res.lowered.artifact is not None:
        result["artifacts"]["onnx"] = str(Path(res.lowered.artifact).relative_to(out_dir))
    else:
        onnx_ok = [r for r in ok.values() if r.lowered.artifact is not None]
        if onnx_ok:
            result["artifacts"]["onnx"] = str(Path(onnx_ok[0].lowered.artifact).relative_to(out_dir))
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result


def _choose(cands, baseline, metric, max_drop, target, tie_tolerance):
    """The feasible candidate with the lowest target footprint.

    Latencies within ``tie_tolerance`` (relative) of the fastest, or within the fastest candidate's
    own p50-p90 spread, are measurement noise, not a real difference (a dense and a pruned FP32
    model run the same kernels), so those count as tied and the tie goes to the smaller file, then
    the higher quality. Sizes are exact: no tolerance.
    """
    key, other = TARGETS[target], TARGETS["size" if target == "latency" else "latency"]
    ok = [c for c in cands if c["status"] == "ok"]
    base_val = baseline["quality_val"][metric]
    feasible = [c for c in ok if base_val - c["quality_val"][metric] <= max_drop + 1e-12]
    if not feasible:
        return None, f"no candidate is within {max_drop * 100:.2f} points of the baseline's validation {metric}"
    best_c = min(feasible, key=lambda c: c["footprint"][key])
    lowest = best_c["footprint"][key]
    tol = tie_tolerance if target == "latency" else 0.0
    band = lowest * (1 + tol)
    if target == "latency":  # the fastest candidate's own p50-p90 spread is noise too
        band = max(band, best_c["footprint"].get("latency_ms_p90", lowest))
    tied = [c for c in feasible if c["footprint"][key] <= band]
    best = min(tied, key=lambda c: (c["footprint"][other], -c["quality_val"][metric]))
    drop = base_val - best["quality_val"][metric]
    why = (f"lowest {key} among {len(feasible)} candidates within {max_drop * 100:.2f} points of the baseline's "
           f"validation {metric} (its drop: {drop * 100:.2f} points)")
    if len(tied) > 1:
        why += (f"; {len(tied)} candidates were within the noise of the lowest {key} (max of {tol * 100:.0f}% "
                f"and the fastest's p90), so the lowest {other} among them was taken")
    return best["id"], why


def optimize(
    task,
    *,
    out_dir: str | Path,
    max_drop: float = 0.01,
    target: str = "latency",
    metric: str = "accuracy",
    batch_size: int = 1,
    large_batch: int = 32,
    strategy: str = "shrink-and-improve",
    candidates: list[CandidateSpec] | None = None,
    runtimes: tuple[str, ...] | None = None,
    threads: int = 2,
    tolerances: Tolerances = Tolerances(),
    latency_tie: float = 0.05,
    storage: str | None = None,
    model_spec: str = "python", data_spec: str = "python", command: str = "",
    on_event: Callable[[str, dict], None] | None = None,
) -> dict[str, Any]:
    """Measure every candidate of ``strategy`` on ``task``; return (and write) the results dict."""
    if target not in TARGETS:
        raise ConfigError(f"target must be one of {list(TARGETS)}, got {target!r}.{suggest(target, TARGETS)}")
    if not 0 <= max_drop < 1:
        raise ConfigError(f"max_drop is an absolute fraction in [0, 1) (0.01 = 1 point), got {max_drop}")
    if batch_size < 1 or large_batch < 1:
        raise ConfigError("batch sizes must be >= 1")
    if metric not in task.evaluate(task.model, "val"):
        raise ConfigError(f"metric {metric!r} is not one the task reports: {list(task.evaluate(task.model, 'val'))}")
    out_dir = Path(out_dir)
    specs = candidates if candidates is not None else candidates_for(strategy, model=task.model)
    batch_sizes = tuple(dict.fromkeys((batch_size, large_batch)))
    settings = {"batch_sizes": batch_sizes, "threads": threads, "runtimes_allowed": runtimes,
                "tolerances": tolerances.__dict__, "model": model_spec, "data": data_spec}
    study = Study(out_dir, storage)
    done = study.finished()
    cache = _PrefixCache(task)
    emit = on_event or (lambda ev, c: None)
    results = []
    for spec in specs:
        key = spec.key(settings)
        if key in done:
            results.append(done[key])
            emit("resumed", done[key])
            continue
        emit("start", {"id": spec.id, "label": spec.label})
        trial = study.start(key, spec.id)
        res = _measure_candidate(spec, cache, task, out_dir, batch_sizes=batch_sizes, batch_size=batch_size,
                                 threads=threads, tolerances=tolerances, allowed_runtimes=runtimes)
        values = (res["quality_val"][metric], res["footprint"][TARGETS[target]]) if res["status"] == "ok" else None
        study.finish(trial, res, values)
        results.append(res)
        emit("done", res)
    return finalize(results, out_dir=out_dir, goal=dict(metric=metric, max_drop=max_drop, target=target,
                    batch_size=batch_size, select_on="val", latency_tie=latency_tie), model_spec=model_spec, data_spec=data_spec,
                    command=command, threads=threads)


def finalize(results, *, out_dir, goal, model_spec, data_spec, command, threads) -> dict[str, Any]:
    """Frontiers, drops, the choice, the exported model and the report, from measured candidates."""
    from ..report import write_report

    metric = goal["metric"]
    baseline = results[0]
    if baseline["status"] != "ok":
        raise ConfigError(f"the baseline could not be measured: {baseline['reason']}")
    for c in results:
        if c["status"] == "ok":
            c["quality_drop"] = baseline["quality"][metric] - c["quality"][metric]
            c["quality_drop_val"] = baseline["quality_val"][metric] - c["quality_val"][metric]
    ok = [c for c in results if c["status"] == "ok"]
    frontier = {t: pareto_front([(c["id"], c["quality_val"][metric], c["footprint"][k]) for c in ok]) for t, k in TARGETS.items()}
    for c in results:
        c["frontier"] = {t: c["id"] in ids for t, ids in frontier.items()}
        c["on_frontier"] = c["frontier"][goal["target"]]
    chosen, reason = _choose(results, baseline, metric, goal["max_drop"], goal["target"], goal.get("latency_tie", 0.05))
    out = {
        "schema_version": SCHEMA_VERSION,
        "effdl_version": __version__,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command,
        "goal": goal,
        "model": model_spec,
        "data": data_spec,
        "environment": environment(threads=threads),
        "baseline": baseline["id"],
        "chosen": chosen,
        "chosen_reason": reason,
        "frontier": frontier,
        "candidates": results,
    }
    if chosen:
        out["export"] = export_chosen(out, Path(out_dir))
    write_json(Path(out_dir) / "results.json", out)
    write_report(out, out_dir)
    return out


def export_chosen(results: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Copy the chosen candidate's verified artifacts to out_dir/model with its recipe and sha256s."""
    cand = next(c for c in results["candidates"] if c["id"] == results["chosen"])
    mdir = out_dir / "model"
    staging = out_dir / ".model.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    files = {}
    names = {"model": "model.safetensors", "onnx": "model.onnx", "structure": "structure.json"}
    for kind, rel in cand.get("artifacts", {}).items():
        dst = staging / names[kind]
        shutil.copyfile(out_dir / rel, dst)
        files[dst.name] = sha256_file(dst)
    recipe = {"base_model": results["model"], "data": results["data"], "steps": cand["recipe"],
              "runtime": cand["runtime"], "candidate": cand["id"], "sha256": files, "effdl_version": results["effdl_version"]}
    write_json(staging / "recipe.json", recipe)
    shutil.rmtree(mdir, ignore_errors=True)
    staging.rename(mdir)  # the exported folder appears whole or not at all
    return {"dir": "model", "files": sorted(files) + ["recipe.json"]}
