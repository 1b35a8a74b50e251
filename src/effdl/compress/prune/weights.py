"""prune.weights: unstructured / semi-structured weight pruning, every saliency x granularity x
distribution x schedule (see saliency.py, granularity.py, distribution.py, schedule.py).

Masks are attached as parametrizations for the whole run (fine-tuning and gradual training see
pruned weights as exact zeros and cannot regrow them) and folded into plain weights at the end.

Already-sparse models: existing exact zeros count toward the target (they score lowest and are
removed first), so pruning a 50%-sparse model to 60% removes 10% more; asking for less sparsity than
the model already has removes nothing and revives nothing. Applying the same config twice is a
no-op on the weights (idempotent).

Explicit policy (``distribution="explicit"``): ``layer_sparsity`` gives each named prunable layer its
ratio; prunable layers not named stay dense and ``sparsity`` is not used (the amount removed is what
the policy says). The schedules apply per layer, as ``uniform`` applies them to every layer: the
iterative round r takes layer l to 1 - (1 - s_l)^(r/R), the gradual ramp takes it from
min(initial_sparsity, s_l) to s_l along the same cubic. N:M (whose ratio is fixed) does not take one.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Annotated, Literal

import torch
import torch.nn as nn
from pydantic import Field, field_serializer, field_validator, model_validator

from ...core.config import TechniqueConfig
from ...core.records import Record, attach
from ...core.forms import refuse_quantized
from ...core.registry import register
from . import masks as masklib
from . import saliency as sal
from .distribution import build_masks, explicit_ratios, prunable_layers, sensitivity_analysis
from .granularity import Granularity
from .schedule import epochs_to_steps, iterative_targets, train_gradual
from .trajectory import Trajectory

log = logging.getLogger(__name__)


class SensitivityRecord(Record):
    """Per layer: [(ratio, quality drop)] when that layer alone is pruned to each ratio (the
    ``distribution="sensitivity"`` curves; the report's sensitivity plot)."""

    key = "sensitivity"
    root = "curves"
    curves: dict[str, list[tuple[float, float]]]


class WeightPruneConfig(TechniqueConfig):
    """Weight pruning: saliency, granularity, distribution and schedule."""

    sparsity: float = Field(0.5, ge=0.0, lt=1.0, description="fraction of the prunable weights set to zero (N:M: must be 1 - n/m; not used by distribution 'explicit')")
    saliency: Literal["l1", "l2", "random", "taylor", "obd"] = Field("l1", description="what to remove first")
    obd_method: Literal["auto", "exact", "fisher", "hutchinson"] = Field("auto", description="Hessian diagonal for obd")
    saliency_batches: int = Field(4, ge=1, le=1000, description="training batches for the data saliencies")
    granularity: Literal["unstructured", "n:m", "block"] = "unstructured"
    n: int = Field(2, ge=1, description="N of N:M (weights kept per group)")
    m: int = Field(4, ge=2, description="M of N:M (group length along the input dimension)")
    block: tuple[int, int] = Field((1, 4), description="block shape (rows, cols) for granularity 'block'")
    distribution: Literal["global", "uniform", "sensitivity", "erk", "explicit"] = Field("global", description="how much sparsity where ('explicit': layer_sparsity)")
    layer_sparsity: tuple[tuple[str, Annotated[float, Field(ge=0.0, lt=1.0)]], ...] = Field(
        (), description="distribution 'explicit': {prunable layer name: sparsity in [0, 1)}; layers not named stay dense "
                        "(given and serialised as a mapping, held as sorted (name, sparsity) pairs)")
    sensitivity_ratios: tuple[float, ...] = Field((0.3, 0.5, 0.7, 0.8, 0.9, 0.95), description="ratios of the sensitivity analysis")
    schedule: Literal["oneshot", "iterative", "gradual"] = "oneshot"
    rounds: int = Field(3, ge=1, le=50, description="pruning rounds for the iterative schedule")
    initial_sparsity: float = Field(0.0, ge=0.0, lt=1.0, description="gradual: s_i at the first pruning step")
    start_epoch: float = Field(0.0, ge=0.0, description="gradual: t0, in epochs of training")
    prune_epochs: float = Field(2.0, gt=0.0, description="gradual: n*dt, epochs over which sparsity ramps to the target")
    frequency: int = Field(10, ge=1, description="gradual: dt, optimizer steps between mask updates")
    finetune_epochs: float = Field(0.0, ge=0.0, description="fine-tuning epochs after pruning (per round when iterative; after the ramp when gradual)")
    lr: float = Field(1e-3, gt=0.0)
    exclude: tuple[str, ...] = Field((), description="module-name glob patterns left dense")
    protect_first_last: bool = Field(False, description="keep the first prunable layer (first conv) and the classifier dense")
    seed: int = Field(0, ge=0, description="seed of the random saliency and the Hutchinson probes (training uses the Task's seed)")

    @field_validator("layer_sparsity", mode="before")
    @classmethod
    def _pairs(cls, value):
        # a mapping (how users write it, and how to_dict stores it) becomes (name, sparsity) pairs
        return list(value.items()) if isinstance(value, Mapping) else value

    @field_validator("layer_sparsity")
    @classmethod
    def _sorted_unique(cls, pairs):
        names = [n for n, _ in pairs]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"layer_sparsity names {dup} more than once")
        # sorted: equal policies are equal configs, whatever order they were written in (YAML sorts keys)
        return tuple(sorted(pairs))

    @field_serializer("layer_sparsity")
    def _mapping(self, pairs):
        return dict(pairs)

    @property
    def policy(self) -> dict[str, float]:
        """``layer_sparsity`` as a dict."""
        return dict(self.layer_sparsity)

    @model_validator(mode="after")
    def _consistent(self):
        Granularity(self.granularity, self.n, self.m, self.block)  # N >= M, bad blocks
        if self.granularity == "n:m" and abs(self.sparsity - (1 - self.n / self.m)) > 1e-9:
            raise ValueError(f"{self.n}:{self.m} sparsity is fixed at {1 - self.n / self.m}: set sparsity={1 - self.n / self.m}")
        if self.distribution == "explicit":
            if not self.layer_sparsity:
                raise ValueError("distribution 'explicit' needs layer_sparsity={layer name: sparsity, ...} "
                                 "(effdl.compress.prune.prunable_layer_names(model) lists the names)")
            if self.granularity == "n:m":
                raise ValueError("distribution 'explicit' does not apply to granularity 'n:m' (its sparsity is fixed at 1 - n/m)")
        elif self.layer_sparsity:
            raise ValueError(f"layer_sparsity is only used by distribution 'explicit', not {self.distribution!r}: "
                             "set distribution='explicit' or drop layer_sparsity")
        if self.distribution != "explicit" and self.initial_sparsity > self.sparsity:
            raise ValueError("initial_sparsity must not exceed sparsity (the gradual schedule only prunes)")
        if any(not 0.0 <= r < 1.0 for r in self.sensitivity_ratios) or not self.sensitivity_ratios:
            raise ValueError("sensitivity_ratios must be non-empty and each in [0, 1)")
        return self


