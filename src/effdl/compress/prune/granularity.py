"""Granularity: what one pruning unit is, and turning scores into a 0/1 mask for one layer.

- ``unstructured``: single weights.
- ``n:m``: N of every M consecutive weights along the input dimension are kept (2:4 is what sparse
  tensor cores run; Mishra et al. 2021). The layer's sparsity is fixed at 1 - N/M.
- ``block``: k x l tiles of the (out, in) matrix (e.g. 1x4, 4x4), scored by the group norm of the
  saliency (sum for L1, sqrt of summed squares for L2). Edge tiles of a matrix not divisible by the
  block are smaller and counted by their real size.

Conv weights (out, in, *kernel) are viewed as (out, in * prod(kernel)) in PyTorch's memory order,
so "along the input dimension" means along that flattened row.

Weights that are already exactly zero score -inf (a group whose weights are all zero likewise):
they are removed first, so existing zeros count toward the target and pruning twice is idempotent.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ...core.errors import ConfigError, suggest

KINDS = ("unstructured", "n:m", "block")


@dataclass(frozen=True)
class Granularity:
    kind: str = "unstructured"
    n: int = 2
    m: int = 4
    block: tuple[int, int] = (1, 4)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown granularity {self.kind!r}: use one of {KINDS}.{suggest(self.kind, KINDS)}")
        if self.kind == "n:m" and not (1 <= self.n < self.m):
            raise ConfigError(
                f"N:M sparsity needs 1 <= N < M (N weights kept of every M), got N={self.n}, M={self.m}: "
                "N >= M would prune nothing; use e.g. n=2, m=4"
            )
        if self.kind == "block" and (len(self.block) != 2 or min(self.block) < 1):
            raise ConfigError(f"block must be two positive ints (rows, cols) such as (1, 4), got {self.block!r}")

    @property
    def fixed_sparsity(self) -> float | None:
        """N:M fixes every layer's sparsity; the other kinds take any target."""
        return 1.0 - self.n / self.m if self.kind == "n:m" else None

    def check(self, name: str, weight: torch.Tensor) -> None:
        rows, cols = weight.shape[0], math.prod(weight.shape[1:])
        if self.kind == "n:m" and cols % self.m:
            raise ConfigError(
                f"layer {name!r}: its input dimension ({cols} = in x kernel of weight {tuple(weight.shape)}) is not "
                f"divisible by M={self.m}, so {self.n}:{self.m} groups do not tile it; exclude the layer "
                f"(exclude=({name!r},)) or pick an M that divides {cols}"
            )
        if self.kind == "block" and (rows < self.block[0] or cols < self.block[1]):
            raise ConfigError(
                f"layer {name!r} ({rows} x {cols} as a matrix) is smaller than the {self.block[0]}x{self.block[1]} "
                f"block: exclude it (exclude=({name!r},)) or use a smaller block"
            )


def _alive_scores(scores: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    s = scores.detach().float().reshape(weight.shape[0], -1).clone()
    s[(weight.detach() == 0).reshape(s.shape)] = float("-inf")
    return s


def groups(scores: torch.Tensor, weight: torch.Tensor, gran: Granularity, reduce: str = "sum"):
    """(group scores, group index of every weight (flat), group sizes) for unstructured and block kinds."""
    if gran.kind == "unstructured":
        s = _alive_scores(scores, weight).reshape(-1)
        return s, torch.arange(s.numel()), torch.ones(s.numel(), dtype=torch.long)
    if gran.kind != "block":
        raise ConfigError(f"granularity {gran.kind!r} has no threshold groups (N:M keeps N per group instead)")
    rows, cols = weight.shape[0], math.prod(weight.shape[1:])
    kr, kc = gran.block
    nbc = -(-cols // kc)
    r = torch.arange(rows).unsqueeze(1) // kr
    c = torch.arange(cols).unsqueeze(0) // kc
    index = (r * nbc + c).reshape(-1)
    count = int(index.max()) + 1
    raw = scores.detach().float().reshape(-1)
    g = torch.zeros(count).index_add_(0, index, raw)
    if reduce == "sqrt_sum":
        g = g.clamp_min(0).sqrt()
    sizes = torch.bincount(index, minlength=count)
    alive = torch.zeros(count).index_add_(0, index, (weight.detach() != 0).reshape(-1).float())
    g[alive == 0] = float("-inf")
    return g, index, sizes


def prune_lowest(gscores: torch.Tensor, sizes: torch.Tensor, k: int) -> torch.Tensor:
    """Bool per group: the lowest-scoring groups whose sizes add up to at most ``k`` weights.

    A stable sort breaks ties by position, so the result is deterministic.
    """
    order = torch.sort(gscores, stable=True).indices
    cum = torch.cumsum(sizes[order], 0)
    pruned = torch.zeros(gscores.numel(), dtype=torch.bool)
    pruned[order[cum <= k]] = True
    return pruned


def nm_mask(scores: torch.Tensor, weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the N highest scores of every M consecutive weights along the (flattened) input dim."""
    s = _alive_scores(scores, weight)
    rows, cols = s.shape
    grouped = s.reshape(rows, cols // m, m)
    keep = torch.zeros_like(grouped, dtype=torch.bool)
    keep.scatter_(-1, grouped.topk(n, dim=-1).indices, True)
    return keep.reshape(weight.shape)


def layer_mask(name: str, scores: torch.Tensor, weight: torch.Tensor, sparsity: float,
               gran: Granularity, reduce: str = "sum") -> torch.Tensor:
    """Bool keep-mask of one layer at ``sparsity`` (ignored for N:M, whose sparsity is fixed)."""
    check_ratio(sparsity, f"sparsity of layer {name!r}")
    gran.check(name, weight)
    if gran.kind == "n:m":
        return nm_mask(scores, weight, gran.n, gran.m)
    g, index, sizes = groups(scores, weight, gran, reduce)
    pruned = prune_lowest(g, sizes, int(round(sparsity * weight.numel())))
    return (~pruned[index]).reshape(weight.shape)


def check_ratio(value: float, what: str = "sparsity") -> None:
    if not isinstance(value, (int, float)) or not (0.0 <= float(value) < 1.0):
        raise ConfigError(f"{what} must be a number in [0, 1), got {value!r} (1.0 would remove every weight)")
