"""Which models are already quantized: one check for every technique that must come before quantization.

A quantized model is a ``CompressedModel`` (INT8 PTQ, weight-only codes, float formats,
binary/ternary, k-means clusters): it stores a derived form (its ``storage_tensors()``); pruning,
decomposing or training it afterwards would leave that form stale or move the weights off their
grid. The one exception is training a model whose stored form stays exact under training
(``CompressedModel.trainable``: training a clustered model trains its shared values).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .compressed import CompressedModel
from .errors import ConfigError

#: technique families that only train the model's existing parameters (no rewrite of its weights
#: or structure), so they may follow a trainable CompressedModel
TRAINING_ONLY = ("learn.",)


def is_quantized(model: nn.Module) -> bool:
    return isinstance(model, CompressedModel)


def refuse_quantized(model: nn.Module, technique: str) -> None:
    """ConfigError when ``model`` is already quantized: ``technique`` must come earlier in the recipe."""
    if not is_quantized(model):
        return
    if model.trainable and technique.startswith(TRAINING_ONLY):
        return  # e.g. learn.distill on a share.cluster result trains its centroids
    raise ConfigError(
        f"{technique} must come before quantization in a recipe: the model is already quantized "
        f"({type(model).__name__}); apply {technique} to the float model, then quantize")


def nonfinite_modules(model: nn.Module) -> list[str]:
    """Names of the modules whose own parameters or buffers hold NaN/Inf (sorted; '(root)' for the model's own)."""
    return sorted({name.rpartition(".")[0] or "(root)"
                   for name, t in [*model.named_parameters(), *model.named_buffers()]
                   if t.is_floating_point() and not bool(torch.isfinite(t).all())})
