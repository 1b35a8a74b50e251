import json

import pytest
import torch
import torch.nn as nn
import yaml

import effdl
from effdl.core.errors import ConfigError
from effdl.core.registry import config_from_dict, get, schema, techniques
from effdl.pipeline.recipe import Recipe


def test_builtins_registered():
    names = set(techniques())
    assert {"prune.magnitude", "quantize.ptq", "learn.distill"} <= names


@pytest.mark.parametrize("name", ["prune.magnitude", "quantize.ptq", "learn.distill"])
def test_config_round_trip_json_and_yaml(name):
    cfg = get(name).config()
    d = cfg.to_dict()
    assert d["technique"] == name
    assert config_from_dict(json.loads(json.dumps(d))) == cfg
    assert config_from_dict(yaml.safe_load(yaml.safe_dump(d))) == cfg


def test_configs_are_frozen():
    cfg = effdl.prune.Magnitude(sparsity=0.3)
    with pytest.raises(Exception):
        cfg.sparsity = 0.9  # type: ignore[misc]


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"unknown key 'sparsty'.*Did you mean 'sparsity'"):
        effdl.prune.Magnitude(sparsty=0.5)


@pytest.mark.parametrize("value", [1.0, -0.1, 1.5])
def test_sparsity_range(value):
    with pytest.raises(ConfigError, match="sparsity"):
        effdl.prune.Magnitude(sparsity=value)


def test_unknown_technique_suggests():
    with pytest.raises(ConfigError, match="Did you mean 'prune.magnitude'"):
        config_from_dict({"technique": "prune.magnitud"})


def test_schema_lists_defaults_and_constraints():
    rows = {r["name"]: r for r in schema(get("prune.magnitude"))}
    assert rows["sparsity"]["default"] == 0.5
    assert rows["sparsity"]["constraints"] == {"minimum": 0.0, "exclusiveMaximum": 1.0}


def test_apply_does_not_mutate_and_inplace_does():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = effdl.apply(model, effdl.prune.Magnitude(sparsity=0.5))
    assert pruned is not model
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    same = effdl.apply(model, effdl.prune.Magnitude(sparsity=0.5), inplace=True)
    zeros = int((model[0].weight == 0).sum() + (model[2].weight == 0).sum())
    assert same is model and zeros == 40  # global: half of the 64 + 16 weights


def test_apply_without_task_when_data_needed():
    model = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(ConfigError, match="needs training data"):
        effdl.apply(model, effdl.prune.Magnitude(sparsity=0.5, finetune_epochs=1))


def test_recipe_yaml_round_trip(tmp_path):
    r = Recipe((effdl.prune.Magnitude(sparsity=0.8), effdl.learn.Distill(temperature=2.0)), model="zoo:lenet5", data="mnist")
    p = tmp_path / "r.yaml"
    p.write_text(r.dump_yaml())
    assert Recipe.load(p) == r
    assert r.label() == "prune.magnitude(sparsity=0.8) + learn.distill(temperature=2.0)"


def test_recipe_bad_keys(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("stepz: []\n")
    with pytest.raises(ConfigError, match="'steps'"):
        Recipe.load(p)


def test_shipped_recipes_parse():
    from pathlib import Path

    files = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))
    assert files
    for f in files:
        r = Recipe.load(f)
        assert r.steps and r.model and r.data
