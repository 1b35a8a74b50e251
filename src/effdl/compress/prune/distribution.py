"""Distribution: how much sparsity goes where.

- ``global``: one threshold over the scores of all prunable layers (pooled), never emptying a layer.
- ``uniform``: the same ratio in every layer.
- ``sensitivity``: each layer pruned alone at several ratios, the validation accuracy drop measured
  with the Task (``sensitivity_analysis``), then per-layer ratios chosen to reach the overall target
  with the least summed predicted drop (``allocate``: a dynamic program over pruned-weight counts,
  exact when the model has at most ``DP_UNITS`` prunable weights, else counted in units of N/DP_UNITS).
- ``erk``: Erdos-Renyi-Kernel densities (Evci et al. 2020), from ``erk.erk_densities``.
- ``explicit``: the caller's per-layer ratios (a searched policy, or ``sensitivity_allocation``'s
  dict); prunable layers not named stay dense. Names are checked against the prunable layers
  (``explicit_ratios``), so a typo is an error, never a silently dense layer.

Every per-layer ratio keeps at least one weight of its layer (a ratio that would round to the whole
layer removes all but one), as ``global`` does.

The target is a fraction of the *prunable* weights: excluded and protected layers stay dense and do
not count. ``protect_first_last`` keeps the first prunable layer (the first conv of a CNN) and the
last one (the classifier) dense.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn as nn

from ...core.errors import ConfigError, suggest
from ...core.scope import weighted_layers
from .granularity import Granularity, check_ratio, groups, layer_mask, prune_lowest

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
DISTRIBUTIONS = ("global", "uniform", "sensitivity", "erk", "explicit")
DP_UNITS = 4000
Layers = list[tuple[str, nn.Module]]
Curves = dict[str, list[tuple[float, float]]]


def prunable_layers(model: nn.Module, exclude=(), protect_first_last: bool = False) -> Layers:
    """Conv/Linear layers to prune (a shared weight appears once; ``exclude`` patterns must match)."""
    layers = weighted_layers(model, PRUNABLE, exclude)
    if protect_first_last:
        layers = layers[1:-1]
    if not layers:
        raise ConfigError("the model has no Conv/Linear layer left to prune (check 'exclude' and 'protect_first_last')")
    bad = [name for name, m in layers if not bool(torch.isfinite(m.weight).all())]
    if bad:
        raise ConfigError(f"{'layer' if len(bad) == 1 else 'layers'} {', '.join(map(repr, bad))} "
                          f"{'has' if len(bad) == 1 else 'have'} NaN/Inf weights, which have no magnitude to rank: "
                          "fix the model before pruning (retrain, or lower the learning rate)")
    return layers


def prunable_layer_names(model: nn.Module, exclude=(), protect_first_last: bool = False) -> list[str]:
    """Names of the layers ``prune.weights`` prunes with these settings (the keys an explicit
    ``layer_sparsity`` may use), in module order."""
    return [n for n, _ in prunable_layers(model, exclude, protect_first_last)]


def explicit_ratios(policy: dict[str, float], layers: Layers, model: nn.Module | None = None) -> dict[str, float]:
    """Ratio of every prunable layer under an explicit policy: the named ratio, 0.0 for the others.

    A name that is not a prunable layer is a ConfigError naming it, the closest prunable layers and,
    when ``model`` is given, why a module of that name is not prunable (excluded or protected, no
    Conv/Linear weight)."""
    names = [n for n, _ in layers]
    unknown = [n for n in policy if n not in names]
    if unknown:
        bad = unknown[0]
        why = ""
        if model is not None and bad in dict(model.named_modules()):
            m = dict(model.named_modules())[bad]
            why = (f" ({type(m).__name__} is not a Conv/Linear layer)" if not isinstance(m, PRUNABLE)
                   else " (it is left dense by 'exclude' or 'protect_first_last')")
        raise ConfigError(f"layer_sparsity names {bad!r}, which is not a prunable layer of this model{why}."
                          f"{suggest(bad, names)} Prunable layers: {', '.join(names)}"
                          + (f" (also unknown: {', '.join(map(repr, unknown[1:]))})" if len(unknown) > 1 else ""))
    for n, r in policy.items():
        check_ratio(r, f"sparsity of layer {n!r}")
    return {n: float(policy.get(n, 0.0)) for n in names}


def check_distribution(kind: str) -> None:
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"unknown distribution {kind!r}: use one of {DISTRIBUTIONS}.{suggest(kind, DISTRIBUTIONS)}")


def erk_ratios(layers: Layers, target: float) -> dict[str, float]:
    try:
        from .erk import erk_densities
    except ImportError:  # the ERK module ships separately
        raise ConfigError("distribution 'erk' needs effdl.compress.prune.erk, which is not installed") from None
    dens = erk_densities({n: tuple(m.weight.shape) for n, m in layers}, 1.0 - target)
    return {n: 1.0 - d for n, d in dens.items()}


def global_masks(layers: Layers, scores: dict[str, torch.Tensor], target: float, gran: Granularity,
                 reduce: str = "sum") -> dict[str, torch.Tensor]:
    """One pooled threshold; a layer the threshold would empty keeps its best unit (with a warning)."""
    parts = []
    for name, m in layers:
        gran.check(name, m.weight)
        parts.append(groups(scores[name], m.weight, gran, reduce))
    total = sum(m.weight.numel() for _, m in layers)
    pruned = prune_lowest(torch.cat([g for g, _, _ in parts]), torch.cat([s for _, _, s in parts]),
                          int(round(target * total)))
    masks, offset = {}, 0
    for (name, m), (g, index, _) in zip(layers, parts):
        p = pruned[offset : offset + g.numel()].clone()
        offset += g.numel()
        if p.all():
            # An emptied layer disconnects the network: keep its highest-scoring unit.
            warnings.warn(f"global pruning would empty {name!r}; keeping its largest weight", stacklevel=3)
            p[g.argmax()] = False
        masks[name] = (~p[index]).reshape(m.weight.shape)
    return masks


def sensitivity_ratios(curves: Curves, layers: Layers, target: float) -> dict[str, float]:
    """Per-layer ratios of ``distribution="sensitivity"`` at ``target`` from the curves of
    ``sensitivity_analysis`` (``allocate`` over the layers' weight counts)."""
    return allocate(curves, {n: m.weight.numel() for n, m in layers}, target)


def layer_ratios(kind: str, layers: Layers, target: float, curves: Curves | None = None,
                 policy: dict[str, float] | None = None) -> dict[str, float]:
    """Per-layer ratios of the non-global distributions (``policy``: the explicit one's ratios)."""
    if kind == "uniform":
        return {n: target for n, _ in layers}
    if kind == "erk":
        return erk_ratios(layers, target)
    if kind == "sensitivity":
        if curves is None:
            raise ConfigError("distribution 'sensitivity' needs the curves of sensitivity_analysis(...)")
        return sensitivity_ratios(curves, layers, target)
    if kind == "explicit":
        if policy is None:
            raise ConfigError("distribution 'explicit' needs the per-layer ratios (layer_sparsity)")
        return explicit_ratios(policy, layers)
    raise ConfigError(f"distribution {kind!r} has no per-layer ratios (use global_masks)")


def build_masks(layers: Layers, scores: dict[str, torch.Tensor], target: float, gran: Granularity,
                distribution: str = "global", reduce: str = "sum", curves: Curves | None = None,
                policy: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
    """Keep-masks for every layer at overall ``target`` sparsity (N:M: each layer at 1 - N/M;
    ``explicit``: each layer at its ``policy`` ratio, ``target`` unused)."""
    check_ratio(target)
    check_distribution(distribution)
    if gran.kind == "n:m":
        return {n: layer_mask(n, scores[n], m.weight, 0.0, gran, reduce) for n, m in layers}
    if distribution == "global":
        return global_masks(layers, scores, target, gran, reduce)
    ratios = layer_ratios(distribution, layers, target, curves, policy)
    return {n: layer_mask(n, scores[n], m.weight, keep_one(ratios[n], m.weight.numel()), gran, reduce)
            for n, m in layers}


def keep_one(ratio: float, numel: int) -> float:
    """``ratio``, lowered so that a layer of ``numel`` weights keeps at least one."""
    return min(ratio, 1 - 1 / numel)


@torch.no_grad()
def sensitivity_analysis(model: nn.Module, task, ratios=(0.3, 0.5, 0.7, 0.8, 0.9, 0.95), saliency: str = "l1",
                         granularity: Granularity | str = "unstructured", *, exclude=(), protect_first_last=False,
                         split: str = "val", seed: int = 0) -> Curves:
    """Prune each layer alone at each ratio, measure the drop of the Task's accuracy on ``split``.

    Returns {layer: [(ratio, drop), ...]} with drop = base accuracy - pruned accuracy (fractions);
    the model is restored exactly after each measurement.
    """
    from . import saliency as sal

    ratios = sorted(float(r) for r in ratios)
    if not ratios:
        raise ConfigError("sensitivity analysis needs at least one ratio, e.g. (0.3, 0.5, 0.7, 0.9)")
    for r in ratios:
        check_ratio(r, "a sensitivity ratio")
    gran = Granularity(granularity) if isinstance(granularity, str) else granularity
    layers = prunable_layers(model, exclude, protect_first_last)
    names = [n for n, _ in layers]
    with torch.enable_grad():
        scores = sal.compute(model, names, saliency, task=task, seed=seed)
    spec = task.metric
    base = task.evaluate(model, split)[spec.name]
    curves: Curves = {}
    for name, m in layers:
        saved = m.weight.detach().clone()
        points = []
        for r in ratios:
            mask = layer_mask(name, scores[name], m.weight, r, gran, sal.group_reduce(saliency))
            m.weight.masked_fill_(~mask, 0.0)
            points.append((r, spec.drop(base, task.evaluate(model, split)[spec.name])))
            m.weight.copy_(saved)
        curves[name] = points
    return curves


def sensitivity_allocation(model: nn.Module, task, sparsity: float, ratios=(0.3, 0.5, 0.7, 0.8, 0.9, 0.95),
                           saliency: str = "l1", granularity: Granularity | str = "unstructured", *, exclude=(),
                           protect_first_last: bool = False, split: str = "val", seed: int = 0) -> dict[str, float]:
    """The one-shot ``distribution="sensitivity"`` allocation at overall ``sparsity``, without pruning:
    {prunable layer: ratio}, each 0.0 or one of ``ratios`` (lowered to keep one weight in a layer too
    small for it). ``prune.weights`` with ``distribution="explicit", layer_sparsity=<this dict>`` and
    the same saliency, granularity and scope gives the masks ``distribution="sensitivity"`` gives at
    this target (oneshot). Runs ``sensitivity_analysis`` (one evaluation per layer and ratio); the
    model is left unchanged."""
    check_ratio(sparsity)
    curves = sensitivity_analysis(model, task, ratios, saliency, granularity, exclude=exclude,
                                  protect_first_last=protect_first_last, split=split, seed=seed)
    layers = prunable_layers(model, exclude, protect_first_last)
    alloc = sensitivity_ratios(curves, layers, sparsity)
    return {n: keep_one(alloc[n], m.weight.numel()) for n, m in layers}


def allocate(curves: Curves, sizes: dict[str, int], target: float) -> dict[str, float]:
    """Per-layer ratios (0 or one of the measured ones) with sum(r_l n_l) >= target * N and the least
    sum of drops. Multiple-choice knapsack solved by dynamic programming over pruned counts."""
    check_ratio(target)
    names = list(sizes)
    missing = [n for n in names if n not in curves]
    if missing:
        raise ConfigError(f"no sensitivity curve for layers {missing}: re-run sensitivity_analysis on this model")
    total = sum(sizes.values())
    units = min(total, DP_UNITS)
    unit = total / units
    need = math.ceil(target * total / unit - 1e-9)
    inf = float("inf")
    dp = np.full(need + 1, inf)
    dp[0] = 0.0
    choices = []  # per layer: (chosen option, previous cell) per cell
    for n in names:
        options = [(0.0, 0.0)] + [(float(r), float(d)) for r, d in curves[n]]
        new = np.full(need + 1, inf)
        pick = np.zeros(need + 1, dtype=int)
        prev = np.zeros(need + 1, dtype=int)
        for o, (r, d) in enumerate(options):
            c = int(math.floor(r * sizes[n] / unit + 1e-9))  # floor: the real count never falls short
            cand = np.full(need + 1, inf)
            src = np.arange(need + 1)
            if c < need:
                cand[c:need] = dp[: need - c] + d
                src[c:need] = np.arange(need - c)
            lo = max(0, need - c)
            j = lo + int(np.argmin(dp[lo:]))
            cand[need], src[need] = dp[j] + d, j
            better = cand < new
            new[better], pick[better], prev[better] = cand[better], o, src[better]
        dp = new
        choices.append((options, pick, prev))
    if not np.isfinite(dp[need]):
        top = max(r for c in curves.values() for r, _ in c)
        raise ConfigError(f"target sparsity {target} cannot be reached with ratios up to {top}: add higher ratios")
    out, j = {}, need
    for n, (options, pick, prev) in zip(reversed(names), reversed(choices)):
        out[n] = options[pick[j]][0]
        j = prev[j]
    return {n: out[n] for n in names}
