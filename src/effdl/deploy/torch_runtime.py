"""PyTorch lowerings: eager FP32, torch.compile FP32 with freezing, PT2E INT8 + torch.compile.

Compiled runtimes follow REFERENCE.md: inductor freezing is switched on globally only inside a
scoped patch (passing it as a compile option fails for quantized models), shapes are static
(``dynamic=False``) and compiled up front for the batch sizes that will run, and
``torch._dynamo.reset()`` is never called (it silently forces recompiles of other models).
"""
from __future__ import annotations

import contextlib
import itertools
import time
import types
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ..core.errors import ConfigError, UnsupportedModuleError
from .lowered import Lowered, as_logits

_LOWERING_IDS = itertools.count()
_COMPILE_CHATTER = ("To copy construct from a tensor", "The input of maxpool2d is not quantized")


@contextlib.contextmanager
def inductor_freezing():
    """``torch._inductor.config.freezing = True`` for the block, restored afterwards."""
    from torch._inductor import config as inductor_config

    with inductor_config.patch(freezing=True):
        yield


def _pin(threads: int) -> None:
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0][:300] if msg else ''}"


def _own_code(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """A call-through function with a code object of its own, to hand to torch.compile.

    Dynamo caches compiled graphs per code object and stops compiling after ``recompile_limit``
    (8) entries; every ``torch.compile``d nn.Module shares one wrapper code object, so without
    this the ninth (model, batch size) compiled in a process would silently run eager.
    """

    def call(x: torch.Tensor):
        return module(x)

    code = call.__code__.replace(co_name=f"effdl_lowered_{next(_LOWERING_IDS)}")
    return types.FunctionType(code, call.__globals__, code.co_name, None, call.__closure__)


class _Compiled:
    """A ``torch.compile``d callable whose every input shape is compiled under freezing."""

    def __init__(self, module: nn.Module, examples: list[torch.Tensor], threads: int) -> None:
        self.fn = torch.compile(_own_code(module), backend="inductor", dynamic=False)
        self.threads = threads
        self.shapes: set[tuple] = set()
        self.compile_s = 0.0
        for x in examples:
            self.warm(x)

    def warm(self, x: torch.Tensor) -> None:
        _pin(self.threads)
        t0 = time.perf_counter()
        try:
            with inductor_freezing(), torch.inference_mode(), warnings.catch_warnings():
                for msg in _COMPILE_CHATTER:
                    warnings.filterwarnings("ignore", message=msg)
                self.fn(x)
        except Exception as exc:  # inductor raises many internal types; report one clear error
            raise UnsupportedModuleError(
                f"torch.compile (inductor, freezing) failed for input shape {tuple(x.shape)}: "
                f"{_one_line(exc)}. Fix: use the eager or ort runtime for this model"
            ) from None
        self.compile_s += time.perf_counter() - t0
        self.shapes.add((tuple(x.shape), x.dtype))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if (tuple(x.shape), x.dtype) not in self.shapes:
            self.warm(x)  # a new shape would otherwise compile without freezing
        _pin(self.threads)
        if torch.is_inference_mode_enabled():  # the usual case when measured: skip a context switch
            return as_logits(self.fn(x))
        with torch.inference_mode():
            return as_logits(self.fn(x))


def _eager_predict(model: nn.Module, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def predict(x: torch.Tensor) -> torch.Tensor:
        _pin(threads)
        if torch.is_inference_mode_enabled():
            return as_logits(model(x))
        with torch.inference_mode():
            return as_logits(model(x))

    return predict


def _examples(task, batch_sizes: tuple[int, ...]) -> list[torch.Tensor]:
    return [task.example_input(b) for b in batch_sizes]


def lower_eager(model: nn.Module, *, task, workdir: Path, threads: int, batch_sizes: tuple[int, ...]) -> Lowered:
    was_training = model.training
    model.eval()
    info = {"threads": threads, "was_training": was_training}
    return Lowered("eager", "fp32", True, _eager_predict(model, threads), None, info)


def lower_compile(model: nn.Module, *, task, workdir: Path, threads: int, batch_sizes: tuple[int, ...]) -> Lowered:
    """Freezing folds the weights into constants: the result is a snapshot of ``model`` now."""
    model.eval()
    compiled = _Compiled(model, _examples(task, batch_sizes), threads)
    info = {"threads": threads, "backend": "inductor", "freezing": True, "dynamic": False,
            "compiled_batch_sizes": list(batch_sizes),
            "compile_s": round(compiled.compile_s, 3)}
    return Lowered("compile", "fp32", True, compiled, None, info)


def _int8_kernel_counts(before: dict, after: dict) -> dict[str, int]:
    keys = [k for k in after if k.endswith("_lower_count") and ("qconv" in k or "qlinear" in k)]
    return {k.removesuffix("_lower_count"): int(after[k] - before.get(k, 0)) for k in keys if after[k] - before.get(k, 0)}


def lower_pt2e_int8(model: nn.Module, *, task, workdir: Path, threads: int, batch_sizes: tuple[int, ...]) -> Lowered:
    from torch._dynamo.utils import counters

    reference = getattr(model, "reference", None)
    if reference is None:
        raise ConfigError("pt2e-int8 runs a quantize.ptq result (QuantizedModel); apply quantize.ptq first")
    before = dict(counters["inductor"])
    compiled = _Compiled(reference, _examples(task, batch_sizes), threads)
    kernels = _int8_kernel_counts(before, dict(counters["inductor"]))
    info = {"threads": threads, "backend": "inductor", "freezing": True, "dynamic": False,
            "compiled_batch_sizes": list(batch_sizes), "compile_s": round(compiled.compile_s, 3),
            "quantization": model.config.to_dict(), "int8_modules": list(model.quantized_modules),
            "scheme": "X86InductorQuantizer: uint8 per-tensor activations, int8 symmetric weights [-127, 127]",
            # conv/linear ops inductor lowered to oneDNN int8 kernels, summed over the compiled
            # batch sizes (empty would mean the q/dq graph only simulates INT8)
            "int8_kernels_lowered": kernels}
    return Lowered("pt2e-int8", "int8", False, compiled, None, info)
