"""One candidate, measured for real: static footprint + a verified runtime's latency and quality.

Static figures (params, non-zeros, bytes of the file actually written, MACs, energy estimate) do
not depend on the runtime. Runtime figures come only from a lowering that passed its parity check
against the source model; a lowering that fails or mismatches is reported with its reason and
never counts.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from ..core.compressed import float_reference, runtime_kind
from ..core.errors import EffdlError
from ..core.forms import nonfinite_modules
from ..core.task import kept_modes
from ..deploy.storage import model_tensors, save_compact, unique_tensors
from .energy import estimate_energy
from .flops import count_macs
from .footprint import count_nonzero, count_params, dense_fp32_bytes, gzip_size, layer_sparsity
from .latency import measure_latency, peak_memory


#: files larger than this get no gzip size (see static_footprint)
GZIP_MAX_BYTES = 64 * 1024**2


@dataclass(frozen=True)
class Tolerances:
    """Parity thresholds (REFERENCE: lossless rtol 1e-3 / atol 1e-5; INT8 >= 20 dB and >= 99% top-1)."""

    rtol: float = 1e-3
    atol: float = 1e-5
    min_sqnr_db: float = 20.0
    min_top1_agreement: float = 0.99
    #: embeddings (sentence encoders): every sample's cosine to the source's embedding
    min_cosine: float = 0.98


@dataclass
class RuntimeResult:
    runtime: str
    status: str  # "ok" | "failed"
    reason: str | None = None
    precision: str | None = None
    latency: dict[str, dict[str, float]] = field(default_factory=dict)  # batch -> latency dict
    parity: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    lowered: Any = None  # the live Lowered object (not serialised)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reason": self.reason,
            "precision": self.precision,
            "latency_by_batch": self.latency,
            "parity": self.parity,
            "info": self.info,
        }


def source_model(model: nn.Module) -> nn.Module:
    """The float model a lowering must agree with (a CompressedModel's float reference)."""
    return float_reference(model)


def static_footprint(model: nn.Module, task, path: Path) -> dict[str, Any]:
    """Counts and on-disk bytes. Writes the model's compact tensors to ``path`` and measures that file."""
    src = source_model(model)
    tensors = model_tensors(model)
    size = save_compact(tensors, path)
    macs = count_macs(src, task.example_input(1))
    quantized = runtime_kind(model) != "float"  # INT8: the energy table's int8 MACs
    weight_bytes = sum(t.numel() * t.element_size() for t in unique_tensors(tensors)[0].values())
    energy = estimate_energy(
        macs["macs_sparse"], precision="int8" if quantized else "fp32",
        weight_bytes=weight_bytes, elementwise_ops=macs["elementwise_ops"],
    )
    return {
        "params": count_params(src),
        "nonzero_params": count_nonzero(src),
        "size_bytes": int(size),
        # gzip -9 of hundreds of MB of float weights takes minutes and says little: above the limit, None
        "size_bytes_gzip": gzip_size(path) if int(size) <= GZIP_MAX_BYTES else None,
        "size_bytes_dense_fp32": dense_fp32_bytes(src),
        "macs": macs["macs"],
        "macs_sparse": macs["macs_sparse"],
        "flops": macs["flops"],
        "energy_uj": energy["total_uj"],
        "energy_method": energy.get("method"),
        # the float reference's layers, named as the user named them (not under a wrapper's attribute)
        "layers": layer_sparsity(src),
    }


def fixed_batch(predict: Callable, batch_size: int) -> Callable:
    """Run ``predict`` only at ``batch_size`` (padding the last chunk), so compiled runtimes that
    were built for fixed shapes are evaluated without recompiling."""

    def run(x: torch.Tensor) -> torch.Tensor:
        outs = []
        for i in range(0, x.shape[0], batch_size):
            chunk = x[i : i + batch_size]
            n = chunk.shape[0]
            if n < batch_size:
                chunk = torch.cat([chunk, chunk[-1:].expand(batch_size - n, *chunk.shape[1:])])
            out = predict(chunk)
            out = torch.as_tensor(out)
            outs.append(out[:n])
        return torch.cat(outs)

    return run


def measure_runtime(
    model: nn.Module,
    runtime: str,
    task,
    *,
    workdir: Path,
    batch_sizes: tuple[int, ...] = (1, 32),
    threads: int = 2,
    tolerances: Tolerances = Tolerances(),
    repeats: int = 30,
) -> RuntimeResult:
    """Lower to ``runtime``, check parity at two batch sizes, then time each batch size."""
    from ..deploy.parity import check_parity, parity_inputs
    from ..deploy.runtimes import lower

    t0 = time.perf_counter()
    try:
        lowered = lower(model, runtime, task=task, workdir=workdir, threads=threads, batch_sizes=batch_sizes)
    except Exception as exc:  # a failed lowering is a recorded result, not a crash
        return RuntimeResult(runtime, "failed", reason=f"lowering failed: {_one_line(exc)}")
    src = source_model(model).eval()
    inputs = parity_inputs(task, batch_sizes=batch_sizes)
    try:
        with torch.inference_mode():
            parity = check_parity(
                src, lowered, inputs, rtol=tolerances.rtol, atol=tolerances.atol,
                min_sqnr_db=tolerances.min_sqnr_db, min_top1_agreement=tolerances.min_top1_agreement,
                min_cosine=tolerances.min_cosine, output_kind=task.output_kind,
            )
    except Exception as exc:
        return RuntimeResult(runtime, "failed", reason=f"parity check failed to run: {_one_line(exc)}")
    res = RuntimeResult(runtime, "ok", precision=lowered.precision, parity=parity.to_dict(), info=dict(lowered.info), lowered=lowered)
    if not parity.ok:
        res.status, res.reason = "failed", f"parity: {parity.reason}"
        bad = nonfinite_modules(src)
        if bad:  # the usual cause of NaN outputs, named
            res.reason += (f"; the weights of module(s) {', '.join(map(repr, bad))} hold NaN/Inf: fix the checkpoint "
                           "(retrain, or lower the learning rate)")
        return res
    for bs in batch_sizes:
        x = task.example_input(bs)
        with torch.inference_mode():
            lat = measure_latency(lowered.predict, x, repeats=repeats, threads=threads)
        res.latency[str(bs)] = lat
    res.info["seconds"] = round(time.perf_counter() - t0, 2)
    return res


def runtime_quality(res: RuntimeResult, task, batch_size: int) -> dict[str, dict[str, float]]:
    """Task metrics of a verified lowering on the test and validation splits."""
    predict = fixed_batch(res.lowered.predict, batch_size)
    with torch.inference_mode():
        return {"test": task.evaluate(predict, "test"), "val": task.evaluate(predict, "val")}


def runtime_footprint(res: RuntimeResult, task, batch_size: int) -> dict[str, Any]:
    """The footprint fields a verified runtime adds: latency at ``batch_size`` (and every measured
    batch size), throughput, threads and peak memory."""
    lat = res.latency[str(batch_size)]
    return {
        "latency_ms_p50": lat["p50_ms"], "latency_ms_p90": lat["p90_ms"], "throughput_per_s": lat["throughput_per_s"],
        "batch_size": batch_size, "threads": lat.get("threads"),
        "latency_by_batch": {b: {"p50_ms": v["p50_ms"], "p90_ms": v["p90_ms"]} for b, v in res.latency.items()},
        "peak_mem_bytes": runtime_peak_memory(res, task, batch_size),
    }


def runtime_peak_memory(res: RuntimeResult, task, batch_size: int) -> int | None:
    try:
        with torch.inference_mode():
            return int(peak_memory(res.lowered.predict, task.example_input(batch_size))["peak_bytes"])
    except (EffdlError, KeyError, RuntimeError):
        return None


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {msg[0] if msg else ''}"[:400]


def measure(
    task,
    model: nn.Module | None = None,
    *,
    runtime: str = "eager",
    batch_sizes: tuple[int, ...] = (1, 32),
    threads: int = 2,
    workdir: str | Path | None = None,
    tolerances: Tolerances = Tolerances(),
) -> dict[str, Any]:
    """Measure ``model`` (default: the task's model) on ``runtime``: footprint, latency, quality.

    Returns a JSON-able dict: ``footprint``, ``runtime`` (parity, latency per batch size),
    ``quality`` (test split) and ``environment``.
    """
    import tempfile

    from .env import environment

    model = task.model if model is None else model
    # measured in eval mode (lowerings switch the model to it); the caller's train/eval flags come back after
    with kept_modes(model), tempfile.TemporaryDirectory(prefix="effdl-measure-") as tmp:
        wd = Path(workdir) if workdir is not None else Path(tmp)
        fp = static_footprint(model, task, wd / "model.safetensors")
        res = measure_runtime(model, runtime, task, workdir=wd / runtime, batch_sizes=batch_sizes,
                              threads=threads, tolerances=tolerances)
        quality = runtime_quality(res, task, batch_sizes[-1])["test"] if res.status == "ok" else {}
        if res.status == "ok":
            fp.update(runtime_footprint(res, task, batch_sizes[0]))
    return {
        "runtime": runtime,
        "status": res.status,
        "reason": res.reason,
        "footprint": fp,
        "runtime_result": res.to_dict(),
        "quality": quality,
        "environment": environment(runtime=runtime, threads=threads),
    }
