"""``load_model``: a model from a CLI-style spec (``zoo:<name>`` or ``path/to/file.py:factory``)."""
from __future__ import annotations

import torch.nn as nn

from ..core.errors import ModelError, suggest
from ..core.io import call_factory, load_state_into, load_weights
from ..data import Splits
from .pretrained import trained
from .registry import ZOO, build


def load_model(spec: str, data: Splits, weights: str | None = None, allow_pickle: bool = False) -> nn.Module:
    """``zoo:<name>``: the trained baseline for ``data`` or, with ``weights``, the zoo
    architecture built for ``data``'s shape with those weights. ``path/to/file.py:factory``:
    ``factory()`` must return an nn.Module; ``weights`` (safetensors; pickle only with
    ``allow_pickle``) are loaded into it. On synthetic (latency-only) data a zoo model keeps its
    random initialisation: there is nothing real to train on. The model is returned in eval mode."""
    if not isinstance(spec, str):
        raise ModelError(f"model spec must be a string, got {type(spec).__name__}")
    if spec.startswith("zoo:"):
        name = spec[len("zoo:"):]
        if name not in ZOO:
            raise ModelError(f"unknown zoo model {name!r}: use one of {sorted(ZOO)}." + suggest(name, ZOO))
        if weights is None and not data.synthetic:
            return trained(name, data.name, seed=data.seed)
        model = build(name, input_shape=data.input_shape, num_classes=data.num_classes)
    else:
        if ":" not in spec or not spec.rpartition(":")[0].endswith(".py"):
            hint = f" Did you mean 'zoo:{spec}'?" if spec in ZOO else suggest(spec, [f"zoo:{n}" for n in ZOO])
            raise ModelError(f"model spec {spec!r} must be zoo:<name> (one of {sorted(ZOO)}) "
                             f"or path/to/file.py:factory.{hint}")
        model = call_factory(spec, "model factory", ModelError)
        if not isinstance(model, nn.Module):
            raise ModelError(f"{spec}: the factory must return a torch nn.Module, got {type(model).__name__}")
    if weights is not None:
        load_state_into(model, load_weights(weights, allow_pickle=allow_pickle, warn_unverified=True), str(weights))
    return model.eval()
