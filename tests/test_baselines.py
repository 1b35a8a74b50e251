"""Trained baselines: accuracy targets on the TEST split, the weights cache, corrupt-cache recovery."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from effdl.core.errors import ModelError
from effdl.core.io import sha256_file
from effdl.core.tasks import ImageClassification
from effdl.data import DATASETS, load_data
from effdl.zoo import ZOO, baseline_files, load_model, recipe_for, trained


def test_accuracy(model, splits) -> float:
    task = ImageClassification(model, splits.train, splits.val, splits.test, num_classes=splits.num_classes)
    return task.evaluate(model, "test")["accuracy"]


test_accuracy.__test__ = False  # a helper, not a test


# Targets from the brief; measured here: 97.5%, 92.7%, 98.1%. The MNIST-1D paper reports 94% for
# its CNN on its 4,000/1,000 split (Greydanus 2020); Han et al. 2015 report 99.2% for LeNet-5 on
# the full 60,000-image MNIST, which this 3,600-image split cannot reach.
TARGETS = [("lenet5", "mnist", 0.97), ("mnist1d_cnn", "mnist1d", 0.90), ("mlp", "digits", 0.95)]


@pytest.mark.slow
@pytest.mark.parametrize("model_name, data_name, target", TARGETS)
def test_trained_baseline_reaches_target_on_test_split(model_name, data_name, target):
    # Default cache on purpose: other test files reuse these baselines instead of retraining.
    model = trained(model_name, data_name)
    splits = load_data(data_name)
    acc = test_accuracy(model, splits)
    assert acc >= target
    meta = json.loads(baseline_files(model_name, data_name)[1].read_text())
    assert meta["test_accuracy"] == pytest.approx(acc, abs=1e-6)  # the sidecar is honest
    assert meta["recipe"] == recipe_for(model_name, data_name).as_dict()


def test_cache_hit_does_not_retrain_and_retrain_is_reproducible(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("EFFDL_CACHE", str(tmp_path))
    threads = torch.get_num_threads()
    weights, sidecar = baseline_files("mlp", "digits")
    assert weights.parent == tmp_path / "baselines" and not weights.exists()

    first = trained("mlp", "digits")
    assert torch.get_num_threads() == threads  # the recipe's thread count is restored afterwards
    meta = json.loads(sidecar.read_text())
    assert meta["sha256"] == sha256_file(weights)
    assert {"recipe", "test_accuracy", "seconds", "seed"} <= set(meta)
    stamps = (weights.stat().st_mtime_ns, sidecar.stat().st_mtime_ns)

    with caplog.at_level(logging.INFO, logger="effdl.zoo.pretrained"):
        second = trained("mlp", "digits")
    assert (weights.stat().st_mtime_ns, sidecar.stat().st_mtime_ns) == stamps
    assert any("loaded cached baseline" in r.message for r in caplog.records)
    assert not any("trained baseline" in r.message for r in caplog.records)
    assert all(torch.equal(v, second.state_dict()[k]) for k, v in first.state_dict().items())
    assert not second.training

    # Seeded end to end: training again gives the same bytes (same machine, same thread count).
    trained("mlp", "digits", retrain=True)
    assert sha256_file(weights) == meta["sha256"]
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_other_seed_is_another_cache_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFDL_CACHE", str(tmp_path))
    assert baseline_files("mlp", "digits", seed=0) != baseline_files("mlp", "digits", seed=1)
    assert baseline_files("mlp", "digits")[0] != baseline_files("lenet300_100", "digits")[0]


@pytest.mark.parametrize("damage", ["flip", "truncate", "sidecar"])
def test_corrupt_cache_is_retrained_with_a_warning(tmp_path, monkeypatch, damage):
    monkeypatch.setenv("EFFDL_CACHE", str(tmp_path))
    reference = trained("mlp", "digits")
    weights, sidecar = baseline_files("mlp", "digits")
    good = sha256_file(weights)
    data = bytearray(weights.read_bytes())
    if damage == "flip":  # a flipped bit in a tensor: still parses, only the sha256 catches it
        data[-100] ^= 0x01
        weights.write_bytes(bytes(data))
    elif damage == "truncate":
        weights.write_bytes(bytes(data[: len(data) // 2]))
    else:
        sidecar.write_text("{not json")
    with pytest.warns(UserWarning, match="unusable.*retraining"):
        model = trained("mlp", "digits")
    assert sha256_file(weights) == good == json.loads(sidecar.read_text())["sha256"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in reference.state_dict().items())


def test_load_model_zoo_spec_returns_trained_baseline():
    digits = load_data("digits")
    model = load_model("zoo:mlp", digits)  # default cache: reuses the target test's baseline
    assert test_accuracy(model, digits) >= 0.95
    with pytest.raises(ModelError, match="Did you mean 'mlp'"):
        load_model("zoo:mpl", digits)


def test_every_model_and_data_pair_has_a_recipe():
    for model_name in ZOO:
        for data_name in DATASETS:
            recipe = recipe_for(model_name, data_name)
            assert recipe.epochs > 0 and recipe.lr > 0 and recipe.optimizer in ("adam", "sgd")
    with pytest.raises(ModelError, match="Did you mean 'lenet5'"):
        trained("lenet6", "mnist")
