"""lowrank.svd: each selected Linear W (m x n) becomes Linear(n -> r) then Linear(r -> m), the
truncated SVD W ~ (U_r S_r^1/2)(S_r^1/2 V_r^T) (Eckart-Young: the best rank-r approximation).

The rank r is chosen per layer by
- an integer: the same rank everywhere (above a layer's full rank min(m, n) is a ConfigError);
- ``ratio``: r = round(ratio * min(m, n)), at least 1;
- ``energy``: the least r keeping that fraction of the spectral energy sum s_i^2;
- ``sensitivity``: each layer alone truncated to several ranks, the validation-metric drop measured,
  then ranks picked to keep at most ``budget`` of the selected layers' parameters with the least
  summed drop (the allocation of prune.distribution, on parameters removed instead of weights zeroed).

A factorization only pays when r (m + n) < m n, i.e. r < mn / (m + n); layers where the chosen rank
does not are left dense and listed in the records (``records(model)['lowrank.svd']['skipped']``).
"""
from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from ...core.errors import ConfigError
from ...core.registry import register
from ..prune.distribution import allocate
from ...core.records import Part
from .common import LowRankConfig, LowRankLayer, LowRankRecord, Skip, check_rank, decompose, needs, select
from .modules import Factorized

__all__ = ["SVDConfig", "energy_rank", "svd", "svd_factors"]


class SVDLayer(LowRankLayer):
    rank: int
    full_rank: int
    energy_kept: float  # fraction of the squared singular values kept


class SVDPoint(Part):
    """A layer truncated alone to ``rank``: the fraction of its parameters removed and the quality drop."""

    rank: int
    removed: float
    drop: float


class SVDRecord(LowRankRecord):
    key = "lowrank.svd"
    layers: dict[str, SVDLayer]
    sensitivity: dict[str, list[SVDPoint]] | None = None  # rank="sensitivity" only: each layer's curve
    budget: float | None = None  # ... and the parameter budget allocated by it


class SVDConfig(LowRankConfig):
    """Truncated-SVD factorization of Linear layers."""

    rank: Annotated[int, Field(ge=1)] | Literal["ratio", "energy", "sensitivity"] = Field(
        "ratio", description="an integer rank for every layer, or how to choose it: 'ratio', 'energy' or 'sensitivity'")
    ratio: float = Field(0.25, gt=0.0, le=1.0, description="rank='ratio': rank as a fraction of the layer's full rank")
    energy: float = Field(0.9, gt=0.0, le=1.0, description="rank='energy': fraction of sum s_i^2 kept")
    budget: float = Field(0.5, gt=0.0, lt=1.0, description="rank='sensitivity': fraction of the selected layers' parameters kept")
    sensitivity_ratios: tuple[Annotated[float, Field(gt=0.0, le=1.0)], ...] = Field(
        (0.05, 0.1, 0.2, 0.3, 0.5), min_length=1, description="rank='sensitivity': rank ratios measured per layer")


