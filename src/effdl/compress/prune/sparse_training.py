"""prune.sparse_training: train from scratch at a fixed sparsity with prune-redistribute-regrow.

The task model's architecture is re-initialised (``reset_parameters`` on every layer, seeded), a
random mask with ERK or uniform per-layer densities is drawn, and every ``update_every`` steps each
layer drops its smallest-|w| active weights and regrows as many inactive ones: at random (SET,
Mocanu et al. 2018) or where the dense gradient is largest (RigL, Evci et al. 2020). The drop
fraction decays with a cosine, alpha_t = alpha/2 (1 + cos(pi t / T_end)), and stops at T_end
(RigL sec. 3). Drop count = regrow count per layer, so the sparsity is exactly constant. Regrown
weights start at 0 and the step that changes the connectivity takes no optimizer step (RigL's
algorithm 1), so a regrown weight's first value comes from its own gradient.

``masked_train`` (fixed or evolving masks, optimizer state reset where a mask changes) is shared
with the lottery-ticket search.
"""
from __future__ import annotations

import math
from typing import Callable, Literal

import torch
import torch.nn as nn
from pydantic import Field

from ...core.config import TechniqueConfig
from ...core.errors import ConfigError, ModelError
from ...core.forms import refuse_quantized
from ...core.registry import register
from ...core.scope import weighted_layers
from ...core.task import TrainHook
from .distribution import PRUNABLE
from .erk import erk_densities, nonzeros_per_layer

Masks = dict[str, torch.Tensor]  # layer name -> bool mask shaped like its weight


class SparseTrainingConfig(TechniqueConfig):
    """Sparse training from scratch (SET / RigL) at a fixed sparsity."""

    sparsity: float = Field(0.9, gt=0.0, lt=1.0, description="fraction of prunable weights that are zero throughout")
    method: Literal["set", "rigl"] = Field("rigl", description="regrow at random (set) or by |dense gradient| (rigl)")
    distribution: Literal["erk", "uniform"] = Field("erk", description="per-layer densities: Erdos-Renyi-Kernel or equal")
    epochs: float = Field(10.0, gt=0.0)
    lr: float = Field(1e-3, gt=0.0)
    update_every: int = Field(100, ge=1, description="optimizer steps between connectivity updates")
    update_fraction: float = Field(0.3, gt=0.0, lt=1.0, description="initial drop/regrow fraction alpha (cosine-decayed)")
    update_end: float = Field(0.75, gt=0.0, le=1.0, description="fraction of training after which the mask is frozen")
    exclude: tuple[str, ...] = Field((), description="module-name glob patterns kept dense")
    seed: int = Field(0, ge=0, description="seed of the re-initialisation, the masks and SET regrowth")


def reinitialise(model: nn.Module, seed: int) -> nn.Module:
    """``reset_parameters()`` on every module that has one, seeded, without touching global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in model.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    return model


def prunable_layers(model: nn.Module, exclude=()) -> list[tuple[str, nn.Module]]:
    layers = weighted_layers(model, PRUNABLE, exclude)
    if not layers:
        raise ConfigError("the model has no Conv/Linear layer left to sparsify (check 'exclude')")
    return layers


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Masks) -> None:
    mods = dict(model.named_modules())
    for name, mask in masks.items():
        mods[name].weight.masked_fill_(~mask, 0.0)  # +0.0: compact storage and CSR see a zero


def random_masks(layers, sparsity: float, distribution: str, generator: torch.Generator) -> Masks:
    """Masks with exactly the ERK/uniform non-zero count per layer, positions uniform at random."""
    shapes = {n: tuple(m.weight.shape) for n, m in layers}
    if distribution == "erk":
        densities = erk_densities(shapes, 1.0 - sparsity)
    else:
        densities = {n: 1.0 - sparsity for n in shapes}
    counts = nonzeros_per_layer(shapes, densities)
    masks = {}
    for n, m in layers:
        flat = torch.zeros(m.weight.numel(), dtype=torch.bool)
        flat[torch.randperm(flat.numel(), generator=generator)[: counts[n]]] = True
        masks[n] = flat.view_as(m.weight)
    return masks


def update_mask(weight: torch.Tensor, mask: torch.Tensor, n_update: int, *, method: str,
                grad: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Drop the ``n_update`` smallest-|w| active weights and regrow ``n_update`` inactive ones.

    Regrowth candidates are all positions not kept after the drop (a just-dropped weight may come
    back, as in RigL's reference code); RigL ranks them by |grad|, SET draws them at random.
    Returns the new mask; its count equals the old one's.
    """
    active = int(mask.sum())
    n_update = max(0, min(n_update, active, mask.numel() - active))
    if n_update == 0:
        return mask.clone()
    flat_mask = mask.flatten()
    inf = torch.tensor(float("inf"))
    drop_score = torch.where(flat_mask, weight.detach().abs().flatten(), inf)
    dropped = torch.topk(drop_score, n_update, largest=False).indices
    kept = flat_mask.clone()
    kept[dropped] = False
    if method == "rigl":
        if grad is None:
            raise ConfigError("RigL regrowth needs the dense gradient (grad=...)")
        grow_score = torch.where(kept, -inf, grad.detach().abs().flatten())
    elif method == "set":
        grow_score = torch.where(kept, -inf, torch.rand(kept.numel(), generator=generator))
    else:
        raise ConfigError(f"method must be 'set' or 'rigl', got {method!r}")
    grown = torch.topk(grow_score, n_update, largest=True).indices
    new = kept.clone()
    new[grown] = True
    return new.view_as(mask)


