"""PyTorch lowerings: eager FP32, torch.compile FP32 with freezing, PT2E INT8 + torch.compile,
dynamic INT8 (eager quantize_dynamic) and BF16 (autocast + torch.compile).

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

from ..core.errors import UnsupportedModuleError
from .lowered import Lowered, as_logits, int8_spec

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
    """A ``torch.compile``d callable: the shapes that are timed are compiled up front, static, under
    freezing; any other shape (a text task's evaluation batches come in several lengths) runs through
    one dynamic-shape compile of the same module, also under freezing, instead of a static compile
    per shape (eight of those took minutes for MiniLM's length buckets). Should the dynamic compile
    fail, each new shape is compiled static as before."""

    def __init__(self, module: nn.Module, examples: list[torch.Tensor], threads: int) -> None:
        self.module = module
        self.fn = torch.compile(_own_code(module), backend="inductor", dynamic=False)
        self.threads = threads
        self.shapes: set[tuple] = set()
        self.compile_s = 0.0
        self.dynamic: Callable | None = None
        self.dynamic_failed = False
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
            if not self.dynamic_failed:
                out = self._any_shape(x)
                if out is not None:
                    return out
            self.warm(x)  # a new shape would otherwise compile without freezing
        _pin(self.threads)
        if torch.is_inference_mode_enabled():  # the usual case when measured: skip a context switch
            return as_logits(self.fn(x))
        with torch.inference_mode():
            return as_logits(self.fn(x))


    def _any_shape(self, x: torch.Tensor) -> torch.Tensor | None:
        _pin(self.threads)
        t0 = time.perf_counter()
        first = self.dynamic is None
        try:
            if first:
                self.dynamic = torch.compile(_own_code(self.module), backend="inductor", dynamic=True)
            with inductor_freezing(), torch.inference_mode(), warnings.catch_warnings():
                for msg in _COMPILE_CHATTER:
                    warnings.filterwarnings("ignore", message=msg)
                out = as_logits(self.dynamic(x))
        except Exception:  # inductor's dynamic shapes do not cover every model: static per shape then
            self.dynamic_failed = True
            return None
        if first:
            self.compile_s += time.perf_counter() - t0
        return out


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

    spec = int8_spec(model, "pt2e-int8", "int8-static", "torch-int8-dynamic")
    before = dict(counters["inductor"])
    compiled = _Compiled(spec.torch_int8, _examples(task, batch_sizes), threads)
    kernels = _int8_kernel_counts(before, dict(counters["inductor"]))
    info = {"threads": threads, "backend": "inductor", "freezing": True, "dynamic": False,
            "compiled_batch_sizes": list(batch_sizes), "compile_s": round(compiled.compile_s, 3),
            "quantization": spec.settings, "int8_modules": list(spec.quantized_modules),
            "scheme": "X86InductorQuantizer: uint8 per-tensor activations, int8 symmetric weights [-127, 127]",
            # conv/linear ops inductor lowered to oneDNN int8 kernels, summed over the compiled
            # batch sizes (empty would mean the q/dq graph only simulates INT8)
            "int8_kernels_lowered": kernels}
    return Lowered("pt2e-int8", "int8", False, compiled, None, info)


def lower_torch_int8_dynamic(model: nn.Module, *, task, workdir: Path, threads: int,
                             batch_sizes: tuple[int, ...]) -> Lowered:
    """torch ``quantize_dynamic`` (eager): int8 Linear weights, uint8 activations quantized per
    batch at run time by the x86/fbgemm dynamic linear kernels; other layers FP32."""
    spec = int8_spec(model, "torch-int8-dynamic", "int8-dynamic", "pt2e-int8")
    info = {"threads": threads, "engine": torch.backends.quantized.engine, "quantization": spec.settings,
            "int8_modules": list(spec.quantized_modules),
            "scheme": "torch quantize_dynamic: uint8 activations per batch, int8 symmetric weights [-127, 127]"}
    return Lowered("torch-int8-dynamic", "int8", False, _eager_predict(spec.torch_int8, threads), None, info)


class _Autocast(nn.Module):
    """``module`` run under CPU autocast to bfloat16 (matmuls/convs in bf16, reductions in fp32)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.module(x)


def lower_bf16(model: nn.Module, *, task, workdir: Path, threads: int, batch_sizes: tuple[int, ...]) -> Lowered:
    """torch.compile (inductor, freezing) of the model under bfloat16 autocast: oneDNN bf16 kernels
    (AMX where the CPU has it; REFERENCE.md measured 2.7-5.4x over eager FP32 here). Lossy: parity
    is checked by SQNR and top-1 agreement, like INT8."""
    model.eval()
    compiled = _Compiled(_Autocast(model).eval(), _examples(task, batch_sizes), threads)
    info = {"threads": threads, "backend": "inductor", "freezing": True, "dynamic": False, "autocast": "bfloat16",
            "compiled_batch_sizes": list(batch_sizes), "compile_s": round(compiled.compile_s, 3),
            "amx": _has_amx()}
    return Lowered("bf16", "bf16", False, compiled, None, info)


def _has_amx() -> bool:
    try:
        return "amx" in torch.backends.cpu.get_cpu_capability().lower() or _cpuinfo_has("amx_bf16")
    except Exception:  # capability query is best-effort information only
        return False


def _cpuinfo_has(flag: str) -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(flag in line.split() for line in f if line.startswith("flags"))
    except OSError:
        return False
