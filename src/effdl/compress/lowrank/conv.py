"""Conv2d kernel decompositions: lowrank.tucker, lowrank.cp, lowrank.spatial_svd.

A kernel K (C_out, C_in, kh, kw) is replaced by a chain of smaller convs whose composition is the
conv with an approximated kernel K' (stride, padding, dilation and padding mode preserved; the bias
goes on the last conv):

- Tucker-2 on the channel modes (Kim et al. 2016): K' = G x_0 U_out x_1 U_in, computed by tensorly's
  ``partial_tucker`` (HOOI from an HOSVD start) -> 1x1 (C_in -> R_in), kh x kw (R_in -> R_out), 1x1 (R_out -> C_out).
  Parameters C_in R_in + R_in R_out kh kw + R_out C_out.
- CP (Lebedev et al. 2015): K' = sum_r A_out[:, r] o A_in[:, r] o A_h[:, r] o A_w[:, r] by tensorly's
  ``parafac`` (ALS) -> 1x1 (C_in -> R), kh x 1 depthwise, 1 x kw depthwise, 1x1 (R -> C_out).
  Parameters R (C_in + kh + kw + C_out). ALS may need fine-tuning afterwards (the paper fine-tunes).
- Spatial SVD (Jaderberg et al. 2014, scheme 2): the truncated SVD of K reshaped to
  (C_in kh) x (C_out kw) -> kh x 1 (C_in -> R), then 1 x kw (R -> C_out). Parameters R (C_in kh + C_out kw).

``rank='ratio'`` means, for Tucker, ranks round(ratio * C) per channel mode; for spatial SVD,
round(ratio * min(C_in kh, C_out kw)); for CP (whose rank is not bounded by a dimension), the rank
whose factors hold ``ratio`` of the kernel's parameters. Grouped convs are refused. A layer whose
decomposition would not save parameters is left dense and listed in the records.
"""
from __future__ import annotations

import math
import warnings
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from ...core.registry import register
from .common import LowRankConfig, LowRankLayer, LowRankRecord, Skip, check_rank, decompose, needs
from .modules import Factorized

__all__ = ["CPConfig", "SpatialSVDConfig", "TuckerConfig", "cp", "cp_factors", "factorized", "spatial_factors",
           "spatial_svd", "tucker", "tucker_factors"]


class ConvLayer(LowRankLayer):
    rank: int | None = None  # cp, spatial_svd
    ranks: list[int] | None = None  # tucker: (input, output) ranks


class TuckerRecord(LowRankRecord):
    key = "lowrank.tucker"
    layers: dict[str, ConvLayer]


class CPRecord(LowRankRecord):
    key = "lowrank.cp"
    layers: dict[str, ConvLayer]


class SpatialSVDRecord(LowRankRecord):
    key = "lowrank.spatial_svd"
    layers: dict[str, ConvLayer]


class _ConvConfig(LowRankConfig):
    rank: Annotated[int, Field(ge=1)] | Literal["ratio"] = Field(
        "ratio", description="an integer rank for every layer, or 'ratio' to derive it per layer from `ratio`")
    ratio: float = Field(0.5, gt=0.0, le=1.0, description="rank='ratio': see the technique (rank or parameter fraction)")


class TuckerConfig(_ConvConfig):
    """Tucker-2 decomposition of Conv2d kernels on the channel modes."""

    n_iter: int = Field(100, ge=0, le=10000, description="HOOI iterations after the HOSVD start (0: plain HOSVD)")


class CPConfig(_ConvConfig):
    """CP decomposition of Conv2d kernels into separable factors."""

    n_iter: int = Field(200, ge=1, le=10000, description="ALS iterations")


class SpatialSVDConfig(_ConvConfig):
    """Spatial SVD of Conv2d kernels into a kh x 1 and a 1 x kw conv."""