def drop_fraction(step: int, alpha: float, t_end: int) -> float:
    """RigL's cosine decay of the update fraction; 0 from ``t_end`` on."""
    if step >= t_end:
        return 0.0
    return alpha / 2.0 * (1.0 + math.cos(math.pi * step / t_end))


def _reset_optimizer_state(opt: torch.optim.Optimizer, param: torch.Tensor, changed: torch.Tensor) -> None:
    # Stale Adam moments of a dropped weight would otherwise move it the moment it is regrown.
    for v in opt.state.get(param, {}).values():
        if torch.is_tensor(v) and v.shape == param.shape:
            v.masked_fill_(changed, 0.0)


def masked_train(
    model: nn.Module,
    task,
    masks: Masks,
    *,
    epochs: float,
    lr: float,
    seed: int = 0,
    updater: Callable[[int, nn.Module, torch.optim.Optimizer], bool] | None = None,
    on_step: Callable[[int, nn.Module], None] | None = None,
) -> nn.Module:
    """Adam + cosine lr for ``epochs`` keeping ``masks`` (pruned weights stay +0.0, their gradients
    and optimizer state stay 0). ``updater(step, model, opt)`` may change ``masks`` in place after
    the backward pass (gradients are dense there); when it returns True that step skips the
    optimizer update. ``on_step(step, model)`` is called after every step (masks applied).
    """
    mods = dict(model.named_modules())
    params = {n: mods[n].weight for n in masks}
    for n, mask in masks.items():
        if mask.shape != params[n].shape:
            raise ModelError(f"mask for {n!r} has shape {tuple(mask.shape)}, weight {tuple(params[n].shape)}")
    apply_masks(model, masks)

    class KeepMasks(TrainHook):
        def after_backward(self, step: int, net: nn.Module, opt: torch.optim.Optimizer) -> bool:
            old = {n: m.clone() for n, m in masks.items()} if updater is not None else None
            skip = bool(updater(step, net, opt)) if updater is not None else False
            with torch.no_grad():
                for n, mask in masks.items():
                    if old is not None and not torch.equal(old[n], mask):
                        _reset_optimizer_state(opt, params[n], old[n] != mask)
                    if params[n].grad is not None:
                        params[n].grad.masked_fill_(~mask, 0.0)
            return skip

        def after_step(self, step: int, net: nn.Module) -> None:
            apply_masks(net, masks)
            if on_step is not None:
                on_step(step, net)

    return task.train(model, epochs=epochs, lr=lr, weight_decay=0.0, hooks=[KeepMasks()], keep_sparsity=False,
                      data_seed=seed)


def sparse_train(model: nn.Module, task, cfg: SparseTrainingConfig,
                 on_step: Callable[[int, nn.Module], None] | None = None) -> tuple[nn.Module, Masks]:
    """Re-initialise ``model`` and train it sparse per ``cfg``; returns (model, final masks)."""
    refuse_quantized(model, "prune.sparse_training")
    reinitialise(model, cfg.seed)
    layers = prunable_layers(model, cfg.exclude)
    gen = torch.Generator().manual_seed(cfg.seed)
    masks = random_masks(layers, cfg.sparsity, cfg.distribution, gen)
    steps = max(1, math.ceil(cfg.epochs * task.steps_per_epoch()))
    t_end = int(cfg.update_end * steps)

    def updater(step: int, net: nn.Module, opt) -> bool:
        if step == 0 or step % cfg.update_every or step >= t_end:
            return False
        frac = drop_fraction(step, cfg.update_fraction, t_end)
        for name, m in layers:
            k = int(round(frac * int(masks[name].sum())))
            masks[name] = update_mask(m.weight, masks[name], k, method=cfg.method, grad=m.weight.grad, generator=gen)
            with torch.no_grad():
                m.weight.masked_fill_(~masks[name], 0.0)
                # New connections start at exactly 0 (RigL); weights kept keep their values.
        return True

    # ``masks`` is rebound per layer inside the updater; masked_train reads the same dict object.
    masked_train(model, task, masks, epochs=cfg.epochs, lr=cfg.lr, seed=cfg.seed, updater=updater, on_step=on_step)
    return model, masks


@register("prune.sparse_training", SparseTrainingConfig, needs="training", models=("cnn", "mlp", "encoder", "decoder"), example=lambda: SparseTrainingConfig(epochs=0.25, update_every=1))
def sparse_training(model: nn.Module, cfg: SparseTrainingConfig, task) -> nn.Module:
    """Sparse training from scratch at fixed sparsity (SET / RigL regrowth, ERK or uniform)."""
    model, _ = sparse_train(model, task, cfg)
    return model
