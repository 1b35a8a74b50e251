"""prune.channels and prune.layers: structured pruning that makes the model physically smaller.

prune.channels removes output units (Conv1d/Conv2d channels, depthwise and grouped included, and
Linear neurons) group by group: a group is every slice that must shrink together according to
Torch-Pruning's dependency graph (surgery.py). Scores come from activation_saliency.py and are
summed over the group's layers. Applying it again to a pruned model prunes the remaining units by
the ratio again (idempotent in kind, compounding in amount).

prune.layers removes whole residual blocks (replaced by nn.Identity) with the least quality impact.
"""
from __future__ import annotations

import copy
import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

from ...core.config import TechniqueConfig
from ...core.errors import ConfigError, UnsupportedModuleError
from ...core.forms import refuse_quantized
from ...core.registry import register
from ...core.scope import match_scopes
from . import surgery
from .activation_saliency import DATA_SALIENCIES, unit_scores
from .trajectory import Trajectory
from .surgery import rebuild, structure_of  # noqa: F401  (public API of structured pruning)


def below_one(v: float, unit: str = "unit", layer: str = "a layer") -> float:
    """Validator: a structured ratio of 1.0 would remove every unit of a layer."""
    if v >= 1.0:
        raise ValueError(f"ratio 1.0 would remove every {unit}, so {layer} would vanish: use a ratio < 1")
    return v


class ChannelPruneConfig(TechniqueConfig):
    """Physically remove output channels/neurons (structured pruning with real surgery)."""

    ratio: float = Field(0.5, ge=0.0, description="fraction of units removed per prunable group, in [0, 1)")
    saliency: Literal["l1", "l2", "random", "taylor", "mean_activation", "apoz"] = "l1"
    scope: Literal["layer", "global"] = Field("layer", description="same ratio per group, or one threshold over normalized scores")
    protect: tuple[str, ...] = Field((), description="module-name globs whose output units are never removed (the classifier always is)")
    protect_first: bool = Field(True, description="also protect the first conv's output channels (and every layer tied to them, e.g. a ResNet's first-stage residual channels)")
    round_to: int = Field(1, ge=1, description="keep channel counts multiples of this")
    schedule: Literal["oneshot", "iterative"] = "oneshot"
    rounds: int = Field(3, ge=1, le=20)
    finetune_epochs: float = Field(0.0, ge=0.0, description="fine-tuning epochs after pruning (per round when iterative)")
    lr: float = Field(1e-3, gt=0.0)
    batches: int = Field(4, ge=1, le=100, description="real training batches for taylor / activation saliency")
    input_shape: tuple[int, ...] | None = Field(None, description="example input shape (no batch) when no Task is given")
    seed: int = 0

    _check_ratio = field_validator("ratio")(classmethod(lambda cls, v: below_one(v)))


def _channel_needs(cfg: ChannelPruneConfig) -> str:
    return "training" if cfg.finetune_epochs > 0 or cfg.saliency in DATA_SALIENCIES else "nothing"


def default_protected(model: nn.Module, first: bool = True) -> set[str]:
    """The classifier (the last Linear/conv) and, with ``first``, the first conv (or first layer)."""
    weighted = [n for n, m in model.named_modules() if isinstance(m, surgery.WEIGHTED)]
    if not weighted:
        raise ConfigError("the model has no Conv1d/Conv2d/Linear layer: nothing to prune structurally")
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)]
    return {convs[0] if convs else weighted[0], weighted[-1]} if first else {weighted[-1]}


def _example(model: nn.Module, cfg, task) -> torch.Tensor:
    if task is not None:
        return task.example_input(2)
    if cfg.input_shape is None:
        raise ConfigError(f"{cfg.technique} needs an example input to trace the model: pass task= or input_shape=")
    return torch.randn(2, *cfg.input_shape, generator=torch.Generator().manual_seed(cfg.seed))


