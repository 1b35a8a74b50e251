"""prune.magnitude: unstructured magnitude pruning, global or per layer, one-shot or iterative.

The special case of ``prune.weights`` with saliency l1 and unstructured granularity (one
implementation: weights.py and its parts). Iterative pruning removes a constant fraction of the
remaining weights per round, s_r = 1 - (1 - s)^(r/R), fine-tuning in between; fine-tuning runs with
the masks attached, so the result is exactly as sparse as asked.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field

from ...core.config import TechniqueConfig
from ...core.registry import register
from . import saliency as sal
from .distribution import PRUNABLE, build_masks, prunable_layers
from .granularity import Granularity
from .masks import layer_sparsity
from .weights import WeightPruneConfig, prune_weights

__all__ = ["PRUNABLE", "MagnitudeConfig", "magnitude", "prune_to"]


class MagnitudeConfig(TechniqueConfig):
    """Unstructured magnitude pruning."""

    sparsity: float = Field(0.5, ge=0.0, lt=1.0, description="fraction of prunable weights set to zero")
    scope: Literal["global", "layer"] = Field("global", description="one threshold over all layers, or the same ratio per layer")
    schedule: Literal["oneshot", "iterative"] = "oneshot"
    rounds: int = Field(3, ge=1, le=50, description="pruning rounds for the iterative schedule")
    finetune_epochs: float = Field(0.0, ge=0.0, description="fine-tuning epochs after pruning (per round when iterative)")
    lr: float = Field(1e-3, gt=0.0)
    exclude: tuple[str, ...] = Field((), description="module-name glob patterns left dense")

    def as_weights(self) -> WeightPruneConfig:
        """The equivalent prune.weights config."""
        return WeightPruneConfig(
            sparsity=self.sparsity, saliency="l1", granularity="unstructured",
            distribution="global" if self.scope == "global" else "uniform", schedule=self.schedule,
            rounds=self.rounds, finetune_epochs=self.finetune_epochs, lr=self.lr, exclude=self.exclude,
        )


def _needs(cfg: MagnitudeConfig) -> str:
    return "training" if cfg.finetune_epochs > 0 else "nothing"


@torch.no_grad()
def prune_to(model: nn.Module, sparsity: float, scope: str = "global", exclude=()) -> dict[str, float]:
    """Zero the smallest weights in place so that ``sparsity`` of the prunable weights are zero.

    Returns each layer's resulting sparsity. Sparsity 0.0 leaves the model bit-identical.
    """
    layers = prunable_layers(model, exclude)
    names = [n for n, _ in layers]
    masks = build_masks(layers, sal.l1(model, names), sparsity, Granularity("unstructured"),
                        "global" if scope == "global" else "uniform")
    for name, m in layers:
        m.weight.masked_fill_(~masks[name], 0.0)  # +0.0 (mul would leave -0.0 for negatives)
    return {n: s for n, s in layer_sparsity(model).items() if n in masks}


@register("prune.magnitude", MagnitudeConfig, needs=_needs, models=("cnn", "mlp", "encoder", "decoder"))
def magnitude(model: nn.Module, cfg: MagnitudeConfig, task) -> nn.Module:
    """Unstructured magnitude pruning (global or per-layer, one-shot or iterative)."""
    return prune_weights(model, cfg.as_weights(), task)
