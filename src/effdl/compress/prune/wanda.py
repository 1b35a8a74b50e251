"""prune.wanda: pruning by weights and activations (Sun et al. 2023, "A Simple and Effective Pruning
Approach for Large Language Models").

A weight's score is S_ij = |W_ij| * ||X_j||_2: its magnitude times the norm of its input feature
over the calibration rows (tokens or examples), a cheap estimate of how much output it carries;
features with large activations (the outliers of LLMs) protect their weights where magnitude
pruning would remove them. The lowest scores of each output row are removed (the paper's
comparison group, see rowwise.py), or, for N:M, the lowest M - N of every M consecutive inputs.
The remaining weights are not changed (no update, unlike SparseGPT).

An input that is zero on every calibration row scores 0: its weights go first, at no cost on
these data. The layers, the calibration data and the stage order are calibrated.py's.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ...core.registry import register
from ..layer_stats import InputStats
from .calibrated import CalibratedPruneConfig, needs, prune_calibrated
from .distribution import keep_one
from .granularity import Granularity, nm_mask
from .rowwise import prune_lowest_per_row

__all__ = ["WandaConfig", "wanda", "wanda_mask", "wanda_scores"]


class WandaConfig(CalibratedPruneConfig):
    """Wanda: |W| x input-feature norm, per output row (or N:M), no weight update."""


def wanda_scores(weight: torch.Tensor, col_norm: torch.Tensor) -> torch.Tensor:
    """S = |W| * ||X_j||_2 for a (out, in) weight and the (in,) input-feature norms."""
    return weight.detach().float().abs() * col_norm.to(weight.device, torch.float32).unsqueeze(0)


def wanda_mask(weight: torch.Tensor, col_norm: torch.Tensor, sparsity: float, granularity: Granularity) -> torch.Tensor:
    """Bool keep-mask of a (out, in) weight: N:M groups, or round(sparsity * numel) weights removed,
    the lowest-scoring of each row (at least one weight of the layer kept)."""
    scores = wanda_scores(weight, col_norm)
    if granularity.kind == "n:m":
        return nm_mask(scores, weight, granularity.n, granularity.m)
    scores[weight.detach() == 0] = float("-inf")  # already pruned: counted first, never revived
    k = int(round(keep_one(sparsity, weight.numel()) * weight.numel()))
    return ~prune_lowest_per_row(scores, k)


@register("prune.wanda", WandaConfig, needs=needs, models=("mlp", "encoder", "decoder"),
          example=lambda: WandaConfig(num_batches=1, batch_size=8))
def wanda(model: nn.Module, cfg: WandaConfig, task) -> nn.Module:
    """Wanda: one-shot pruning by |weight| x input norm per output row or N:M (calibration data, no update)."""
    gran = cfg.granularity()

    @torch.no_grad()
    def prune_layer(name: str, layer: nn.Linear, stats: InputStats) -> None:
        keep = wanda_mask(layer.weight, stats.col_norm(), cfg.sparsity, gran)
        layer.weight.masked_fill_(~keep, 0.0)  # +0.0 (mul would leave -0.0 for negatives)

    return prune_calibrated(model, cfg, task, prune_layer, hessian=False)