def svd_factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with A = U_r S_r^1/2 (m x r), B = S_r^1/2 V_r^T (r x n), computed in float64."""
    u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).to(weight.dtype), (root[:, None] * vh[:rank]).to(weight.dtype)


def energy_rank(singular_values: torch.Tensor, energy: float) -> int:
    """The least r with sum_{i<r} s_i^2 >= energy * sum s_i^2."""
    e = singular_values.double().square()
    kept = e.cumsum(0) / e.sum().clamp_min(1e-300)
    return min(int((kept < energy - 1e-12).sum()) + 1, len(e))


def _saves(rank: int, m: int, n: int) -> bool:
    return rank * (m + n) < m * n


@torch.no_grad()
def sensitivity(model: nn.Module, task, layers, ratios, split: str = "val"):
    """{layer: [(rank, fraction of its parameters removed, metric drop)]} for each rank that saves
    parameters; each layer is truncated alone and restored exactly."""
    spec = task.metric
    metric = spec.name
    base = task.evaluate(model, split)[metric]
    out = {}
    for name, m in layers:
        full = min(m.weight.shape)
        saved = m.weight.detach().clone()
        points = []
        for r in sorted({max(1, round(x * full)) for x in ratios}):
            rows, cols = m.weight.shape
            if not _saves(r, rows, cols):
                continue
            a, b = svd_factors(saved, r)
            m.weight.copy_(a @ b)
            points.append((r, 1.0 - r * (rows + cols) / (rows * cols), spec.drop(base, task.evaluate(model, split)[metric])))
            m.weight.copy_(saved)
        out[name] = points
    return out


def _allocated_ranks(model: nn.Module, cfg: SVDConfig, task) -> tuple[dict[str, int], dict]:
    layers, _ = select(model, cfg, (nn.Linear,), "lowrank.svd")
    curves = sensitivity(model, task, layers, cfg.sensitivity_ratios)
    sizes = {n: m.weight.numel() for n, m in layers}
    try:
        picked = allocate({n: [(f, d) for _, f, d in pts] for n, pts in curves.items()}, sizes, 1.0 - cfg.budget)
    except ConfigError:
        raise ConfigError(f"a parameter budget of {cfg.budget} cannot be met with rank ratios down to "
                          f"{min(cfg.sensitivity_ratios)}: add smaller sensitivity_ratios or raise budget") from None
    # fraction 0.0 is the allocation's "leave it dense" option
    ranks = {n: next((r for r, f, _ in curves[n] if f == frac), None) for n, frac in picked.items()}
    record = {n: [{"rank": r, "removed": round(f, 6), "drop": d} for r, f, d in pts] for n, pts in curves.items()}
    return ranks, {"sensitivity": record, "budget": cfg.budget}


def _rank_for(cfg: SVDConfig, name: str, weight: torch.Tensor, s: torch.Tensor, allocated: dict) -> int:
    full = min(weight.shape)
    if isinstance(cfg.rank, int):
        check_rank(name, cfg.rank, full)
        return cfg.rank
    if cfg.rank == "ratio":
        return max(1, round(cfg.ratio * full))
    if cfg.rank == "energy":
        return energy_rank(s, cfg.energy)
    if allocated.get(name) is None:
        raise Skip("kept dense by the sensitivity allocation")
    return allocated[name]


def _needs(cfg: SVDConfig) -> str:
    # the sensitivity analysis evaluates on the validation split even without fine-tuning
    return "calibration" if cfg.rank == "sensitivity" and cfg.finetune_epochs == 0 else needs(cfg)


@register("lowrank.svd", SVDConfig, needs=_needs, models=("cnn", "mlp", "encoder", "decoder"))
def svd(model: nn.Module, cfg: SVDConfig, task) -> nn.Module:
    """Truncated-SVD factorization of Linear layers into two thinner Linears."""
    allocated, extra = _allocated_ranks(model, cfg, task) if cfg.rank == "sensitivity" else ({}, {})

    def factorize(name: str, m: nn.Linear):
        rows, cols = m.weight.shape
        s = torch.linalg.svdvals(m.weight.detach().double())
        r = _rank_for(cfg, name, m.weight, s, allocated)
        if not _saves(r, rows, cols):
            raise Skip(f"rank {r} does not reduce parameters (needs rank < {rows * cols / (rows + cols):.1f})")
        a, b = svd_factors(m.weight, r)
        new = Factorized({"kind": "svd", "in_features": cols, "out_features": rows, "rank": r, "bias": m.bias is not None})
        with torch.no_grad():
            new[0].weight.copy_(b)
            new[1].weight.copy_(a)
            if m.bias is not None:
                new[1].bias.copy_(m.bias)
        kept = float(s[:r].square().sum() / s.square().sum().clamp_min(1e-300))
        return new, {"rank": r, "full_rank": min(rows, cols), "energy_kept": round(kept, 6)}

    return decompose(model, cfg, task, "lowrank.svd", (nn.Linear,), factorize, extra=extra)
