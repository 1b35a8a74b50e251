"""Model zoo: small model families with width/depth knobs, and cached trained baselines.

``build(name, input_shape=..., num_classes=..., **knobs)`` gives a fresh model;
``trained(model, data)`` a trained one; ``load_model(spec, data)`` resolves CLI specs.
``load_text_model(spec)`` loads a pretrained text model (``PRETRAINED_TEXT``, or hf:PATH) offline.
"""
from __future__ import annotations

from .loading import load_model
from .pretrained import baseline_files, trained
from .recipes import Recipe, recipe_for
from .registry import ZOO, ZooEntry, build
from .text import PRETRAINED_TEXT, TextModel, load_text_model

__all__ = ["PRETRAINED_TEXT", "ZOO", "Recipe", "TextModel", "ZooEntry", "baseline_files", "build", "load_model",
           "load_text_model", "recipe_for", "trained"]