def _spec(kind: str, conv: nn.Conv2d, **ranks) -> dict:
    pad = conv.padding if isinstance(conv.padding, str) else list(conv.padding)
    return {"kind": kind, "in_channels": conv.in_channels, "out_channels": conv.out_channels,
            "kernel_size": list(conv.kernel_size), "stride": list(conv.stride), "padding": pad,
            "dilation": list(conv.dilation), "padding_mode": conv.padding_mode, "bias": conv.bias is not None, **ranks}


def _tensorly():
    import tensorly as tl  # decompositions on the numpy backend in float64, whatever the global backend

    return tl, tl.backend_context("numpy")


# -- the decompositions: kernel -> the weights of the replacing convs, in layer order ---------------
def tucker_factors(kernel: torch.Tensor, r_in: int, r_out: int, n_iter: int = 100) -> list[torch.Tensor]:
    """[U_in^T (R_in, C_in, 1, 1), core (R_out, R_in, kh, kw), U_out (C_out, R_out, 1, 1)]."""
    from tensorly.decomposition import partial_tucker

    tl, backend = _tensorly()
    with backend:
        (core, (u_out, u_in)), _ = partial_tucker(tl.tensor(kernel.detach().double().numpy()), rank=[r_out, r_in],
                                                  modes=[0, 1], init="svd", n_iter_max=n_iter, tol=1e-10)
    out = [torch.from_numpy(u_in.T.copy())[..., None, None], torch.from_numpy(core), torch.from_numpy(u_out)[..., None, None]]
    return [w.to(kernel.dtype) for w in out]


def cp_factors(kernel: torch.Tensor, rank: int, n_iter: int = 200) -> list[torch.Tensor]:
    """[A_in^T (R, C_in, 1, 1), A_h^T (R, 1, kh, 1), A_w^T (R, 1, 1, kw), A_out * lambda (C_out, R, 1, 1)]."""
    from tensorly.decomposition import parafac

    cout, cin, kh, kw = kernel.shape
    tl, backend = _tensorly()
    with backend, warnings.catch_warnings():
        # the SVD start pads with random columns when the rank exceeds a mode's size; seeded, so repeatable
        warnings.filterwarnings("ignore", message="Trying to compute SVD")
        lam, (a_out, a_in, a_h, a_w) = parafac(tl.tensor(kernel.detach().double().numpy()), rank, n_iter_max=n_iter,
                                               init="svd", tol=1e-10, random_state=0)
    out = [a_in.T.reshape(rank, cin, 1, 1), a_h.T.reshape(rank, 1, kh, 1), a_w.T.reshape(rank, 1, 1, kw),
           (a_out * lam).reshape(cout, rank, 1, 1)]
    return [torch.from_numpy(np.ascontiguousarray(w)).to(kernel.dtype) for w in out]


def spatial_factors(kernel: torch.Tensor, rank: int) -> list[torch.Tensor]:
    """[vertical (R, C_in, kh, 1), horizontal (C_out, R, 1, kw)] from the SVD of K as (C_in kh) x (C_out kw)."""
    from .svd import svd_factors

    cout, cin, kh, kw = kernel.shape
    a, b = svd_factors(kernel.detach().permute(1, 2, 0, 3).reshape(cin * kh, cout * kw), rank)  # rows (i, y), cols (o, x)
    return [a.T.reshape(rank, cin, kh, 1), b.reshape(rank, cout, kw).permute(1, 0, 2).reshape(cout, rank, 1, kw)]


def factorized(spec: dict, weights: list[torch.Tensor], bias: torch.Tensor | None) -> Factorized:
    """The Factorized module of ``spec`` holding ``weights`` (and ``bias`` on its last conv)."""
    new = Factorized(spec)
    with torch.no_grad():
        for layer, w in zip(new, weights):
            layer.weight.copy_(w)
        if bias is not None:
            new[-1].bias.copy_(bias)
    return new


def _check_saves(spec: dict, conv: nn.Conv2d) -> None:
    n = sum(m.weight.numel() for m in Factorized(spec).modules() if isinstance(m, nn.Conv2d))
    if n >= conv.weight.numel():
        raise Skip(f"{spec['kind']} at rank {spec.get('ranks', spec.get('rank'))} does not reduce parameters "
                   f"({n} >= {conv.weight.numel()} weights)")


