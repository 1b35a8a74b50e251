"""Sparse execution of Linear layers (torch CSR / BSR), used only where measured faster than dense.

Storing zeros densely gains nothing at run time; a sparse kernel gains only at high sparsity and
large enough batches (REFERENCE.md, 1024x1024 Linear: CSR 3.6x faster at 90% / batch 64 but 0.8x
at batch 1; BSR 32x32 slower). So ``lower_sparse_eager`` times every sparse-enough Linear layer on
this machine, at the run's batch sizes and threads, as dense, CSR and BSR, and converts it only
when one sparse format beats dense at *every* batch size; each layer's timings and decision are
recorded in ``Lowered.info["sparse_layers"]``. The result is exact up to float summation order.
"""
from __future__ import annotations

import copy
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..core.errors import ConfigError
from .lowered import Lowered, check_batch_sizes, check_threads
from .torch_runtime import lower_eager

FORMATS = ("csr", "bsr")
#: below this sparsity no sparse kernel was ever faster here; those layers are not even timed
MIN_SPARSITY = 0.5
#: BSR block edge: 8x8 was the fastest BSR block measured on the 1024x1024 layer (32x32 slower)
BSR_BLOCK = 8


def to_sparse_weight(weight: torch.Tensor, fmt: str, block: int = BSR_BLOCK) -> torch.Tensor:
    """``weight`` (out, in) as a torch CSR or BSR tensor (exact: the same values, zeros dropped)."""
    w = weight.detach().contiguous()
    if fmt == "bsr" and (w.shape[0] % block or w.shape[1] % block):
        raise ConfigError(f"BSR with {block}x{block} blocks needs both weight dims divisible by {block}, got {tuple(w.shape)}")
    if fmt in FORMATS:
        with warnings.catch_warnings():  # "sparse CSR support is in beta": known, and measured here
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return w.to_sparse_csr() if fmt == "csr" else w.to_sparse_bsr((block, block))
    raise ConfigError(f"sparse format must be one of {FORMATS}, got {fmt!r}")


class SparseLinear(nn.Module):
    """y = x W^T + b with W stored sparse; computed as (b + W x^T)^T by one sparse addmm."""

    def __init__(self, linear: nn.Linear, fmt: str, block: int = BSR_BLOCK) -> None:
        super().__init__()
        self.fmt = fmt
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = to_sparse_weight(linear.weight, fmt, block)  # a plain tensor: inference only
        bias = linear.bias.detach() if linear.bias is not None else torch.zeros(linear.out_features)
        self.bias_col = bias.reshape(-1, 1).clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        y = torch.addmm(self.bias_col, self.weight, x2.t()).t()
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, format={self.fmt}"


def _median_ms(fn, x: torch.Tensor, calls: int) -> float:
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def time_layer(linear: nn.Linear, batch_sizes: tuple[int, ...], threads: int, *, rounds: int = 5,
               calls: int = 10, formats: tuple[str, ...] = FORMATS, block: int = BSR_BLOCK) -> dict[int, dict[str, float]]:
    """Median ms per call of the layer as dense and each sparse format, per batch size.

    Variants are interleaved (round-robin, order rotated each round) so foreign load hits them
    alike; each number is the median over rounds of per-round medians.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    variants: dict[str, nn.Module] = {"dense": linear}
    for fmt in formats:
        if fmt == "bsr" and (linear.out_features % block or linear.in_features % block):
            continue  # the shape does not tile into blocks
        variants[fmt] = SparseLinear(linear, fmt, block)
    out: dict[int, dict[str, float]] = {}
    try:
        with torch.inference_mode():
            g = torch.Generator().manual_seed(0)
            for b in batch_sizes:
                x = torch.randn(b, linear.in_features, generator=g)
                per: dict[str, list[float]] = {k: [] for k in variants}
                names = list(variants)
                for name in names:  # warm-up
                    _median_ms(variants[name], x, 2)
                for r in range(rounds):
                    order = names[r % len(names):] + names[: r % len(names)]
                    for name in order:
                        per[name].append(_median_ms(variants[name], x, calls))
                out[b] = {k: round(statistics.median(v), 5) for k, v in per.items()}
    finally:
        torch.set_num_threads(old)
    return out


def decide(timings: dict[int, dict[str, float]]) -> tuple[str, float]:
    """(format, worst-case speedup over dense): the sparse format whose slowest batch size still
    beats dense by the most, or ("dense", best such speedup) when none beats dense everywhere."""
    best_fmt, best = "dense", 0.0
    fmts = [f for f in next(iter(timings.values())) if f != "dense"]
    for fmt in fmts:
        worst = min(t["dense"] / t[fmt] if t[fmt] > 0 else 0.0 for t in timings.values())
        if worst > best:
            best_fmt, best = fmt, worst
    return (best_fmt, best) if best > 1.0 else ("dense", best)


def sparsify_linears(model: nn.Module, batch_sizes: tuple[int, ...], threads: int,
                     **timing: Any) -> tuple[nn.Module, list[dict[str, Any]]]:
    """A copy of ``model`` with each Linear replaced by ``SparseLinear`` where measured faster."""
    out = copy.deepcopy(model).eval()
    records = []
    for name, m in list(out.named_modules()):
        if not isinstance(m, nn.Linear) or type(m) is not nn.Linear:
            continue
        sparsity = float((m.weight == 0).float().mean())
        rec: dict[str, Any] = {"layer": name, "shape": list(m.weight.shape), "sparsity": round(sparsity, 4)}
        if sparsity < MIN_SPARSITY:
            rec.update(decision="dense", reason=f"sparsity {sparsity:.2f} < {MIN_SPARSITY}: not timed")
        else:
            t = time_layer(m, batch_sizes, threads, **timing)
            fmt, speedup = decide(t)
            rec.update(timings_ms={str(b): v for b, v in t.items()}, decision=fmt,
                       worst_case_speedup=round(speedup, 3),
                       reason=(f"{fmt} faster than dense at every batch size (worst {speedup:.2f}x)" if fmt != "dense"
                               else f"no sparse format faster than dense at every batch size (best worst-case {speedup:.2f}x)"))
            if fmt != "dense":
                parent_name, _, child = name.rpartition(".")
                parent = out.get_submodule(parent_name) if parent_name else out
                setattr(parent, child, SparseLinear(m, fmt))
        records.append(rec)
    return out, records


def lower_sparse_eager(model: nn.Module, *, task, workdir: Path, threads: int,
                       batch_sizes: tuple[int, ...]) -> Lowered:
    """Eager FP32 with sparse (CSR/BSR) Linear layers where a micro-benchmark here says faster."""
    threads = check_threads(threads)
    batch_sizes = check_batch_sizes(batch_sizes)
    converted, records = sparsify_linears(model, batch_sizes, threads)
    base = lower_eager(converted, task=task, workdir=workdir, threads=threads, batch_sizes=batch_sizes)
    info = {**base.info, "sparse_layers": records, "converted": [r["layer"] for r in records if r["decision"] != "dense"],
            "timed_batch_sizes": list(batch_sizes)}
    return Lowered("eager-sparse", "fp32", True, base.predict, None, info)


def has_sparse_linear(model: nn.Module) -> bool:
    """Whether any Linear layer is sparse enough for the sparse path to be worth timing."""
    return any(isinstance(m, nn.Linear) and float((m.weight == 0).float().mean()) >= MIN_SPARSITY
               for m in model.modules())
