"""prune.weights with an explicit per-layer policy (distribution="explicit", layer_sparsity), and the
one-shot sensitivity allocation on its own (sensitivity_allocation) as the seed of a policy search.

The digits MLP (tests/conftest.py) has prunable layers "1" (64x64 = 4096 weights), "3" (32x64 = 2048)
and "5" (10x32 = 320); a layer at ratio r loses round(r * n) weights, counted here as exact zeros."""
import json
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
import yaml

import effdl
from effdl.compress.prune import prunable_layer_names, sensitivity_allocation
from effdl.compress.prune.weights import WeightPruneConfig
from effdl.core.errors import ConfigError
from effdl.core.records import records
from effdl.core.registry import config_from_dict

SIZES = {"1": 4096, "3": 2048, "5": 320}


def _zeros(model: nn.Module) -> dict[str, int]:
    mods = dict(model.named_modules())
    return {n: int((mods[n].weight == 0).sum()) for n in SIZES}


def _assert_policy(model: nn.Module, policy: dict[str, float]) -> None:
    """Each named layer at its ratio to one weight, every other prunable layer dense."""
    got = _zeros(model)
    for n, k in SIZES.items():
        assert abs(got[n] - round(policy.get(n, 0.0) * k)) <= 1, (n, got[n], policy.get(n, 0.0) * k)


def _tiny() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(fc1=nn.Linear(6, 5), act=nn.ReLU(), fc2=nn.Linear(5, 2)))


def test_prunable_layer_names(digits_task):
    assert prunable_layer_names(digits_task.model) == ["1", "3", "5"]
    assert prunable_layer_names(digits_task.model, protect_first_last=True) == ["3"]
    assert prunable_layer_names(digits_task.model, exclude=("5",)) == ["1", "3"]


def test_explicit_policy_gives_the_requested_per_layer_sparsities(digits_task):
    before = {k: v.clone() for k, v in digits_task.model.state_dict().items()}
    policy = {"1": 0.6, "5": 0.25}
    out = effdl.apply(digits_task, WeightPruneConfig(distribution="explicit", layer_sparsity=policy))
    assert _zeros(out) == {"1": round(0.6 * 4096), "3": 0, "5": 80}  # "3" not named: dense
    # the lowest-magnitude weights are the ones removed (l1), in each layer on its own
    w = digits_task.model[1].weight.abs().flatten()
    kept = out[1].weight.flatten() != 0
    assert w[~kept].max() <= w[kept].min()
    assert all(torch.equal(before[k], v) for k, v in digits_task.model.state_dict().items())  # input untouched


def test_explicit_ratio_keeps_one_weight_and_needs_no_data():
    model = _tiny()
    # fc2 has 10 weights: 0.99 would remove all 10, so 9 go (as the other distributions do); no task needed
    out = effdl.apply(model, WeightPruneConfig(distribution="explicit", layer_sparsity={"fc2": 0.99, "fc1": 0.5}))
    assert int((out.fc2.weight == 0).sum()) == 9 and int((out.fc1.weight == 0).sum()) == 15


def test_unknown_or_unprunable_layer_name_is_refused_with_the_valid_names():
    model = _tiny()
    with pytest.raises(ConfigError, match=r"'fc3', which is not a prunable layer.*Did you mean 'fc\d'\?.*Prunable layers: fc1, fc2"):
        effdl.apply(model, WeightPruneConfig(distribution="explicit", layer_sparsity={"fc3": 0.5}))
    with pytest.raises(ConfigError, match=r"'act'.*ReLU is not a Conv/Linear layer"):
        effdl.apply(model, WeightPruneConfig(distribution="explicit", layer_sparsity={"act": 0.5}))
    with pytest.raises(ConfigError, match=r"'fc1'.*left dense by 'exclude' or 'protect_first_last'"):
        effdl.apply(model, WeightPruneConfig(distribution="explicit", layer_sparsity={"fc1": 0.5}, exclude=("fc1",)))


