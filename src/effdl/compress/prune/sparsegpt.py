"""prune.sparsegpt: one-shot pruning with weight reconstruction (Frantar & Alistarh 2023,
"SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot").

Each Linear layer's weight W (out, in) is pruned so that its output on the calibration inputs X
changes least: ||W X^T - W' X^T||_F^2, whose Hessian in every output row is H = 2 X^T X / rows
(layer_stats). Removing weight j of a row and letting the row's later weights absorb the change
is Optimal Brain Surgeon's step: the error e = w_j / [H^-1]_jj is spread as
w_{j+1:} -= e * [H^-1]_{j, j+1:}, where H^-1 is the inverse Hessian of the columns not yet
processed. Sweeping the columns left to right, those inverses are all rows of one matrix: the upper
Cholesky factor U of H^-1 (row j of U divided by U_jj is row j of (H_{j:, j:})^-1 divided by its
diagonal), so one factorisation serves the whole sweep and every row of W shares it.

- Damping: ``damping`` times the mean of diag(H) is added to the diagonal before factorising
  (1%, the paper's), which keeps H^-1 stable when X^T X is near singular.
- Dead inputs (a feature that is zero on every calibration row) get H_jj = 1; their weights do
  not affect the output on these data, so they are pruned first at no cost and receive no update.
- Blocks: columns are taken ``block_size`` at a time (the paper's lazy batched updates); the
  updates of a block reach the later columns in one matrix product.
- Adaptive mask: within each block the weights to remove are chosen from the current (already
  updated) weights by the OBS error w^2 / U_jj^2: unstructured, the lowest of each output row (the
  layer's count split over the blocks in proportion to their widths and over each block's rows
  as rowwise.py does, so the layer loses exactly round(sparsity * numel) weights); N:M, the lowest
  M - N of each group of M columns, chosen when the sweep reaches the group.
- Weights that are already zero are always in the mask and never moved, so they stay zero and
  pruning twice with the same config changes nothing.

The layers, the calibration data and the stage order are calibrated.py's.
"""
from __future__ import annotations

import logging

import torch
import torch.nn as nn
from pydantic import Field, model_validator

from ...core.errors import ConfigError
from ...core.registry import register
from ..layer_stats import InputStats
from .calibrated import CalibratedPruneConfig, needs, prune_calibrated
from .distribution import keep_one
from .granularity import Granularity, nm_mask
from .rowwise import prune_lowest_per_row, split_counts

log = logging.getLogger(__name__)

__all__ = ["SparseGPTConfig", "output_error", "sparsegpt", "sparsegpt_prune"]


class SparseGPTConfig(CalibratedPruneConfig):
    """SparseGPT: OBS pruning with weight updates from the inverse Hessian of each layer's inputs."""

    damping: float = Field(0.01, gt=0.0, le=1.0, description="added to diag(H) before inverting, as a fraction of its mean")
    block_size: int = Field(128, ge=1, description="columns whose mask is chosen together (lazy-update block)")

    @model_validator(mode="after")
    def _blocks_hold_groups(self):
        if self.pattern == "n:m" and self.block_size % self.m:
            raise ValueError(f"block_size {self.block_size} must be a multiple of m={self.m} so that no N:M group "
                             f"straddles two blocks: set block_size={max(self.m, self.block_size // self.m * self.m)}")
        return self


