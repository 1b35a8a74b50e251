"""Which models are already quantized: one check for every technique that must come before quantization.

A quantized model (INT8 PTQ, weight-only codes, float formats, binary/ternary) stores a derived form
(its ``storage_tensors()``); pruning, decomposing or training it afterwards would leave that form
stale or move the weights off their grid. Quantized model classes set ``effdl_quantized = True``.
"""
from __future__ import annotations

import torch.nn as nn

from .errors import ConfigError


def is_quantized(model: nn.Module) -> bool:
    return bool(getattr(type(model), "effdl_quantized", False))


def refuse_quantized(model: nn.Module, technique: str) -> None:
    """ConfigError when ``model`` is already quantized: ``technique`` must come earlier in the recipe."""
    if is_quantized(model):
        raise ConfigError(
            f"{technique} must come before quantization in a recipe: the model is already quantized "
            f"({type(model).__name__}); apply {technique} to the float model, then quantize")