@pytest.mark.parametrize("kw, match", [
    ({"distribution": "explicit"}, "needs layer_sparsity"),
    ({"layer_sparsity": {"fc1": 0.5}}, "only used by distribution 'explicit'"),
    ({"distribution": "explicit", "layer_sparsity": {"fc1": 1.0}}, "less than 1"),
    ({"distribution": "explicit", "layer_sparsity": {"fc1": -0.1}}, "greater than or equal to 0"),
    ({"distribution": "explicit", "layer_sparsity": [("fc1", 0.1), ("fc1", 0.2)]}, "more than once"),
    ({"distribution": "explicit", "layer_sparsity": {"fc1": 0.5}, "granularity": "n:m"}, "n:m"),
])
def test_bad_explicit_configs_refused_at_construction(kw, match):
    with pytest.raises(ConfigError, match=match):
        WeightPruneConfig(**kw)


def test_explicit_config_round_trips_as_a_mapping():
    cfg = WeightPruneConfig(distribution="explicit", layer_sparsity={"5": 0.25, "1": 0.6}, schedule="iterative")
    d = cfg.to_dict()
    assert d["layer_sparsity"] == {"1": 0.6, "5": 0.25}
    for back in (json.loads(json.dumps(d)), yaml.safe_load(yaml.safe_dump(d))):
        assert config_from_dict(back) == cfg
    # held as sorted pairs: the order a policy is written in does not matter, and the config hashes
    same = WeightPruneConfig(distribution="explicit", layer_sparsity=[("1", 0.6), ("5", 0.25)], schedule="iterative")
    assert same == cfg and hash(same) == hash(cfg) and cfg.policy == {"1": 0.6, "5": 0.25}


def test_sensitivity_allocation_reproduces_the_sensitivity_distribution(digits_task):
    ratios = (0.5, 0.7, 0.9)
    before = {k: v.clone() for k, v in digits_task.model.state_dict().items()}
    alloc = sensitivity_allocation(digits_task.model, digits_task, 0.7, ratios=ratios)
    assert all(torch.equal(before[k], v) for k, v in digits_task.model.state_dict().items())  # nothing pruned
    assert list(alloc) == ["1", "3", "5"] and all(r in (0.0, *ratios) for r in alloc.values())
    assert sum(alloc[n] * k for n, k in SIZES.items()) / sum(SIZES.values()) >= 0.7 - 1e-9
    sens = effdl.apply(digits_task, WeightPruneConfig(sparsity=0.7, distribution="sensitivity", sensitivity_ratios=ratios))
    expl = effdl.apply(digits_task, WeightPruneConfig(distribution="explicit", layer_sparsity=alloc))
    _assert_policy(sens, alloc)
    for n in SIZES:  # the same weights removed, not only as many
        assert torch.equal(sens.get_submodule(n).weight == 0, expl.get_submodule(n).weight == 0), n


def test_explicit_iterative_with_finetuning(digits_task):
    policy = {"1": 0.8, "3": 0.5}
    cfg = WeightPruneConfig(distribution="explicit", layer_sparsity=policy, schedule="iterative", rounds=2,
                            finetune_epochs=0.5)
    out = effdl.apply(digits_task, cfg)
    _assert_policy(out, policy)
    assert not torch.equal(out[5].weight, digits_task.model[5].weight)  # fine-tuned, yet dense
    points = records(out)["trajectory"].points
    cut = [p[1] for p in points if p[3] == "prune"]
    # round 1 of 2: each layer at 1 - sqrt(1 - s_l); the amount is the fraction of all prunable weights
    total = sum(SIZES.values())
    half = ((1 - 0.2 ** 0.5) * 4096 + (1 - 0.5 ** 0.5) * 2048) / total
    assert cut == pytest.approx([half, (0.8 * 4096 + 0.5 * 2048) / total])


def test_explicit_gradual(digits_task):
    policy = {"3": 0.7, "5": 0.4}
    cfg = WeightPruneConfig(distribution="explicit", layer_sparsity=policy, schedule="gradual", prune_epochs=0.5,
                            frequency=2, initial_sparsity=0.1, finetune_epochs=0.25)
    out = effdl.apply(digits_task, cfg)
    _assert_policy(out, policy)  # "1" trained throughout, never pruned
    assert out[1].weight.ne(0).all()
