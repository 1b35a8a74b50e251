"""What a transformed model is, as the runtimes, storage and report see it.

A technique that changes how weights are *represented* (INT8, weight-only codes, float formats,
binary/ternary, k-means clusters) returns a ``CompressedModel``: an nn.Module that says, explicitly,

- ``float_reference()``: the float model its lowerings must agree with (and whose layers FLOPs and
  sparsity are counted on);
- ``storage_tensors()``: the tensors that represent it on disk (int8 codes + scales, packed bits, ...);
- ``runtime_kind``: which family of runtimes can run it (``RUNTIME_KINDS``).

Plain float models (pruned, factorized, distilled) are not CompressedModels: their state dict is
their storage and they are their own reference. Runtimes, storage and the report select by this
class, never by probing attributes.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn as nn

#: "float": runs on the FP32 runtimes with its decoded weights (weight-only, float formats, binary,
#: clusters); "int8-static" / "int8-dynamic": runs on the INT8 runtimes of that activation mode.
RUNTIME_KINDS = ("float", "int8-static", "int8-dynamic")


class CompressedModel(nn.Module, ABC):
    """Base of every model whose stored form differs from its float state dict."""

    @property
    @abstractmethod
    def runtime_kind(self) -> str:
        """One of ``RUNTIME_KINDS``."""

    @abstractmethod
    def float_reference(self) -> nn.Module:
        """The float model this one was derived from and must agree with when lowered."""

    @abstractmethod
    def storage_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors written to disk for this model (its true compressed form)."""


def float_reference(model: nn.Module) -> nn.Module:
    """``model``'s float reference: itself for a plain float model."""
    return model.float_reference() if isinstance(model, CompressedModel) else model


def runtime_kind(model: nn.Module) -> str:
    """The runtime family that runs ``model`` ("float" for plain models)."""
    return model.runtime_kind if isinstance(model, CompressedModel) else "float"