def _inverse_factor(hessian: torch.Tensor, damping: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, dead): the upper Cholesky factor of the damped H^-1, and the inputs that never fire."""
    h = hessian.detach().double().clone()  # float64: the factorisation is where precision is lost
    dead = h.diagonal() == 0
    h.diagonal()[dead] = 1.0  # their rows and columns are zero: a unit diagonal keeps H invertible
    h.diagonal().add_(damping * float(h.diagonal().mean()))
    lower, info = torch.linalg.cholesky_ex(h)
    if int(info) == 0:
        upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
    if int(info) != 0:
        raise ConfigError(f"the damped Hessian of the layer's inputs is not positive definite (non-finite activations, "
                          f"or damping={damping} too small for these inputs): raise damping (e.g. to 0.1) or check "
                          "the calibration data")
    return upper, dead


def _obs_scores(w: torch.Tensor, d: torch.Tensor, dead: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    """w^2 / d^2, the output error of removing each weight; dead inputs just above already-zero weights."""
    s = w.pow(2) / d.pow(2).unsqueeze(0)
    s = s.masked_fill(dead.unsqueeze(0), torch.finfo(s.dtype).min)
    return s.masked_fill(fixed, float("-inf"))


def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, *, sparsity: float = 0.5,
                    granularity: Granularity = Granularity(), block_size: int = 128, damping: float = 0.01,
                    mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on one (out, in) weight with its input Hessian (in, in): (new weight in float32,
    bool pruned mask). ``mask`` (True = prune) fixes the mask instead of choosing it (the update
    rule alone); otherwise it is chosen adaptively as the module docstring says."""
    w = weight.detach().float().clone()
    rows, cols = w.shape
    if hessian.shape != (cols, cols):
        raise ConfigError(f"the Hessian is {tuple(hessian.shape)}, the weight has {cols} inputs: take both from one layer")
    if mask is not None and mask.shape != w.shape:
        raise ConfigError(f"mask has shape {tuple(mask.shape)}, the weight {tuple(w.shape)}")
    nm = granularity.kind == "n:m"
    if nm and block_size % granularity.m:
        raise ConfigError(f"block_size {block_size} must be a multiple of m={granularity.m}")
    if nm:
        granularity.check("weight", w)
    upper, dead = _inverse_factor(hessian, damping)
    upper = upper.to(w.device, torch.float32)
    dead = dead.to(w.device)
    fixed = w == 0  # already pruned: stays zero
    pruned = torch.zeros_like(fixed)
    starts = list(range(0, cols, block_size))
    widths = [min(block_size, cols - s) for s in starts]
    if mask is None and not nm:
        counts = split_counts(int(round(keep_one(sparsity, w.numel()) * w.numel())), [rows * b for b in widths])
    for b, (i1, width) in enumerate(zip(starts, widths)):
        i2 = i1 + width
        w1, hinv1 = w[:, i1:i2].clone(), upper[i1:i2, i1:i2]
        d = hinv1.diagonal()
        if mask is not None:
            p1 = mask[:, i1:i2].to(w.device).bool() | fixed[:, i1:i2]
        elif nm:
            p1 = fixed[:, i1:i2].clone()  # groups are chosen as the sweep reaches them
        else:
            p1 = prune_lowest_per_row(_obs_scores(w1, d, dead[i1:i2], fixed[:, i1:i2]), counts[b]) | fixed[:, i1:i2]
        err1 = torch.zeros_like(w1)
        for j in range(width):
            if mask is None and nm and j % granularity.m == 0:
                g = slice(j, j + granularity.m)
                s = _obs_scores(w1[:, g], d[g], dead[i1:i2][g], fixed[:, i1:i2][:, g])
                p1[:, g] |= ~nm_mask(s, w1[:, g], granularity.n, granularity.m)
            col = w1[:, j]
            q = torch.where(p1[:, j], torch.zeros((), device=w.device), col)
            e = (col - q) / d[j]
            w1[:, j:] -= e.unsqueeze(1) * hinv1[j, j:].unsqueeze(0)  # OBS: the row's later weights absorb it
            w1[:, j] = q
            err1[:, j] = e
        w[:, i1:i2] = w1
        w[:, i2:] -= err1 @ upper[i1:i2, i2:]  # the block's updates reach the later columns at once
        pruned[:, i1:i2] = p1
    w.masked_fill_(pruned, 0.0)
    return w, pruned


def output_error(before: torch.Tensor, after: torch.Tensor, hessian: torch.Tensor) -> float:
    """||W X^T - W' X^T||_F / ||W X^T||_F from the Hessian 2 X^T X / rows alone (0.0 for a zero layer)."""
    h = hessian.to(before.device, torch.float64)
    wd = before.detach().double()
    delta = wd - after.detach().double()
    num, den = float(((delta @ h) * delta).sum()), float(((wd @ h) * wd).sum())
    return (max(num, 0.0) / den) ** 0.5 if den > 0 else 0.0


@register("prune.sparsegpt", SparseGPTConfig, needs=needs, models=("mlp", "encoder", "decoder"),
          example=lambda: SparseGPTConfig(num_batches=1, batch_size=8, block_size=16))
def sparsegpt(model: nn.Module, cfg: SparseGPTConfig, task) -> nn.Module:
    """SparseGPT: one-shot OBS pruning with weight reconstruction, unstructured or N:M (calibration data)."""
    gran = cfg.granularity()

    @torch.no_grad()
    def prune_layer(name: str, layer: nn.Linear, stats: InputStats) -> None:
        h = stats.hessian()
        try:
            new, pruned = sparsegpt_prune(layer.weight, h, sparsity=cfg.sparsity, granularity=gran,
                                          block_size=cfg.block_size, damping=cfg.damping)
        except ConfigError as exc:
            raise ConfigError(f"prune.sparsegpt, layer {name!r}: {exc}") from None
        if log.isEnabledFor(logging.INFO):  # the error costs one more (out, in) x (in, in) product
            log.info("prune.sparsegpt %s: %.4f sparse, relative output error %.4g", name,
                     float(pruned.float().mean()), output_error(layer.weight, new, h))
        layer.weight.copy_(new.to(layer.weight.dtype))
        layer.weight.masked_fill_(pruned, 0.0)  # +0.0 also where the dtype cast rounded

    return prune_calibrated(model, cfg, task, prune_layer, hessian=True)