def train_batches(task, n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` real (x, y) batches of the task's train split (never the test split), fixed order."""
    out = []
    for x, y in task.batches("train", 64, shuffle=True):
        out.append((x, y))
        if len(out) == n:
            break
    return out


def keep_count(n: int, ratio: float, round_to: int) -> int:
    """Units a group of ``n`` keeps: n - round(ratio * n), then up to a multiple of round_to,
    at least 1 and at most n."""
    keep = max(1, n - round(ratio * n))
    if round_to > 1:
        keep = round_to * math.ceil(keep / round_to)
    return min(n, keep)


def group_scores(dg, group, scores: dict[nn.Module, torch.Tensor]) -> torch.Tensor:
    """One score per root unit: the unit scores of every coupled Conv/Linear output slice, summed."""
    n = len(group[0].idxs)
    total = torch.zeros(n, dtype=torch.float64)
    for item in group:
        dep, idxs = item.dep, item.idxs
        m = dep.target.module
        if m in scores and surgery.is_out_pruning(dg, dep.handler):
            total.index_add_(0, torch.as_tensor(item.root_idxs), scores[m][idxs].double())
    return total


def select(g_scores: list[torch.Tensor], ratio: float, scope: str, round_to: int,
           periods: list[int] | None = None) -> list[list[int]]:
    """Root indices to remove from each group. A group of period L (it feeds or is a grouped conv
    with L groups) removes the same local positions from each of its L equal blocks, so every
    conv group keeps the same width and the grouped conv's weight stays one slice per group."""
    periods = periods or [1] * len(g_scores)
    if scope == "layer":
        keeps = [keep_count(len(s), ratio, round_to) for s in g_scores]
    else:
        # One threshold over scores normalized by their group mean, so layers of different scale
        # compete fairly; every group keeps at least one unit.
        norm = [s / s.mean().clamp_min(1e-12) for s in g_scores]
        flat = torch.cat(norm)
        k = round(ratio * flat.numel())
        thresh = flat.sort().values[k - 1] if k > 0 else -math.inf
        keeps = []
        for s in norm:
            keep = max(1, int((s > thresh).sum()))
            if round_to > 1:
                keep = min(len(s), round_to * math.ceil(keep / round_to))
            keeps.append(keep)
    out = []
    for s, keep, period in zip(g_scores, keeps, periods):
        size = len(s) // period
        local = s.view(period, size).sum(0)
        keep_local = min(size, math.ceil(keep / period))
        order = torch.argsort(local, stable=True)  # ascending: least important first
        drop = order[: size - keep_local].tolist()
        out.append(sorted(b * size + j for b in range(period) for j in drop))
    return out


def prune_channels_once(model: nn.Module, ratio: float, cfg: ChannelPruneConfig, task) -> nn.Module:
    """One round of channel surgery on ``model`` (in place)."""
    protected = default_protected(model, cfg.protect_first) | (match_scopes(model, cfg.protect) if cfg.protect else set())
    surgery.check_supported(model, protected)
    example = _example(model, cfg, task)
    dg = surgery.build_graph(model, example)
    surgery.check_traced(model, dg, protected)
    groups = surgery.prunable_groups(model, dg, protected)
    if not groups:
        fixes = (["set protect_first=False (it protects the first conv and every layer tied to its channels)"]
                 if cfg.protect_first else []) + (["protect fewer modules"] if cfg.protect else [])
        raise ConfigError("no prunable channel group is left once protected layers are excluded (protected: "
                          f"{', '.join(repr(n) for n in sorted(protected))}; the classifier is always kept): "
                          f"{' or '.join(fixes) or 'the model has no other channels to prune'}")
    if ratio <= 0:
        return model
    layers = [m for m in model.modules() if isinstance(m, surgery.WEIGHTED)]
    batches = train_batches(task, cfg.batches, cfg.seed) if cfg.saliency in DATA_SALIENCIES else None
    scores = unit_scores(model, layers, cfg.saliency, train_batches=batches, seed=cfg.seed,
                         loss_fn=task.output_loss if task is not None else None)
    g_scores = [group_scores(dg, g, scores) for g in groups]
    plan = select(g_scores, ratio, cfg.scope, cfg.round_to, [surgery.group_period(g) for g in groups])
    for g, idxs in zip(groups, plan):
        if idxs:
            surgery.prune_group(dg, g, idxs)
    return model


def check_forward(model: nn.Module, example: torch.Tensor, expected: torch.Size) -> None:
    """The surgery must leave a model that runs and keeps its output shape; name the module that fails."""
    current: list[str] = []
    names = {m: n for n, m in model.named_modules()}
    handles = [m.register_forward_pre_hook(lambda mod, _a: current.append(names[mod])) for m in model.modules()]
    try:
        with torch.no_grad():
            out = model(example)
    except RuntimeError as exc:
        where = current[-1] if current else "(model)"
        raise UnsupportedModuleError(
            f"after channel surgery the model fails in module {where!r} ({str(exc).splitlines()[0]}): the "
            f"dependency analysis could not follow an operation there. Fix: protect it (protect=[{where!r}]) "
            "or make its forward use standard layers and traceable ops."
        ) from None
    finally:
        for h in handles:
            h.remove()
    if out.shape != expected:
        raise UnsupportedModuleError(f"channel surgery changed the output shape {tuple(expected)} -> {tuple(out.shape)}: "
                                     "protect the output layer")


@register("prune.channels", ChannelPruneConfig, needs=_channel_needs, models=("cnn", "mlp", "encoder"), example=lambda: ChannelPruneConfig(batches=1))
def prune_channels(model: nn.Module, cfg: ChannelPruneConfig, task) -> nn.Module:
    """Structured channel/neuron pruning with physical surgery (Torch-Pruning dependency graph)."""
    refuse_quantized(model, "prune.channels")
    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise ConfigError(f"{'parameter' if len(bad) == 1 else 'parameters'} {', '.join(map(repr, bad))} "
                          f"{'has' if len(bad) == 1 else 'have'} NaN/Inf values: fix the model before pruning "
                          "(retrain, or lower the learning rate)")
    example = _example(model, cfg, task)
    model.eval()
    with torch.no_grad():
        expected = model(example).shape
    rounds = cfg.rounds if cfg.schedule == "iterative" else 1
    per_round = 1.0 - (1.0 - cfg.ratio) ** (1.0 / rounds)  # compounding: R rounds remove `ratio` in all
    work = copy.deepcopy(model)  # the caller's model stays intact if anything below raises
    path = Trajectory(task if cfg.finetune_epochs > 0 else None, "channels")
    path.mark(work, 0.0, "start")
    for r in range(1, rounds + 1):
        prune_channels_once(work, per_round, cfg, task)
        surgery.strip_graph_state(work)
        check_forward(work.eval(), example, expected)
        removed = 1.0 - (1.0 - per_round) ** r
        path.mark(work, removed, "prune")
        if cfg.finetune_epochs > 0:
            task.train(work, epochs=cfg.finetune_epochs, lr=cfg.lr, keep_sparsity=True)
            path.mark(work, removed, "finetune", cfg.finetune_epochs)
    path.attach(work)
    return work.eval()


# -- prune.layers -------------------------------------------------------------------------------
class LayerPruneConfig(TechniqueConfig):
    """Remove whole residual blocks (replaced by nn.Identity)."""

    num_blocks: int | None = Field(None, ge=1, description="blocks to remove")
    ratio: float | None = Field(None, ge=0.0, lt=1.0, description="fraction of eligible blocks to remove")
    saliency: Literal["loss", "l1"] = Field("loss", description="validation-loss increase when removed alone, or the block's mean |w|")
    batches: int = Field(4, ge=1, le=100, description="validation batches for saliency='loss'")
    finetune_epochs: float = Field(0.0, ge=0.0)
    lr: float = Field(1e-3, gt=0.0)
    input_shape: tuple[int, ...] | None = None
    seed: int = 0

    @model_validator(mode="after")
    def _one_amount(self):
        if (self.num_blocks is None) == (self.ratio is None):
            raise ValueError("set exactly one of num_blocks or ratio")
        return self


def _layer_needs(cfg: LayerPruneConfig) -> str:
    if cfg.finetune_epochs > 0:
        return "training"
    return "calibration" if cfg.saliency == "loss" else "nothing"


def residual_blocks(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Blocks whose output has the input's shape and that pass their input through when all their
    parameters are zero (the identity path of a residual block); the innermost such blocks."""
    records: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    names = {m: n for n, m in model.named_modules()}
    cands = [m for n, m in model.named_modules() if n and list(m.children()) and any(True for _ in m.parameters())]

    def hook(mod, inputs, output):
        if len(inputs) == 1 and isinstance(inputs[0], torch.Tensor) and isinstance(output, torch.Tensor):
            records[names[mod]] = (inputs[0], output)

    handles = [m.register_forward_hook(hook) for m in cands]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in handles:
            h.remove()
    found = []
    for name, (x, y) in records.items():
        if x.shape != y.shape:
            continue
        zeroed = copy.deepcopy(model.get_submodule(name)).eval()
        with torch.no_grad():
            for p in zeroed.parameters():
                p.zero_()
            try:
                z = zeroed(x)
            except Exception:  # needs more than its input (e.g. a decoder layer's position embeddings)
                continue
        if z.abs().sum() > 0 and any(torch.allclose(z, f(x), atol=1e-5) for f in (lambda t: t, F.relu, F.relu6)):
            found.append(name)
    return [n for n in found if not any(o != n and o.startswith(n + ".") for o in found)]


def _val_loss(model: nn.Module, batches, loss) -> float:
    with torch.no_grad():
        return sum(float(loss(model, x, y)) for x, y in batches) / len(batches)


def block_impacts(model: nn.Module, blocks: list[str], batches, loss=None) -> dict[str, float]:
    """Validation loss (``loss(model, x, y)``, default cross-entropy) of the model with each block
    alone replaced by nn.Identity."""
    loss = loss or (lambda m, x, y: F.cross_entropy(m(x), y))
    impact = {}
    for name in blocks:
        trial = copy.deepcopy(model)
        trial.set_submodule(name, nn.Identity())
        impact[name] = _val_loss(trial.eval(), batches, loss)
    return impact


@register("prune.layers", LayerPruneConfig, needs=_layer_needs, models=("cnn",), example=lambda: LayerPruneConfig(num_blocks=1, batches=1))
def prune_layers(model: nn.Module, cfg: LayerPruneConfig, task) -> nn.Module:
    """Remove the residual blocks whose removal costs least (validation loss or weight-norm proxy)."""
    refuse_quantized(model, "prune.layers")
    example = _example(model, cfg, task)
    blocks = residual_blocks(model, example)
    if not blocks:
        raise ConfigError("the model has no removable block (a sub-module with matching input/output shapes "
                          "and an identity path): prune.layers works on residual networks; use prune.channels")
    k = cfg.num_blocks if cfg.num_blocks is not None else round(cfg.ratio * len(blocks))
    if k > len(blocks):
        raise ConfigError(f"num_blocks={k} but the model has only {len(blocks)} removable blocks {blocks}: "
                          f"use at most {len(blocks)}")
    if cfg.saliency == "loss":
        val = list(task.batches("val", 128))[: cfg.batches]
        impact = block_impacts(model, blocks, val, task.loss)
    else:
        impact = {n: float(torch.cat([p.detach().abs().flatten() for p in model.get_submodule(n).parameters()]).mean())
                  for n in blocks}
    for name in sorted(blocks, key=lambda n: impact[n])[:k]:
        model.set_submodule(name, nn.Identity())
    if cfg.finetune_epochs > 0:
        task.train(model, epochs=cfg.finetune_epochs, lr=cfg.lr, keep_sparsity=True)
    return model.eval()
