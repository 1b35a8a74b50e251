"""lowrank.tt: a Linear layer's matrix as a tensor train (TT-SVD, Oseledets 2011; TT layers,
Novikov et al. 2015).

W (m x n) with m = m_1 ... m_d and n = n_1 ... n_d is viewed as a d-way tensor with modes (m_k n_k)
and split by sequential truncated SVDs into cores G_k (r_{k-1}, m_k, n_k, r_k), r_0 = r_d = 1, every
bond rank at most ``rank``. The layer becomes a ``TTLinear`` that contracts the input with the cores
(never forming W); parameters sum_k r_{k-1} m_k n_k r_k (+ bias). Mode factorizations are given
(``in_modes``/``out_modes``) or chosen automatically: ``cores`` factors as equal as possible
(784 -> 28 x 28 for two cores, 7 x 8 x 14 for three).
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from ...core.errors import ConfigError
from ...core.registry import register
from .common import LowRankConfig, LowRankLayer, LowRankRecord, Skip, check_rank, decompose, needs
from .modules import TTLinear

__all__ = ["TTConfig", "balanced_factors", "tt", "tt_svd"]

Mode = Annotated[int, Field(ge=1)]


class TTLayer(LowRankLayer):
    out_modes: list[int]
    in_modes: list[int]
    ranks: list[int]  # the bond ranks between consecutive cores


class TTRecord(LowRankRecord):
    key = "lowrank.tt"
    layers: dict[str, TTLayer]


class TTConfig(LowRankConfig):
    """Tensor-train decomposition of Linear layers."""

    rank: int = Field(8, ge=1, description="largest bond rank between consecutive cores")
    cores: int = Field(2, ge=2, le=8, description="number of cores when the modes are chosen automatically")
    in_modes: tuple[Mode, ...] | None = Field(None, min_length=2, description="factors of in_features (default: automatic)")
    out_modes: tuple[Mode, ...] | None = Field(None, min_length=2, description="factors of out_features (default: automatic)")


@lru_cache(maxsize=256)
def balanced_factors(n: int, d: int) -> tuple[int, ...]:
    """n as d ascending factors (1 allowed) with the smallest largest factor, then the smallest sum."""
    def split(rest: int, parts: int, low: int):
        if parts == 1:
            if rest >= low:
                yield (rest,)
            return
        for f in range(low, rest + 1):
            if f ** parts > rest:  # ascending factors: the smallest cannot exceed the parts-th root
                return
            if rest % f == 0:
                yield from ((f, *tail) for tail in split(rest // f, parts - 1, f))

    return min(split(n, d, 1), key=lambda fs: (fs[-1], sum(fs)))


def bond_limits(out_modes, in_modes) -> list[int]:
    """The largest useful rank at each bond: min(prod of modes before, prod of modes after)."""
    p = [a * b for a, b in zip(out_modes, in_modes)]
    return [min(math.prod(p[: k + 1]), math.prod(p[k + 1 :])) for k in range(len(p) - 1)]


def tt_svd(weight: torch.Tensor, out_modes, in_modes, rank: int) -> list[torch.Tensor]:
    """TT cores of ``weight`` (float64 SVDs), each (r_{k-1}, m_k, n_k, r_k)."""
    d = len(out_modes)
    t = weight.detach().double().reshape(*out_modes, *in_modes)
    t = t.permute(*[i for k in range(d) for i in (k, d + k)])  # (m_1, n_1, m_2, n_2, ...)
    p = [a * b for a, b in zip(out_modes, in_modes)]
    cores, r_prev, rest = [], 1, t.reshape(p[0], -1)
    for k in range(d - 1):
        u, s, vh = torch.linalg.svd(rest.reshape(r_prev * p[k], -1), full_matrices=False)
        r = min(rank, len(s))
        cores.append(u[:, :r].reshape(r_prev, out_modes[k], in_modes[k], r))
        rest, r_prev = s[:r, None] * vh[:r], r
    cores.append(rest.reshape(r_prev, out_modes[-1], in_modes[-1], 1))
    return [c.to(weight.dtype) for c in cores]


def _modes(cfg: TTConfig, name: str, m: nn.Linear) -> tuple[tuple[int, ...], tuple[int, ...]]:
    d = len(cfg.in_modes or cfg.out_modes or ()) or cfg.cores
    ins = cfg.in_modes or balanced_factors(m.in_features, d)
    outs = cfg.out_modes or balanced_factors(m.out_features, d)
    if len(ins) != len(outs):
        raise ConfigError(f"in_modes {ins} and out_modes {outs} must have the same length (one pair per core)")
    for modes, size, what in ((ins, m.in_features, "in_features"), (outs, m.out_features, "out_features")):
        if math.prod(modes) != size:
            raise ConfigError(f"modes {modes} multiply to {math.prod(modes)} but layer {name!r} has {what}={size}: "
                              "give modes whose product is the layer size (and select that layer with 'layers')")
    return tuple(outs), tuple(ins)


@register("lowrank.tt", TTConfig, needs=needs, models=("cnn", "mlp", "encoder", "decoder"))
def tt(model: nn.Module, cfg: TTConfig, task) -> nn.Module:
    """Tensor-train (TT-SVD) decomposition of Linear layers."""

    def factorize(name: str, m: nn.Linear):
        outs, ins = _modes(cfg, name, m)
        limits = bond_limits(outs, ins)
        check_rank(name, cfg.rank, max(limits), "TT rank")
        ranks = [min(cfg.rank, lim) for lim in limits]
        bonds = [1, *ranks, 1]
        n = sum(bonds[k] * outs[k] * ins[k] * bonds[k + 1] for k in range(len(outs)))
        if n >= m.weight.numel():
            raise Skip(f"TT ranks {ranks} over modes {outs} x {ins} hold {n} >= {m.weight.numel()} weights")
        new = TTLinear({"kind": "tt", "out_modes": list(outs), "in_modes": list(ins), "ranks": ranks,
                        "bias": m.bias is not None})
        with torch.no_grad():
            for p, c in zip(new.cores, tt_svd(m.weight, outs, ins, cfg.rank)):
                p.copy_(c)
            if m.bias is not None:
                new.bias.copy_(m.bias)
        return new, {"out_modes": list(outs), "in_modes": list(ins), "ranks": ranks}

    return decompose(model, cfg, task, "lowrank.tt", (nn.Linear,), factorize)
