"""Trained baselines: zoo models trained on a data set with a built-in recipe, cached on disk.

Cache: ``cache_dir()/baselines/<model>-<data>-<key>.safetensors`` plus a JSON sidecar with the
recipe, accuracies, sha256 and training time. ``<key>`` hashes everything that changes the result
(model, knobs, data, split seed, recipe), so a changed recipe never loads stale weights. The
sha256 is checked before parsing; an unusable cache file is retrained with a warning.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from ..core.errors import ArtifactError, ModelError, suggest
from ..core.io import load_state_into, load_weights, save_tensors, sha256_file, write_json
from ..core.tasks import Classification
from ..data import Splits, cache_dir, load_data
from ..data.factory import is_factory_spec
from .recipes import Recipe, recipe_for
from .registry import ZOO, build

log = logging.getLogger(__name__)
FORMAT = 1  # bump when the cache layout or training loop changes meaning


def _cache_key(model_name: str, data_name: str, seed: int, recipe: Recipe) -> str:
    ident = {"format": FORMAT, "model": model_name, "knobs": ZOO[model_name].knobs, "data": data_name,
             "seed": seed, "recipe": recipe.as_dict()}
    if is_factory_spec(data_name):  # user data: retrain when the factory's file changes
        file = data_name.rpartition(":")[0]
        ident["factory_sha256"] = sha256_file(file) if Path(file).is_file() else None
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]


def baseline_files(model_name: str, data_name: str, *, seed: int = 0) -> tuple[Path, Path]:
    """(weights, sidecar) paths of a trained baseline in the cache (they may not exist yet)."""
    if model_name not in ZOO:
        raise ModelError(f"unknown zoo model {model_name!r}: use one of {sorted(ZOO)}." + suggest(model_name, ZOO))
    key = _cache_key(model_name, data_name, seed, recipe_for(model_name, data_name))
    slug = re.sub(r"[^A-Za-z0-9_.]+", "_", data_name).strip("_")[-40:]  # factory paths -> a safe name
    stem = cache_dir() / "baselines" / f"{model_name}-{slug}-{key}"
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


@contextlib.contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _load_cached(model_name: str, splits: Splits, weights: Path, sidecar: Path) -> nn.Module | None:
    if not (weights.is_file() and sidecar.is_file()):
        return None
    try:
        meta = json.loads(sidecar.read_text())
        if sha256_file(weights) != meta.get("sha256"):
            raise ArtifactError("its sha256 does not match the one recorded when it was written")
        model = build(model_name, input_shape=splits.input_shape, num_classes=splits.num_classes)
        load_state_into(model, load_weights(weights), str(weights))
    except (ArtifactError, OSError, ValueError) as exc:  # ValueError covers bad JSON
        warnings.warn(f"cached baseline {str(weights)!r} is unusable ({exc}); retraining it", stacklevel=3)
        return None
    log.info("loaded cached baseline %s", weights.name)
    return model.eval()


def _train(model_name: str, splits: Splits, seed: int, recipe: Recipe, weights: Path, sidecar: Path) -> nn.Module:
    log.info("training the %s baseline on %s (%s epochs; once, then cached in %s)",
             model_name, splits.name, recipe.epochs, weights.parent)
    with _threads(recipe.threads):
        torch.manual_seed(seed)
        model = build(model_name, input_shape=splits.input_shape, num_classes=splits.num_classes)
        task = Classification(model, splits.train, splits.val, splits.test, num_classes=splits.num_classes,
                                   batch_size=recipe.batch_size, seed=seed)
        start = time.perf_counter()
        task.train(model, epochs=recipe.epochs, lr=recipe.lr, optimizer=recipe.optimizer,
                   weight_decay=recipe.weight_decay)
        seconds = time.perf_counter() - start
        test, val = task.evaluate(model, "test"), task.evaluate(model, "val")
    # Weights first, sidecar (with their sha256) last: a run killed in between leaves a cache
    # entry that fails the sha256 check and is retrained, never one that is silently trusted.
    # One metadata key only: safetensors writes the metadata map in hash order, so two keys would
    # make identical weights produce different bytes (and sha256) from run to run.
    save_tensors(model.state_dict(), weights, metadata={"effdl_baseline": f"{model_name} on {splits.name}"})
    write_json(sidecar, {
        "model": model_name, "data": splits.name, "seed": seed, "knobs": ZOO[model_name].knobs,
        "recipe": recipe.as_dict(), "test_accuracy": test["accuracy"], "val_accuracy": val["accuracy"],
        "test_metrics": test, "params": sum(p.numel() for p in model.parameters()),
        "sha256": sha256_file(weights), "seconds": round(seconds, 2), "threads": recipe.threads,
        "torch": torch.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    log.info("trained baseline %s in %.1f s: test accuracy %.4f", weights.name, seconds, test["accuracy"])
    return model.eval()


def trained(model_name: str, data_name: str, *, seed: int = 0, retrain: bool = False) -> nn.Module:
    """Zoo model ``model_name`` trained on ``data_name`` (split seed and init seed ``seed``) with its
    built-in recipe, in eval mode. Trains once (well under a minute), then loads from the cache."""
    weights, sidecar = baseline_files(model_name, data_name, seed=seed)
    splits = load_data(data_name, seed=seed)
    if not retrain:
        cached = _load_cached(model_name, splits, weights, sidecar)
        if cached is not None:
            return cached
    return _train(model_name, splits, seed, recipe_for(model_name, data_name), weights, sidecar)
