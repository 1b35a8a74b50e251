"""Runtimes: lower a model to something runnable and measurable.

``RUNTIMES`` maps a runtime name to its lowering, a description and the runtime kind of the models it
accepts (``core.compressed.RUNTIME_KINDS``: "float", "int8-static", "int8-dynamic"). ``lower(model,
name, ...)`` returns a ``Lowered``; ``runtimes_for(model)`` lists the runtimes that fit a model
(``applies`` says whether a runtime is worth trying on it; a float runtime may still be named
explicitly for any float model).
Adding a runtime = one function + one registry entry.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

import torch
import torch.nn as nn

from ..core.compressed import Int8Model, float_reference, runtime_kind, weight_format
from ..core.errors import ConfigError, UnsupportedModuleError, suggest
from .lowered import Lowered, check_batch_sizes, check_threads
from .ort_runtime import lower_ort, lower_ort_int8, lower_ort_int8_dynamic, lower_ort_int8_s8s8
from .sparse_exec import has_sparse_linear, lower_sparse_eager
from .torch_runtime import lower_bf16, lower_compile, lower_eager, lower_pt2e_int8, lower_torch_int8_dynamic

__all__ = ["Lowered", "RUNTIMES", "Runtime", "check_runtime_name", "is_int8_model", "lower", "runtimes_for"]


class Runtime(NamedTuple):
    lower: Callable[..., Lowered]
    description: str
    accepts: str  # the runtime kind it runs: "float" | "int8-static" | "int8-dynamic"
    applies: Callable[[nn.Module], bool] | None = None  # worth trying on this model? (None: always)


def has_bf16_weights(model: nn.Module) -> bool:
    """Weights that are exactly bf16 values (quantize.float BF16): the bf16 runtime computes with them."""
    return weight_format(model) == "bf16"


def _ort_calibration(model: nn.Module) -> bool:
    """ORT has no MSE calibrator: its static runtimes cannot reproduce calibration='mse'."""
    return isinstance(model, Int8Model) and model.int8_spec().calibration_method in ("minmax", "percentile", "entropy")


RUNTIMES: dict[str, Runtime] = {
    "eager": Runtime(lower_eager, "PyTorch eager FP32 (eval, inference_mode)", "float"),
    "compile": Runtime(lower_compile, "torch.compile (inductor) FP32 with freezing, static shapes", "float"),
    "ort": Runtime(lower_ort, "ONNX Runtime CPU FP32 (dynamo ONNX export, all graph optimizations)", "float"),
    "pt2e-int8": Runtime(lower_pt2e_int8, "PT2E static INT8 (X86InductorQuantizer) + torch.compile: oneDNN int8 kernels",
                         "int8-static"),
    "ort-int8": Runtime(lower_ort_int8, "ONNX Runtime static QDQ INT8 (U8S8, per-channel weights)", "int8-static",
                        _ort_calibration),
    "ort-int8-s8s8": Runtime(lower_ort_int8_s8s8, "ONNX Runtime static QDQ INT8 (S8S8, per-channel weights)",
                             "int8-static", _ort_calibration),
    "torch-int8-dynamic": Runtime(lower_torch_int8_dynamic, "PyTorch eager quantize_dynamic INT8 (Linear layers, "
                                  "activations quantized per batch)", "int8-dynamic"),
    "ort-int8-dynamic": Runtime(lower_ort_int8_dynamic, "ONNX Runtime quantize_dynamic INT8 (MatMulInteger, Linear "
                                "layers, activations quantized per batch)", "int8-dynamic"),
    "eager-sparse": Runtime(lower_sparse_eager, "PyTorch eager FP32 with torch CSR/BSR Linear layers where measured "
                            "faster than dense", "float", has_sparse_linear),
    # lossy (bf16 activations), so tried by default only on models whose weights are already bf16
    # (quantize.float format="bf16", whose measured quality is its own); any FP32 model when named
    "bf16": Runtime(lower_bf16, "torch.compile (inductor, freezing) under CPU bfloat16 autocast: oneDNN bf16/AMX "
                    "kernels; lossy (SQNR/top-1 parity)", "float", has_bf16_weights),
}


def is_int8_model(model: nn.Module) -> bool:
    """A model the INT8 runtimes run (quantize.ptq); other compressed forms run on the FP32 ones."""
    return runtime_kind(model) != "float"


def runtimes_for(model: nn.Module) -> list[str]:
    """The runtimes that can run ``model``: those of its runtime kind that apply to it."""
    kind = runtime_kind(model)
    return [name for name, rt in RUNTIMES.items()
            if rt.accepts == kind and (rt.applies is None or rt.applies(model))]


def _check_fp32(model: nn.Module, runtime: str) -> None:
    odd = sorted({str(t.dtype).removeprefix("torch.") for t in list(model.parameters()) + list(model.buffers())
                  if t.is_floating_point() and t.dtype != torch.float32})
    if odd:
        raise UnsupportedModuleError(
            f"runtime {runtime!r} lowers FP32 models, but this model holds {', '.join(odd)} tensors: "
            "call model.float() first (reduced-precision runtimes are separate lowerings)"
        )


def check_runtime_name(runtime: str) -> None:
    """ConfigError naming the valid runtimes when ``runtime`` is not one."""
    if runtime not in RUNTIMES:
        raise ConfigError(
            f"unknown runtime {runtime!r}.{suggest(runtime, RUNTIMES)} Valid runtimes: {', '.join(RUNTIMES)}"
        )


def lower(model: nn.Module, runtime: str, *, task, workdir: Path, threads: int = 2,
          batch_sizes: tuple[int, ...] = (1, 32)) -> Lowered:
    """Lower ``model`` to ``runtime`` for ``batch_sizes`` on ``threads`` intra-op threads.

    ``task`` supplies real example inputs (export, compile warm-up); ``workdir`` receives any file
    written (ONNX). Raises ConfigError for an unknown runtime or a model of the wrong kind, and
    UnsupportedModuleError / ArtifactError with the reason when the lowering itself fails.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"lower() takes an nn.Module, got {type(model).__name__}")
    check_runtime_name(runtime)
    if task is None:
        raise ConfigError(f"lowering to {runtime!r} needs task= (real example inputs for export and warm-up)")
    rt = RUNTIMES[runtime]
    kind = runtime_kind(model)
    if rt.accepts != kind and "float" in (rt.accepts, kind):
        fix = ("apply quantize.ptq first" if kind == "float"
               else "pass the float model, or use one of " + ", ".join(runtimes_for(model)))
        got = "a float model" if kind == "float" else f"a quantized model ({kind})"
        raise ConfigError(f"runtime {runtime!r} runs {rt.accepts} models but got {got}: {fix}")
    if kind != "float" and (rt.accepts != kind or (rt.applies is not None and not rt.applies(model))):
        raise ConfigError(f"runtime {runtime!r} does not run this quantized model (mode={kind.removeprefix('int8-')!r}, "
                          f"calibration={model.int8_spec().calibration_method!r}): use one of "
                          f"{', '.join(runtimes_for(model))}")
    _check_fp32(model if kind == "float" else float_reference(model), runtime)
    threads = check_threads(threads)
    batch_sizes = check_batch_sizes(batch_sizes)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    lowered = rt.lower(model, task=task, workdir=workdir, threads=threads, batch_sizes=batch_sizes)
    lowered.info.setdefault("threads", threads)
    lowered.info.setdefault("batch_sizes", list(batch_sizes))
    return lowered
