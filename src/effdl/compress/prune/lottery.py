"""prune.lottery: lottery-ticket search by iterative magnitude pruning with rewinding.

Frankle & Carbin 2019: train from theta_0, prune ``rate`` of the remaining weights by magnitude,
reset the survivors to theta_0 (``rewind="init"``) or to their values after k steps
(``rewind="early"``, Frankle et al. 2020 "linear mode connectivity"), retrain; repeat ``rounds``
times. After round r exactly round(n (1 - rate)^r) weights remain per layer (``scope="layer"``) or
in total (``scope="global"``): the target is computed from n directly, not compounded, so rounding
never drifts. ``control="random_reinit"`` trains, at every round, the ticket's mask with freshly
drawn weights instead of theta_0 (the paper's control) and returns that model; the per-round
history then holds both curves. The history is returned by ``find_ticket`` and attached to the
returned model as a ``LotteryRecord`` (``lottery_history(model)``).
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable, Literal

import torch
import torch.nn as nn
from pydantic import Field

from ...core.config import TechniqueConfig
from ...core.errors import ConfigError
from ...core.records import Part, Record, attach, records
from ...core.forms import refuse_quantized
from ...core.registry import register
from .sparse_training import Masks, apply_masks, masked_train, prunable_layers, reinitialise

#: seed offset of the random-reinit control's weights, so they differ from theta_0's draw
CONTROL_SEED_OFFSET = 1_000_003


class LotteryRound(Part):
    """One round: the weights left (overall fraction and per layer) and the ticket's accuracies
    (``control``: the random-reinit control's, from round 1 when it is on)."""

    round: int
    weights_remaining: float
    remaining_per_layer: dict[str, int]
    ticket: dict[str, float]
    control: dict[str, float] | None = None


class LotteryRecord(Record):
    """The search's history, as ``find_ticket`` returns it."""

    key = "lottery"
    config: dict[str, Any]
    rewound_to: str
    rounds: list[LotteryRound]


class LotteryConfig(TechniqueConfig):
    """Lottery-ticket search: iterative magnitude pruning with rewinding."""

    rate: float = Field(0.2, gt=0.0, lt=1.0, description="fraction of the remaining weights pruned per round")
    rounds: int = Field(5, ge=1, le=40, description="prune-rewind-retrain rounds after the dense training")
    epochs: float = Field(5.0, gt=0.0, description="training epochs per round")
    lr: float = Field(1.2e-3, gt=0.0, description="Adam learning rate (Frankle & Carbin use 1.2e-3 for LeNet)")
    scope: Literal["layer", "global"] = Field("layer", description="prune rate per layer, or one global threshold")
    rewind: Literal["init", "early"] = Field("init", description="rewind survivors to theta_0 or to step rewind_step")
    rewind_step: int = Field(0, ge=0, description="optimizer step whose weights 'early' rewinds to")
    control: Literal["none", "random_reinit"] = Field("none", description="also train the mask from a fresh random init")
    init: Literal["reinit", "given"] = Field("reinit", description="theta_0: the architecture re-initialised (seeded) or the given weights")
    exclude: tuple[str, ...] = Field((), description="module-name glob patterns never pruned")
    seed: int = Field(0, ge=0)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def prune_remaining(model: nn.Module, masks: Masks, targets: dict[str, int] | int, scope: str) -> None:
    """Shrink ``masks`` in place to the target counts by |w| of the surviving weights.

    ``targets``: per-layer counts (layer scope) or one total (global scope; no layer is emptied).
    """
    mods = dict(model.named_modules())
    if scope == "layer":
        for n, mask in masks.items():
            score = torch.where(mask, mods[n].weight.abs(), torch.tensor(-1.0)).flatten()
            keep = torch.topk(score, max(1, targets[n])).indices
            new = torch.zeros_like(score, dtype=torch.bool)
            new[keep] = True
            masks[n] = new.view_as(mask)
        return
    names = list(masks)
    scores = torch.cat([torch.where(masks[n], mods[n].weight.abs(), torch.tensor(-1.0)).flatten() for n in names])
    keep = torch.zeros_like(scores, dtype=torch.bool)
    keep[torch.topk(scores, targets).indices] = True
    offset = 0
    for n in names:
        size = masks[n].numel()
        part = keep[offset:offset + size]
        if not part.any():  # an emptied layer disconnects the network: keep its largest survivor
            part[torch.argmax(scores[offset:offset + size])] = True
        masks[n] = part.view_as(masks[n]).clone()
        offset += size


def _targets(sizes: dict[str, int], rate: float, r: int, scope: str):
    keep = (1.0 - rate) ** r
    if scope == "layer":
        return {n: int(round(s * keep)) for n, s in sizes.items()}
    return int(round(sum(sizes.values()) * keep))


def _accuracy(task, model: nn.Module) -> dict[str, float]:
    return {"val_accuracy": task.evaluate(model, "val")["accuracy"],
            "test_accuracy": task.evaluate(model, "test")["accuracy"]}


def find_ticket(
    model: nn.Module, task, cfg: LotteryConfig,
    on_rewind: Callable[[int, str, nn.Module, Masks], None] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Run the search on ``model`` (modified in place) and return (final model, history).

    ``on_rewind(round, kind, net, masks)`` sees each network right before it is (re)trained, kind
    "ticket" or "control". History: ``{"config": ..., "theta0_step": ..., "rounds": [{"round",
    "weights_remaining", "remaining_per_layer", "ticket": {val/test accuracy}, "control": {...}}]}``.
    """
    refuse_quantized(model, "prune.lottery")
    if cfg.rewind == "init" and cfg.rewind_step != 0:
        raise ConfigError("rewind_step only applies to rewind='early'; set rewind='early' or rewind_step=0")
    if cfg.rewind == "early" and cfg.rewind_step < 1:
        raise ConfigError("rewind='early' needs rewind_step >= 1 (the optimizer step to rewind to)")
    if cfg.init == "reinit":
        reinitialise(model, cfg.seed)
    layers = prunable_layers(model, cfg.exclude)
    sizes = {n: m.weight.numel() for n, m in layers}
    masks: Masks = {n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in layers}
    theta = _snapshot(model)
    steps_per_epoch = task.steps_per_epoch()
    total_steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    if cfg.rewind == "early" and cfg.rewind_step >= total_steps:
        raise ConfigError(f"rewind_step {cfg.rewind_step} is not before the end of training ({total_steps} steps per round)")

    def snap_early(step: int, net: nn.Module) -> None:
        if step + 1 == cfg.rewind_step:  # weights after k optimizer steps
            theta.update(_snapshot(net))

    history: dict[str, Any] = {"config": cfg.to_dict(), "rewound_to": "theta_0" if cfg.rewind == "init" else f"step {cfg.rewind_step}",
                               "rounds": []}
    control_model = None
    for r in range(cfg.rounds + 1):
        if r > 0:
            prune_remaining(model, masks, _targets(sizes, cfg.rate, r, cfg.scope), cfg.scope)
            model.load_state_dict(theta)  # rewind every tensor (biases, BN stats) to the rewind point
            apply_masks(model, masks)
        if on_rewind is not None:
            on_rewind(r, "ticket", model, masks)
        hook = snap_early if (r == 0 and cfg.rewind == "early") else None
        masked_train(model, task, masks, epochs=cfg.epochs, lr=cfg.lr, seed=cfg.seed, on_step=hook)
        remaining = {n: int(masks[n].sum()) for n in masks}
        row: dict[str, Any] = {"round": r, "weights_remaining": sum(remaining.values()) / sum(sizes.values()),
                               "remaining_per_layer": remaining, "ticket": _accuracy(task, model)}
        if cfg.control == "random_reinit" and r > 0:  # at round 0 the control is just another dense run
            control_model = reinitialise(copy.deepcopy(model), cfg.seed + CONTROL_SEED_OFFSET + r)
            control_masks = {n: m.clone() for n, m in masks.items()}
            apply_masks(control_model, control_masks)
            if on_rewind is not None:
                on_rewind(r, "control", control_model, control_masks)
            masked_train(control_model, task, control_masks, epochs=cfg.epochs, lr=cfg.lr, seed=cfg.seed)
            row["control"] = _accuracy(task, control_model)
        history["rounds"].append(row)
    final = control_model if control_model is not None else model
    return final.eval(), history


def lottery_history(model: nn.Module) -> LotteryRecord:
    """The per-round history ``prune.lottery`` attached to its result."""
    hist = records(model).get("lottery")
    if hist is None:
        raise ConfigError("this model carries no lottery history: it was not produced by prune.lottery")
    return hist


@register("prune.lottery", LotteryConfig, needs="training", models=("cnn", "mlp"), example=lambda: LotteryConfig(rounds=1, epochs=0.25))
def lottery(model: nn.Module, cfg: LotteryConfig, task) -> nn.Module:
    """Lottery-ticket search: iterative magnitude pruning with rewinding (init or early step k)."""
    final, history = find_ticket(model, task, cfg)
    # A record in the instance __dict__, not a module or buffer: state_dict and saving ignore it.
    attach(final, LotteryRecord.model_validate(history))
    return final
