"""What a lowering returns: a runnable, measurable predictor and what was done to get it."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..core.compressed import Int8Model, Int8Spec
from ..core.errors import ConfigError


@dataclass
class Lowered:
    """A model lowered to one runtime.

    ``predict(x)`` takes a float32 batch and returns float32 logits as a torch Tensor (whatever the
    runtime computes in). ``lossless`` says which parity check applies: elementwise tolerance for
    FP32 rewrites, SQNR and top-1 agreement for INT8.
    """

    runtime: str
    precision: str  # "fp32" | "int8"
    lossless: bool
    predict: Callable[[torch.Tensor], torch.Tensor]
    artifact: Path | None = None  # the ONNX file written, if any
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16", "int8"):
            raise ConfigError(f"Lowered.precision must be 'fp32', 'bf16' or 'int8', got {self.precision!r}")


def as_logits(out: Any) -> torch.Tensor:
    """A runtime's raw output (tensor, numpy array, or a 1-tuple/list of them) as float32 logits."""
    if isinstance(out, (list, tuple)):
        out = out[0]
    if isinstance(out, np.ndarray):
        out = torch.from_numpy(out)
    return out.float() if out.dtype != torch.float32 else out


def check_threads(threads: Any) -> int:
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ConfigError(f"threads must be an integer >= 1, got {threads!r}")
    return threads


def check_batch_sizes(batch_sizes: Any) -> tuple[int, ...]:
    sizes = tuple(batch_sizes) if isinstance(batch_sizes, (tuple, list)) else (batch_sizes,)
    if not sizes or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in sizes):
        raise ConfigError(f"batch_sizes must be a non-empty tuple of integers >= 1, got {batch_sizes!r}")
    return tuple(dict.fromkeys(sizes))


def int8_spec(model: Any, runtime: str, kind: str, other: str) -> Int8Spec:
    """The ``Int8Spec`` of ``model`` when it is an INT8 model of runtime ``kind`` ("int8-static" or
    "int8-dynamic"), else a ConfigError naming the fix (``other``: the runtime for the other mode)."""
    if not isinstance(model, Int8Model):
        raise ConfigError(f"{runtime} runs a quantize.ptq result (an INT8 model); apply quantize.ptq first")
    if model.runtime_kind != kind:
        raise ConfigError(f"{runtime} runs quantize.ptq results with mode={kind.removeprefix('int8-')!r}, this one is "
                          f"mode={model.runtime_kind.removeprefix('int8-')!r}: use the {other} runtime")
    return model.int8_spec()
