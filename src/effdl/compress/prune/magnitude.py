"""prune.magnitude: unstructured magnitude pruning, global or per layer, one-shot or iterative.

Zeroes the smallest-|w| weights of Conv/Linear layers. Iterative pruning removes a constant fraction
of the remaining weights per round, s_r = 1 - (1 - s)^(r/R), fine-tuning in between (the textbook's
iterative-vs-one-shot lesson: small steps with recovery keep more accuracy). Fine-tuning keeps pruned
weights at zero (Task.train's sparsity keeper), so the result is exactly as sparse as asked.
"""
from __future__ import annotations

import warnings
from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field

from ...core.config import TechniqueConfig
from ...core.errors import ConfigError
from ...core.registry import register
from ...core.scope import weighted_layers

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class MagnitudeConfig(TechniqueConfig):
    """Unstructured magnitude pruning."""

    sparsity: float = Field(0.5, ge=0.0, lt=1.0, description="fraction of prunable weights set to zero")
    scope: Literal["global", "layer"] = Field("global", description="one threshold over all layers, or the same ratio per layer")
    schedule: Literal["oneshot", "iterative"] = "oneshot"
    rounds: int = Field(3, ge=1, le=50, description="pruning rounds for the iterative schedule")
    finetune_epochs: float = Field(0.0, ge=0.0, description="fine-tuning epochs after pruning (per round when iterative)")
    lr: float = Field(1e-3, gt=0.0)
    exclude: tuple[str, ...] = Field((), description="module-name glob patterns left dense")


def _needs(cfg: MagnitudeConfig) -> str:
    return "training" if cfg.finetune_epochs > 0 else "nothing"


@torch.no_grad()
def prune_to(model: nn.Module, sparsity: float, scope: str = "global", exclude=()) -> dict[str, float]:
    """Zero the smallest weights in place so that ``sparsity`` of the prunable weights are zero.

    Returns each layer's resulting sparsity. Sparsity 0.0 leaves the model bit-identical.
    """
    layers = weighted_layers(model, PRUNABLE, exclude)
    if not layers:
        raise ConfigError("the model has no Conv/Linear layer left to prune (check 'exclude')")
    for name, m in layers:
        if not torch.isfinite(m.weight).all():
            raise ConfigError(f"layer {name!r} has NaN/Inf weights: fix the model before pruning")
    if sparsity > 0:
        if scope == "global":
            scores = torch.cat([m.weight.detach().abs().flatten() for _, m in layers])
            k = int(round(sparsity * scores.numel()))
            if k > 0:
                # k-th smallest magnitude; ties broken by keeping exactly k through index selection
                idx = torch.topk(scores, k, largest=False).indices
                keep = torch.ones_like(scores, dtype=torch.bool)
                keep[idx] = False
                offset = 0
                for name, m in layers:
                    n = m.weight.numel()
                    mask = keep[offset : offset + n].view_as(m.weight)
                    offset += n
                    if not mask.any():
                        # An emptied layer disconnects the network; keep its largest weight.
                        warnings.warn(f"global pruning would empty {name!r}; keeping its largest weight", stacklevel=2)
                        mask.view(-1)[m.weight.abs().argmax()] = True
                    m.weight.masked_fill_(~mask, 0.0)  # +0.0 (mul would leave -0.0 for negatives)
        else:
            for _, m in layers:
                w = m.weight
                k = int(round(sparsity * w.numel()))
                if k > 0:
                    idx = torch.topk(w.abs().flatten(), k, largest=False).indices
                    w.view(-1)[idx] = 0.0
    return {name: float((m.weight == 0).float().mean()) for name, m in layers}


@register("prune.magnitude", MagnitudeConfig, needs=_needs)
def magnitude(model: nn.Module, cfg: MagnitudeConfig, task) -> nn.Module:
    """Unstructured magnitude pruning (global or per-layer, one-shot or iterative)."""
    if type(model).__name__ == "QuantizedModel":
        raise ConfigError("prune.magnitude must come before quantize.ptq in a recipe (the model is already quantized)")
    rounds = cfg.rounds if cfg.schedule == "iterative" else 1
    for r in range(1, rounds + 1):
        target = 1.0 - (1.0 - cfg.sparsity) ** (r / rounds)
        prune_to(model, target, cfg.scope, cfg.exclude)
        if cfg.finetune_epochs > 0:
            task.train(model, epochs=cfg.finetune_epochs, lr=cfg.lr, keep_sparsity=True)
    return model.eval()
