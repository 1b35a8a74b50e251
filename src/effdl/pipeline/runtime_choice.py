"""Which runtimes a candidate is lowered to, from cheap evidence; and reuse of identical measurements.

Lowering, parity-checking and timing a model on every runtime it fits is most of a candidate's cost,
yet on one model and machine the runtimes keep their order across candidates of the same runtime
kind: if ONNX Runtime was 1.4x slower than torch.compile on the dense LeNet and on its 50%-pruned
copy, it will not win on the 80%-pruned one either (they run the same dense kernels).

The rule of ``RuntimePlanner.plan`` (per runtime kind: "float", "int8-static", "int8-dynamic"):

* with no earlier candidate of this kind measured, try every runtime (the baseline measures all
  float runtimes, the first INT8 candidate all INT8 ones);
* otherwise try a runtime if, on at least one earlier candidate of this kind, its p50 latency at the
  goal's batch size was within ``MARGIN`` of the fastest runtime this candidate could also use;
  skip it, with the numbers, if it was measured on some earlier candidate and was slower than that
  on every one;
* always try a runtime with no latency on any earlier candidate of this kind (never measured, or it
  only failed: a lowering or parity failure on another model is no evidence about this one), and a
  form-specific runtime (``FORM_SPECIFIC``: sparse kernels on sparse layers, bf16 on bf16 weights)
  whenever it applies, since its speed depends on this model's form, not on the earlier ones';
* runtimes named in the candidate's spec are all tried (the caller asked for them).

``ReuseKey`` / ``RuntimePlanner.recall``: a built model whose weights, form, runtime list and
measurement settings equal an earlier candidate's in this process is not measured again; the caller
copies the earlier measurement and marks it ``reused_from``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
import torch.nn as nn

from ..core.compressed import CompressedModel, Int8Model, runtime_kind, weight_format
from ..core.io import state_digest
from .results import Candidate
from .strategies import CandidateSpec

#: a runtime within this factor of the fastest on some earlier candidate of its kind may still win
#: (timing noise on a shared machine is ~10-20%, and a change of form moves runtimes a little)
MARGIN = 1.25
#: runtimes whose speed depends on this model's form (how sparse its Linear layers are, bf16 weights),
#: so the latencies of earlier candidates say nothing about them; tried whenever they apply
FORM_SPECIFIC = frozenset({"eager-sparse", "bf16"})


def candidate_runtimes(model: nn.Module, spec: CandidateSpec, allowed: tuple[str, ...] | None) -> list[str]:
    """The runtimes a candidate may be lowered to: those named in its spec, else every runtime its
    model fits, kept to ``allowed`` (MeasureSettings.runtimes) when set, falling back to the first one
    when none of them is allowed."""
    from ..deploy.runtimes import runtimes_for

    names = list(spec.runtimes) if spec.runtimes else runtimes_for(model)
    if allowed:
        names = [n for n in names if n in allowed] or names[:1]
    return names


@dataclass(frozen=True)
class Observation:
    """One measured candidate: the p50 latency (ms) of each runtime that passed, and those that failed."""

    source: str  # the candidate's id
    batch_size: int  # the batch size of the latencies (the goal's)
    latency_ms: Mapping[str, float]
    failed: tuple[str, ...] = ()


def _form(model: nn.Module) -> dict[str, Any]:
    """What a compressed model's runtimes read besides its state_dict: the stored tensors, and for an
    INT8 model its quantization settings and torch INT8 graph. Two PTQ models of the same weights with
    min-max and percentile calibration have equal state_dicts, yet ORT calibrates each its own way."""
    if not isinstance(model, CompressedModel):
        return {}
    form: dict[str, Any] = {"stored": _tensors_digest(model.storage_tensors())}
    config = getattr(model, "config", None)
    if hasattr(config, "to_dict"):
        form["config"] = config.to_dict()
    if isinstance(model, Int8Model):
        spec = model.int8_spec()
        form.update(settings=spec.settings, calibration=spec.calibration_method, percentile=spec.percentile,
                    per_channel=spec.per_channel, input_ranges=spec.input_ranges,
                    quantized=list(spec.quantized_modules), kept_float=list(spec.kept_float),
                    torch_int8=state_digest(spec.torch_int8))
    return form


def _tensors_digest(tensors: Mapping[str, Any]) -> str:
    holder, other = nn.Module(), {}
    for i, (name, t) in enumerate(sorted(tensors.items())):
        if isinstance(t, torch.Tensor):
            holder.register_buffer(f"t{i}", t)
        else:
            other[name] = repr(t)
    return f"{state_digest(holder)}|{','.join(sorted(tensors))}|{json.dumps(other, sort_keys=True)}"


@dataclass(frozen=True)
class ReuseKey:
    """What makes two measurements the same: the model's weights and form (stored tensors, INT8
    settings), its runtime list and every measurement setting (MeasureSettings.key)."""

    digest: str

    @classmethod
    def of(cls, model: nn.Module, runtimes: list[str], settings_key: Mapping[str, Any]) -> "ReuseKey":
        blob = json.dumps({"state": state_digest(model), "class": type(model).__qualname__,
                           "kind": runtime_kind(model), "format": weight_format(model), "form": _form(model),
                           "runtimes": list(runtimes), "settings": settings_key}, sort_keys=True, default=str)
        return cls(hashlib.sha256(blob.encode()).hexdigest())


@dataclass
class RuntimePlanner:
    """Chooses the runtimes each candidate of one optimize run is lowered to (see the module docstring),
    and remembers measured candidates by ReuseKey. One planner per run: its evidence is of one machine,
    one task and one set of measurement settings."""

    margin: float = MARGIN
    history: dict[str, list[Observation]] = field(default_factory=dict)  # runtime kind -> observations
    measured: dict[ReuseKey, Candidate] = field(default_factory=dict)

    def observe(self, kind: str, latencies: Mapping[str, float | None], *, batch_size: int = 1,
                source: str = "") -> None:
        """Record a measured candidate of runtime ``kind``: runtime -> p50 ms, None where it failed."""
        ok = {rt: float(ms) for rt, ms in latencies.items() if ms is not None}
        failed = tuple(rt for rt, ms in latencies.items() if ms is None)
        self.history.setdefault(kind, []).append(Observation(source, batch_size, ok, failed))

    def plan(self, model: nn.Module, spec: CandidateSpec, allowed: list[str]) -> tuple[list[str], dict[str, str]]:
        """The runtimes of ``allowed`` to try for ``model`` (order kept), and the skipped ones with why."""
        if spec.runtimes:
            return list(allowed), {}
        kind = runtime_kind(model)
        seen = self.history.get(kind, [])
        general = [rt for rt in allowed if rt not in FORM_SPECIFIC]
        tried, skipped = [], {}
        for rt in allowed:
            why = None if rt in FORM_SPECIFIC else self._why_skip(rt, general, seen, kind)
            if why is None:
                tried.append(rt)
            else:
                skipped[rt] = why
        return tried, skipped

    def _why_skip(self, rt: str, general: list[str], seen: list[Observation], kind: str) -> str | None:
        """A sentence with the numbers when ``rt`` was slower than ``margin`` x the fastest on every
        earlier candidate it ran on; None when it may win (or nothing is known)."""
        ratios = []  # (ratio, its latency, the fastest's name, the fastest's latency, observation)
        for obs in seen:
            if rt not in obs.latency_ms:
                continue
            others = {o: obs.latency_ms[o] for o in general if o in obs.latency_ms}
            if len(others) < 2:  # measured alone (e.g. the eager-only baseline): no evidence of its rank
                continue
            fastest = min(others, key=others.get)
            ratios.append((obs.latency_ms[rt] / others[fastest], obs.latency_ms[rt], fastest, others[fastest], obs))
        if not ratios or min(r[0] for r in ratios) <= self.margin:
            return None
        ratio, ms, fastest, best_ms, obs = min(ratios, key=lambda r: r[0])
        n = len(ratios)
        where = f"the {n} earlier {kind} candidates" if n > 1 else f"the earlier {kind} candidate"
        at_best = "at best " if n > 1 else ""
        return (f"{rt} was {at_best}{ratio:.2f}x slower than {fastest} on {where} "
                f"({ms:.3g} vs {best_ms:.3g} ms at batch {obs.batch_size}, {obs.source}); "
                f"tried only within {self.margin:g}x of the fastest")

    def recall(self, key: ReuseKey) -> Candidate | None:
        """The earlier candidate measured under ``key``, if any."""
        return self.measured.get(key)

    def remember(self, key: ReuseKey, cand: Candidate) -> None:
        """Hold a measured candidate for reuse (only verified ones: a failure may be transient)."""
        if cand.ok:
            self.measured.setdefault(key, cand)