def _grouped(name: str, m: nn.Conv2d) -> str | None:
    return f"grouped conv (groups={m.groups}) is not supported; exclude it" if m.groups != 1 else None


def _spatial_only(name: str, m: nn.Conv2d) -> str | None:
    if m.kernel_size == (1, 1):
        return "a 1x1 kernel has no spatial extent to decompose"
    return _grouped(name, m)


def _run(model, cfg, task, technique: str, accept, plan) -> nn.Module:
    """``plan(name, conv) -> (spec, make_weights)``; the weights are computed only for layers that save."""
    def factorize(name: str, m: nn.Conv2d):
        spec, make = plan(name, m)
        _check_saves(spec, m)
        ranks = {k: spec[k] for k in ("rank", "ranks") if k in spec}
        return factorized(spec, make(m.weight), m.bias), ranks

    return decompose(model, cfg, task, technique, (nn.Conv2d,), factorize, accept=accept)


@register("lowrank.tucker", TuckerConfig, needs=needs, models=("cnn",), example=lambda: TuckerConfig(n_iter=5))
def tucker(model: nn.Module, cfg: TuckerConfig, task) -> nn.Module:
    """Tucker-2 decomposition of Conv2d kernels: 1x1, smaller kxk, 1x1."""
    def plan(name, m):
        ranks = []
        for c in (m.in_channels, m.out_channels):
            if isinstance(cfg.rank, int):
                check_rank(name, cfg.rank, c)
            ranks.append(cfg.rank if isinstance(cfg.rank, int) else max(1, round(cfg.ratio * c)))
        # a mode's rank cannot exceed the size of the other modes together (the core's unfolding):
        # clipping changes no reconstruction, only drops dead channels (e.g. 1x1 convs at R_out > R_in)
        area = m.kernel_size[0] * m.kernel_size[1]
        ranks = [min(ranks[0], ranks[1] * area), min(ranks[1], ranks[0] * area)]
        return _spec("tucker", m, ranks=ranks), lambda w: tucker_factors(w, *ranks, n_iter=cfg.n_iter)

    return _run(model, cfg, task, "lowrank.tucker", _grouped, plan)


def cp_max_rank(shape) -> int:
    """An upper bound of the CP rank of a tensor: the product of all dimensions but the largest."""
    return math.prod(sorted(shape)[:-1])


@register("lowrank.cp", CPConfig, needs=needs, models=("cnn",), example=lambda: CPConfig(n_iter=5))
def cp(model: nn.Module, cfg: CPConfig, task) -> nn.Module:
    """CP decomposition of Conv2d kernels: 1x1, kx1 depthwise, 1xk depthwise, 1x1."""
    def plan(name, m):
        cout, cin, kh, kw = m.weight.shape
        if isinstance(cfg.rank, int):
            check_rank(name, cfg.rank, cp_max_rank(m.weight.shape))
        r = cfg.rank if isinstance(cfg.rank, int) else max(1, math.floor(cfg.ratio * m.weight.numel() / (cin + cout + kh + kw)))
        return _spec("cp", m, rank=r), lambda w: cp_factors(w, r, cfg.n_iter)

    return _run(model, cfg, task, "lowrank.cp", _spatial_only, plan)


@register("lowrank.spatial_svd", SpatialSVDConfig, needs=needs, models=("cnn",))
def spatial_svd(model: nn.Module, cfg: SpatialSVDConfig, task) -> nn.Module:
    """Spatial SVD of Conv2d kernels: a kx1 conv then a 1xk conv."""
    def plan(name, m):
        cout, cin, kh, kw = m.weight.shape
        full = min(cin * kh, cout * kw)
        if isinstance(cfg.rank, int):
            check_rank(name, cfg.rank, full)
        r = cfg.rank if isinstance(cfg.rank, int) else max(1, round(cfg.ratio * full))
        return _spec("spatial_svd", m, rank=r), lambda w: spatial_factors(w, r)

    return _run(model, cfg, task, "lowrank.spatial_svd", _spatial_only, plan)
