"""Compression-policy search (AMC / HAQ style): per-layer sparsities searched on measured numbers,
seeded with the one-shot sensitivity allocation effdl already computes.

A policy space is an ordinary SearchSpace whose ``prune.weights`` step has
``distribution: explicit`` and ``layer_sparsity: {per_layer: {range: [lo, hi]}}`` (and, for
keep-FP32 decisions, ``quantize.ptq`` with ``exclude: {per_layer: {choices: [false, true]}}``).
``sensitivity_seed`` turns the sensitivity allocation at a target sparsity into that space's trial
parameters, so the search starts from the allocation and keeps every measured policy (the whole
frontier), not just the first one that meets the goal.
"""
from __future__ import annotations

from typing import Any

from ..compress.prune import sensitivity_allocation
from ..core.errors import ConfigError
from .space import FloatRange, PerLayer, SearchSpace


def _policy_slot(space: SearchSpace):
    for slot in space.slots:
        for option in slot.options:
            if option.technique != "prune.weights":
                continue
            for name, dist in option.searched:
                if name == "layer_sparsity" and isinstance(dist, PerLayer) and isinstance(dist.each, FloatRange):
                    return slot, option, dist.each
    raise ConfigError("the space has no per-layer sparsity policy to seed: add a prune.weights step with "
                      "distribution: explicit and layer_sparsity: {per_layer: {range: [lo, hi]}}")


def sensitivity_seed(task, space: SearchSpace, sparsity: float, **analysis: Any) -> dict[str, Any]:
    """Trial parameters (for ``optuna.Study.enqueue_trial``) that give ``space``'s per-layer sparsity
    step the one-shot sensitivity allocation of ``task.model`` at ``sparsity`` (each layer's ratio
    clamped into the space's range). Other parameters are left to the sampler. ``analysis`` goes to
    ``compress.prune.sensitivity_allocation`` (ratios, saliency, exclude, protect_first_last)."""
    slot, option, each = _policy_slot(space)
    fixed = dict(option.fixed)
    for key in ("exclude", "protect_first_last"):
        if key in fixed:
            analysis.setdefault(key, fixed[key])
    allocation = sensitivity_allocation(task.model, task, sparsity, **analysis)
    params: dict[str, Any] = {f"prune.weights.layer_sparsity.{layer}": min(max(ratio, each.low), each.high)
                              for layer, ratio in allocation.items()}
    if len(slot.options) > 1 or slot.optional:
        params[slot.name] = option.technique
    return params