def _needs(cfg: WeightPruneConfig) -> str:
    data = (cfg.finetune_epochs > 0 or cfg.schedule == "gradual" or cfg.distribution == "sensitivity"
            or sal.needs_data(cfg.saliency))
    return "training" if data else "nothing"


class _Pruner:
    """Recomputes the masks of a model at a target sparsity (scores -> distribution -> masks)."""

    def __init__(self, model: nn.Module, cfg: WeightPruneConfig, task) -> None:
        self.model, self.cfg, self.task = model, cfg, task
        self.gran = Granularity(cfg.granularity, cfg.n, cfg.m, tuple(cfg.block))
        self.names = [n for n, _ in prunable_layers(model, cfg.exclude, cfg.protect_first_last)]
        for name, m in self._layers(model):
            self.gran.check(name, m.weight)
        # explicit: every prunable layer's final ratio (unnamed: 0.0); unknown names refused here,
        # before any data is touched
        self.policy = (explicit_ratios(cfg.policy, self._layers(model), model)
                       if cfg.distribution == "explicit" else None)
        self.curves = None
        if cfg.distribution == "sensitivity" and self.gran.kind != "n:m":
            self.curves = sensitivity_analysis(model, task, cfg.sensitivity_ratios, cfg.saliency, self.gran,
                                               exclude=cfg.exclude, protect_first_last=cfg.protect_first_last,
                                               seed=cfg.seed)
            log.info("sensitivity analysis of %d layers; drop with each pruned alone to its largest ratio: %s", len(self.curves), ", ".join(f"{n} {max(c)[1]:.4g}" for n, c in self.curves.items() if c))

    def _layers(self, model):
        mods = dict(model.named_modules())
        return [(n, mods[n]) for n in self.names]

    def amount(self, ratios: dict[str, float]) -> float:
        """Fraction of the prunable weights that per-layer ``ratios`` remove."""
        sizes = {n: m.weight.numel() for n, m in self._layers(self.model)}
        return sum(ratios[n] * k for n, k in sizes.items()) / sum(sizes.values())

    def explicit_round(self, r: int, rounds: int) -> dict[str, float]:
        """Explicit policy at iterative round r of R: layer l at 1 - (1 - s_l)^(r/R) (exactly s_l at R)."""
        return {n: s if r == rounds else 1.0 - (1.0 - s) ** (r / rounds) for n, s in self.policy.items()}

    def explicit_ramp(self, progress: float) -> dict[str, float]:
        """Explicit policy ``progress`` (0..1) along the gradual ramp: layer l from min(initial, s_l) to s_l."""
        if progress >= 1.0:
            return dict(self.policy)
        out = {}
        for n, s in self.policy.items():
            s0 = min(self.cfg.initial_sparsity, s)
            out[n] = s0 + progress * (s - s0)
        return out

    def __call__(self, target: float, policy: dict[str, float] | None = None) -> None:
        """Masks at overall ``target`` (explicit: at the per-layer ``policy``, default the final one)."""
        cfg = self.cfg
        scored = self.model
        if sal.needs_data(cfg.saliency) and masklib.masks_of(self.model):
            scored = masklib.fold(copy.deepcopy(self.model))  # gradients need plain leaf weights
        with torch.enable_grad():
            scores = sal.compute(scored, self.names, cfg.saliency, task=self.task, n_batches=cfg.saliency_batches,
                                 seed=cfg.seed, obd_method=cfg.obd_method)
        with torch.no_grad():
            layers = self._layers(self.model)  # effective (masked) weights: pruned ones are zero
            new = build_masks(layers, scores, target, self.gran, cfg.distribution,
                              sal.group_reduce(cfg.saliency), self.curves, policy or self.policy)
        masklib.update(self.model, new, monotone=True)


