"""Model zoo: small model families with width/depth knobs, and cached trained baselines.

``build(name, input_shape=..., num_classes=..., **knobs)`` gives a fresh model;
``trained(model, data)`` a trained one; ``load_model(spec, data)`` resolves CLI specs.
"""
from __future__ import annotations

from .loading import load_model
from .pretrained import baseline_files, trained
from .recipes import Recipe, recipe_for
from .registry import ZOO, ZooEntry, build

__all__ = ["ZOO", "Recipe", "ZooEntry", "baseline_files", "build", "load_model", "recipe_for", "trained"]
