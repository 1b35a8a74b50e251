"""quantize.mixed: allocation under the budget (hand-computed and brute force), sensitivity, storage."""
import itertools
import random

import pytest
import torch

import effdl
from effdl.compress.quantize.mixed import (
    MixedConfig,
    MixedPrecisionModel,
    allocate,
    load_mixed,
)
from effdl.core.errors import ConfigError
from effdl.core.records import records

LINEARS = {"1": 64 * 64, "3": 32 * 64, "5": 10 * 32}


def _bits_costs(sizes, choices=(2, 4, 8)):
    return {n: {b: n_ * b for b in choices} for n, n_ in sizes.items()}


def test_hand_computed_allocation_uses_the_budget_exactly():
    # 100 + 100 + 200 weights, budget 4 bits/weight = 1600 bits. Feasible assignments include
    # all-4 (1600 bits, 2 + 0.1 + 0.2 = 2.3), a8/b4/c2 (1600, 0 + 0.1 + 3 = 3.1), a8/b2/c2 (1400, 3.5),
    # a4/b2/c4 (1400, 2.7); a8 with c4 costs 1800 or more. The optimum is all-4, exactly on the budget.
    costs = _bits_costs({"a": 100, "b": 100, "c": 200})
    sens = {"a": {2: 5.0, 4: 2.0, 8: 0.0}, "b": {2: 0.5, 4: 0.1, 8: 0.0}, "c": {2: 3.0, 4: 0.2, 8: 0.0}}
    bits = allocate(costs, sens, 1600, "dp")
    assert bits == {"a": 4, "b": 4, "c": 4}
    assert sum(costs[n][b] for n, b in bits.items()) == 1600


def test_more_sensitive_layer_gets_more_bits():
    # two layers of 100 weights, 5 bits/weight = 1000 bits: (8, 2) 1000 bits -> 0 + 1 = 1;
    # (4, 4) -> 5 + 0.5 = 5.5; (2, 8) -> 10. The sensitive layer x gets 8 bits.
    costs = _bits_costs({"x": 100, "y": 100})
    sens = {"x": {2: 10.0, 4: 5.0, 8: 0.0}, "y": {2: 1.0, 4: 0.5, 8: 0.0}}
    for method in ("dp", "greedy"):
        assert allocate(costs, sens, 1000, method) == {"x": 8, "y": 2}


def test_dp_is_optimal_against_brute_force_and_greedy_within_budget():
    rng = random.Random(0)
    for _ in range(20):
        sizes = {f"l{i}": rng.randint(1, 50) for i in range(5)}
        costs = _bits_costs(sizes)
        sens = {n: {2: rng.random() * 3, 4: rng.random(), 8: rng.random() * 0.1} for n in sizes}
        budget = rng.randint(2 * sum(sizes.values()), 8 * sum(sizes.values()))
        best = min((sum(sens[n][b] for n, b in zip(sizes, combo)), combo)
                   for combo in itertools.product((2, 4, 8), repeat=5)
                   if sum(costs[n][b] for n, b in zip(sizes, combo)) <= budget)
        got = allocate(costs, sens, budget, "dp")
        assert sum(sens[n][b] for n, b in got.items()) == pytest.approx(best[0])
        greedy = allocate(costs, sens, budget, "greedy")
        assert sum(costs[n][b] for n, b in greedy.items()) <= budget


def test_budget_below_the_smallest_size_is_refused():
    with pytest.raises(ConfigError, match="below the smallest possible size"):
        allocate(_bits_costs({"a": 10}), {"a": {2: 1.0, 4: 0.5, 8: 0.0}}, 19, "dp")


