"""Sensitivity analysis (real digits model) and the least-drop allocation (hand-checked)."""
import copy
import itertools

import pytest
import torch
import torch.nn as nn

import effdl
from effdl.compress.prune.distribution import allocate, sensitivity_analysis
from effdl.compress.prune.weights import WeightPruneConfig, layer_sparsity
from effdl.core.errors import ConfigError


def test_allocation_hand_checked():
    # sizes a=200, b=100, target 0.6 -> at least 180 weights pruned. Feasible choices (drop):
    # a.9+b0 = 180 (0.05), a.5+b.9 = 190 (0.34), a.9+b.5 = 230 (0.07), a.9+b.9 (0.35): best a.9, b0.
    curves = {"a": [(0.5, 0.04), (0.9, 0.05)], "b": [(0.5, 0.02), (0.9, 0.30)]}
    assert allocate(curves, {"a": 200, "b": 100}, 0.6) == {"a": 0.9, "b": 0.0}
    # target 0.3 -> 90 weights: a.5 (100 pruned, 0.04) beats b.9 (90, 0.30) and a.5+b.5 (0.06).
    assert allocate(curves, {"a": 200, "b": 100}, 0.3) == {"a": 0.5, "b": 0.0}
    assert allocate(curves, {"a": 200, "b": 100}, 0.0) == {"a": 0.0, "b": 0.0}


def test_allocation_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    ratios = (0.3, 0.5, 0.7, 0.9)
    sizes = {"a": 50, "b": 120, "c": 30, "d": 300}
    for _ in range(20):
        curves = {n: [(r, float(d)) for r, d in zip(ratios, torch.rand(4, generator=g).sort().values)] for n in sizes}
        target = float(torch.rand(1, generator=g)) * 0.85
        best = min(
            (sum(d for _, d in combo), combo)
            for combo in itertools.product(*[[(0.0, 0.0)] + curves[n] for n in sizes])
            if sum(r * s for (r, _), s in zip(combo, sizes.values())) >= target * sum(sizes.values()) - 1e-9
        )
        got = allocate(curves, sizes, target)
        assert sum(r * s for r, s in zip(got.values(), sizes.values())) >= target * sum(sizes.values()) - 1e-9
        assert sum(dict(curves[n] + [(0.0, 0.0)])[got[n]] for n in sizes) == pytest.approx(best[0])


def test_allocation_bad_inputs():
    with pytest.raises(ConfigError, match="cannot be reached with ratios up to 0.5"):
        allocate({"a": [(0.5, 0.1)]}, {"a": 10}, 0.7)
    with pytest.raises(ConfigError, match="no sensitivity curve"):
        allocate({"a": [(0.5, 0.1)]}, {"a": 10, "b": 10}, 0.2)
    with pytest.raises(ConfigError, match=r"in \[0, 1\)"):
        allocate({"a": [(0.5, 0.1)]}, {"a": 10}, 1.0)


def test_sensitivity_curves_on_digits(digits_task):
    model = copy.deepcopy(digits_task.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    curves = sensitivity_analysis(model, digits_task, (0.5, 0.9), "l1", "unstructured")
    assert list(curves) == ["1", "3", "5"] and all([r for r, _ in c] == [0.5, 0.9] for c in curves.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # restored exactly
    # one point by hand: layer "5" (the classifier) alone at 90% by magnitude
    base = digits_task.evaluate(model, "val")["accuracy"]
    pruned = copy.deepcopy(model)
    w = pruned[5].weight
    with torch.no_grad():
        w.view(-1)[w.abs().flatten().argsort()[: round(0.9 * w.numel())]] = 0.0
    assert curves["5"][1][1] == pytest.approx(base - digits_task.evaluate(pruned, "val")["accuracy"])
    with pytest.raises(ConfigError, match="sensitivity ratio"):
        sensitivity_analysis(model, digits_task, (0.5, 1.0))


def test_sensitivity_distribution_through_the_technique(digits_task):
    cfg = WeightPruneConfig(sparsity=0.7, distribution="sensitivity", sensitivity_ratios=(0.5, 0.7, 0.9))
    out = effdl.apply(digits_task, cfg)
    per = layer_sparsity(out)
    sizes = {n: m.weight.numel() for n, m in out.named_modules() if isinstance(m, nn.Linear)}
    assert sum(per[n] * sizes[n] for n in sizes) / sum(sizes.values()) >= 0.7 - 1e-9
    # each layer at 0 or one of the measured ratios (to the nearest whole weight)
    assert all(min(abs(per[n] - r) for r in (0.0, 0.5, 0.7, 0.9)) <= 1 / sizes[n] for n in sizes)