#: the number the gradual schedule ramps to for an explicit policy (its progress, scaled; any value in (0, 1))
_RAMP = 0.5


@register("prune.weights", WeightPruneConfig, needs=_needs, models=("cnn", "mlp", "encoder", "decoder"))
def prune_weights(model: nn.Module, cfg: WeightPruneConfig, task) -> nn.Module:
    """Weight pruning (unstructured, N:M, blocks; any saliency, distribution and schedule)."""
    refuse_quantized(model, cfg.technique)
    pruner = _Pruner(model, cfg, task)
    try:
        if cfg.schedule == "gradual":
            per_epoch = task.steps_per_epoch()
            start = epochs_to_steps(cfg.start_epoch, per_epoch)
            ramp = max(cfg.frequency, epochs_to_steps(cfg.prune_epochs, per_epoch))
            n = max(1, ramp // cfg.frequency)
            total = start + n * cfg.frequency + 1 + epochs_to_steps(cfg.finetune_epochs, per_epoch)
            final, initial, prune = cfg.sparsity, cfg.initial_sparsity, pruner
            if pruner.policy is not None:
                # the ramp carries its progress: from 0 to _RAMP, so s_t / _RAMP runs 0 -> 1 along the cubic
                final, initial = _RAMP, 0.0

                def prune(s_t: float) -> None:
                    pruner(s_t, pruner.explicit_ramp(s_t / _RAMP))
            train_gradual(model, task, prune, final=final, initial=initial, start=start,
                          n=n, every=cfg.frequency, total_steps=total, lr=cfg.lr)
        else:
            rounds = cfg.rounds if cfg.schedule == "iterative" else 1
            if pruner.policy is not None:
                steps = [(pruner.amount(p), p) for p in (pruner.explicit_round(r, rounds) for r in range(1, rounds + 1))]
            else:
                targets = iterative_targets(cfg.sparsity, cfg.rounds) if cfg.schedule == "iterative" else [cfg.sparsity]
                steps = [(t, None) for t in targets]
            path = Trajectory(task if cfg.finetune_epochs > 0 else None, "weights")
            path.mark(model, 0.0, "start")
            for target, policy in steps:
                pruner(target, policy)
                path.mark(model, target, "prune")
                if cfg.finetune_epochs > 0:
                    task.train(model, epochs=cfg.finetune_epochs, lr=cfg.lr)
                    path.mark(model, target, "finetune", cfg.finetune_epochs)
            path.attach(model)
    finally:
        masklib.fold(model)
    if pruner.curves is not None:  # for the report's sensitivity plot
        attach(model, SensitivityRecord(curves={name: list(pts) for name, pts in pruner.curves.items()}))
    return model.eval()


layer_sparsity = masklib.layer_sparsity