def test_on_digits_bits_budget(digits_task, tmp_path):
    from effdl.deploy.storage import load_compact, model_tensors, save_compact

    cfg = MixedConfig(budget_bits_per_weight=3.0, keep_first_last=False)
    q = effdl.apply(digits_task, cfg)
    assert isinstance(q, MixedPrecisionModel)
    rec = records(q)["quant_sensitivity"]
    total = sum(LINEARS.values())
    assert rec.budget == 3.0 * total and rec.cost <= rec.budget
    assert rec.cost == sum(LINEARS[n] * b for n, b in q.bits.items())
    for n, b in q.bits.items():  # stored packed at the layer's own width
        assert q.parts[n]["packed"].numel() == LINEARS[n] * b // 8
        assert rec.layers[n].bits == b
        s = rec.layers[n].sensitivity
        assert set(s) == {"2", "4", "8"}
    save_compact(model_tensors(q), tmp_path / "m.safetensors")
    fresh = effdl.zoo.build("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(64, 32))
    back = load_mixed(fresh, load_compact(tmp_path / "m.safetensors"), q.bits, cfg)
    x = digits_task.example_input(8)
    assert torch.equal(back(x), q(x))


def test_on_digits_bytes_budget_with_fixed_ends(digits_task):
    # layers 1 and 5 fixed at 8 bits: 4096 + 320 code bytes + 4 * (64 + 10) scale bytes = 4712 bytes;
    # layer 3 (2048 weights, 32 scales): 640 / 1152 / 2176 bytes at 2 / 4 / 8 bits. Budget 6000:
    # 8 bits does not fit (6888), 4 bits does (5864), exactly as stored.
    cfg = MixedConfig(budget_bytes=6000, keep_first_last=True)
    q = effdl.apply(digits_task, cfg)
    assert q.bits["1"] == 8 and q.bits["5"] == 8 and q.bits["3"] in (2, 4)
    stored = sum(t.numel() * t.element_size() for p in q.parts.values() for t in p.values())
    assert stored == {2: 4712 + 640, 4: 4712 + 1152}[q.bits["3"]]
    assert records(q)["quant_sensitivity"].cost == stored
    with pytest.raises(ConfigError, match="below the smallest possible size"):
        effdl.apply(digits_task, MixedConfig(budget_bytes=3000, keep_first_last=True))


def test_hessian_measure_is_positive_and_falls_with_width(digits_task):
    q = effdl.apply(digits_task, MixedConfig(budget_bits_per_weight=4.0, measure="hessian", keep_first_last=False,
                                             hutchinson_samples=4, num_batches=2))
    layers = records(q)["quant_sensitivity"].layers
    for v in layers.values():
        assert v.hessian_trace > 0
        s = v.sensitivity
        assert s["2"] > s["4"] > s["8"] >= 0


@pytest.mark.parametrize("kw, phrase", [
    ({}, "exactly one budget"),
    ({"budget_bits_per_weight": 4.0, "budget_bytes": 100}, "exactly one budget"),
    ({"budget_bits_per_weight": 4.0, "choices": (1, 4)}, "quantize.binary"),
    ({"budget_bits_per_weight": 4.0, "choices": (4, 16)}, "2..8-bit"),
    ({"budget_bits_per_weight": 4.0, "choices": (2.5,)}, "whole number"),
    ({"budget_bits_per_weight": 0.0}, "greater than 0"),
])
def test_bad_config(kw, phrase):
    with pytest.raises(ConfigError, match=phrase):
        MixedConfig(**kw)


def test_configs_round_trip_through_json():
    import json

    from effdl.compress.quantize.binary import BinaryConfig, TernaryConfig
    from effdl.compress.quantize.qat import QATConfig
    from effdl.core.registry import config_from_dict

    for cfg in (MixedConfig(budget_bytes=1000, choices=[8, 2, 4]), QATConfig(bits=4, granularity="group", group_size=16),
                BinaryConfig(epochs=1), TernaryConfig(threshold=0.5)):
        back = config_from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert back == cfg
    assert MixedConfig(budget_bytes=1000, choices=[8, 2, 4]).choices == (2, 4, 8)
