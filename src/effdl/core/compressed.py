"""What a transformed model is, as the runtimes, storage and report see it.

A technique that changes how weights are *represented* (INT8, weight-only codes, float formats,
binary/ternary, k-means clusters) returns a ``CompressedModel``: an nn.Module that says, explicitly,

- ``float_reference()``: the float model its lowerings must agree with (and whose layers FLOPs and
  sparsity are counted on);
- ``storage_tensors()``: the tensors that represent it on disk (int8 codes + scales, packed bits, ...);
- ``runtime_kind``: which family of runtimes can run it (``RUNTIME_KINDS``);
- ``weight_format``: the exact format of its decoded weights when a runtime could compute in it
  ("bf16": the bf16 runtime is then lossless on the weights), else None;
- ``trainable``: whether training its parameters keeps the stored form exact.

An ``Int8Model`` (runtime kind "int8-static" / "int8-dynamic") also gives the INT8 runtimes its
``int8_spec()``: what they need to reproduce its quantization.

Plain float models (pruned, factorized, distilled) are not CompressedModels: their state dict is
their storage and they are their own reference. Runtimes, storage and the report select by this
class, never by probing attributes.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn as nn

from .errors import ModelError

#: "float": runs on the FP32 runtimes with its decoded weights (weight-only, float formats, binary,
#: clusters); "int8-static" / "int8-dynamic": runs on the INT8 runtimes of that activation mode.
RUNTIME_KINDS = ("float", "int8-static", "int8-dynamic")


class CompressedModel(nn.Module, ABC):
    """Base of every model whose stored form differs from its float state dict."""

    #: True when training its parameters keeps ``storage_tensors()`` exact, so techniques that only
    #: train (learn.*) may follow it (k-means clusters: the gradient trains the shared values);
    #: False when training would move weights off their grid, or the model cannot train (INT8).
    trainable: ClassVar[bool] = False

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

    @property
    def weight_format(self) -> str | None:
        """The exact format of the converted weights ("fp16", "bf16", ...) when they are a float
        format a runtime can compute in; None for codes that only decode to float32."""
        return None


@dataclass(frozen=True, eq=False)
class Int8Spec:
    """What every INT8 runtime needs to reproduce one INT8 quantization of a float reference."""

    #: the quantization settings, JSON-able (recorded in each lowering's info)
    settings: dict[str, Any]
    #: static activation ranges: "minmax" | "percentile" | "entropy" | "mse"
    calibration_method: str
    #: upper percentile kept when ``calibration_method == "percentile"``
    percentile: float
    #: one int8 weight scale per output channel (else one per tensor)
    per_channel: bool
    #: real input batches the ranges were (and ORT's calibrators are) calibrated on
    calibration: tuple[torch.Tensor, ...]
    #: layer name -> (lo, hi) of its input, fixed by the producer (QAT) instead of calibrated
    input_ranges: dict[str, tuple[float, float]]
    #: Conv/Linear modules whose weights are int8 in every INT8 runtime
    quantized_modules: tuple[str, ...]
    #: modules (with their submodules) kept FP32: excluded by the user, or without an int8 kernel
    kept_float: tuple[str, ...]
    #: torch's INT8 model (static: the calibrated PT2E q/dq graph; dynamic: quantize_dynamic's)
    torch_int8: nn.Module = field(repr=False)


class Int8Model(CompressedModel):
    """A CompressedModel the INT8 runtimes lower (runtime kind "int8-static" or "int8-dynamic")."""

    @abstractmethod
    def int8_spec(self) -> Int8Spec:
        """What the INT8 runtimes quantize and how."""


def float_reference(model: nn.Module) -> nn.Module:
    """``model``'s float reference: itself for a plain float model."""
    return model.float_reference() if isinstance(model, CompressedModel) else model


def runtime_kind(model: nn.Module) -> str:
    """The runtime family that runs ``model`` ("float" for plain models)."""
    if not isinstance(model, CompressedModel):
        return "float"
    kind = model.runtime_kind
    # the INT8 runtimes read int8_spec(): an INT8 kind without it could only fail later, obscurely
    if kind not in RUNTIME_KINDS or (kind != "float") != isinstance(model, Int8Model):
        raise ModelError(
            f"{type(model).__name__}.runtime_kind is {kind!r}: use 'float' for a model run with its decoded "
            "weights, and 'int8-static' / 'int8-dynamic' only in an Int8Model subclass (which gives int8_spec())")
    return kind


def weight_format(model: nn.Module) -> str | None:
    """The exact float format of ``model``'s converted weights, None for plain float32 models."""
    return model.weight_format if isinstance(model, CompressedModel) else None
