"""Persistent pruning masks: a parametrization multiplies each weight by a fixed 0/1 mask buffer.

While a mask is attached, ``module.weight`` is computed as where(mask, original, +0.0), so the
forward pass, gradients and any optimizer see a pruned weight and no pruned weight can regrow, however
training updates the stored original. ``fold`` writes the masked values into the plain parameter
(``remove_parametrizations(leave_parametrized=True)`` keeps the same Parameter object, so ties
survive) with +0.0 where pruned: compact storage counts only +0.0 as zero.

A weight shared by several modules gets one mask object registered on each, so it is pruned once.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from ...core.errors import ConfigError


class WeightMask(nn.Module):
    """Parametrization: keep where the mask is True, +0.0 elsewhere."""

    def __init__(self, mask: torch.Tensor, position: int = 0) -> None:
        super().__init__()
        self.register_buffer("mask", mask.detach().bool().clone())
        # Where 'weight' sat among the module's parameters, restored by fold so that state_dict
        # key order (and so saved files) are unchanged by pruning.
        self.position = position

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.where(self.mask, weight, torch.zeros((), dtype=weight.dtype))


def _mask_of(module: nn.Module) -> WeightMask | None:
    if not parametrize.is_parametrized(module, "weight"):
        return None
    for p in module.parametrizations.weight:
        if isinstance(p, WeightMask):
            return p
    return None


def _modules_by_weight(model: nn.Module) -> dict[int, list[nn.Module]]:
    """id(original weight Parameter) -> every module using it (ties)."""
    out: dict[int, list[nn.Module]] = {}
    seen: set[int] = set()
    for m in model.modules():
        if id(m) in seen:
            continue
        seen.add(id(m))
        if parametrize.is_parametrized(m, "weight"):
            w = m.parametrizations.weight.original
        else:
            w = getattr(m, "weight", None)
        if isinstance(w, nn.Parameter):
            out.setdefault(id(w), []).append(m)
    return out


def _original(module: nn.Module) -> torch.Tensor:
    return module.parametrizations.weight.original if parametrize.is_parametrized(module, "weight") else module.weight


def attach(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Attach (or update) the mask of each named layer; modules sharing its weight share the mask."""
    mods = dict(model.named_modules())
    ties = _modules_by_weight(model)
    for name, mask in masks.items():
        if name not in mods:
            raise ConfigError(f"no module named {name!r} to mask")
        w = _original(mods[name])
        if mask.shape != w.shape:
            raise ConfigError(f"mask for {name!r} has shape {tuple(mask.shape)}, its weight {tuple(w.shape)}")
        existing = _mask_of(mods[name])
        if existing is not None:
            existing.mask.copy_(mask.bool())
            continue
        shared = WeightMask(mask, list(mods[name]._parameters).index("weight"))
        for m in ties.get(id(w), [mods[name]]):
            parametrize.register_parametrization(m, "weight", shared)


def update(model: nn.Module, masks: dict[str, torch.Tensor], monotone: bool = True) -> None:
    """Replace attached masks; ``monotone`` also keeps every already-pruned weight pruned."""
    mods = dict(model.named_modules())
    for name, mask in masks.items():
        current = _mask_of(mods[name])
        if current is None:
            attach(model, {name: mask})
        else:
            current.mask.copy_(mask.bool() & current.mask if monotone else mask.bool())


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The attached masks by (first) module name."""
    out, seen = {}, set()
    for name, m in model.named_modules():
        p = _mask_of(m)
        if p is not None and id(p) not in seen:
            seen.add(id(p))
            out[name] = p.mask.clone()
    return out


@torch.no_grad()
def fold(model: nn.Module) -> nn.Module:
    """Bake the masks into plain weights (+0.0 where pruned) and remove the parametrizations."""
    for m in list(model.modules()):
        if _mask_of(m) is not None:
            # The parametrization already wrote +0.0 at pruned positions (torch.where with a +0.0
            # scalar, where w * mask would give -0.0 for negative w); kept weights keep their bits.
            position = _mask_of(m).position
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
            items = [(k, v) for k, v in m._parameters.items() if k != "weight"]
            items.insert(min(position, len(items)), ("weight", m._parameters["weight"]))
            m._parameters.clear()
            m._parameters.update(items)
    return model


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of exact zeros in each Conv/Linear weight (effective weight when masked), for heatmaps."""
    from ...metrics.footprint import layer_sparsity as per_layer

    return {name: v["sparsity"] for name, v in per_layer(model).items()}
