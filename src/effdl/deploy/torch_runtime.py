"""PyTorch lowerings: eager FP32, torch.compile FP32 with freezing, PT2E INT8 + torch.compile.

Compiled runtimes follow REFERENCE.md: inductor freezing is switched on globally only inside a
scoped patch (passing it as a compile option fails for quantized models), shapes are static
(``dynamic=False``) and compiled up front for the batch sizes that will run, and
``torch._dynamo.reset()`` is never called (it silently forces recompiles of other models).
"""
from __future__ import annotations

import contextlib
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ..core.errors import ConfigError, UnsupportedModuleError
from .lowered import Lowered, as_logits

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


def _exported(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, str]:
    """The model as an exported GraphModule (dynamic batch), or the module itself if export fails.

    Compiling the exported graph gives each model its own code object: dynamo's per-code-object
    cache (and its recompile limit) is then not shared by every ``nn.Sequential`` in the process.
    """
    try:
        ep = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
        return ep.module(), "torch.export"
    except Exception:  # not exportable: compile the module directly (dynamo handles graph breaks)
        return model, "module"


class _Compiled:
    """A ``torch.compile``d callable whose every input shape is compiled under freezing."""

    def __init__(self, module: nn.Module, examples: list[torch.Tensor], threads: int) -> None:
        self.fn = torch.compile(module, backend="inductor", dynamic=False)
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
        with torch.inference_mode():
            return as_logits(self.fn(x))


def _eager_predict(model: nn.Module, threads: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def predict(x: torch.Tensor) -> torch.Tensor:
        _pin(threads)
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
    model.eval()
    examples = _examples(task, batch_sizes)
    graph, captured = _exported(model, examples[-1])
    compiled = _Compiled(graph, examples, threads)
    info = {"threads": threads, "backend": "inductor", "freezing": True, "dynamic": False,
            "captured_by": captured, "compiled_batch_sizes": list(batch_sizes),
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
            # how many conv/linear ops inductor lowered to oneDNN int8 kernels (empty: simulated only)
            "int8_kernels_lowered": kernels}
    return Lowered("pt2e-int8", "int8", False, compiled, None, info)
