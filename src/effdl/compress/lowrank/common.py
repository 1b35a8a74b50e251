"""What every low-rank technique shares: the config fields, layer selection, the replace loop that
records what was factorized or skipped (and why), and the optional fine-tune.

A technique supplies ``factorize(name, layer) -> (new_module, info)`` and raises ``Skip(reason)``
for a layer it leaves alone (e.g. the factorization would not save parameters); skipped layers are
listed in the model's records under the technique's name so the report can say so.

Ties and repeats: a layer module used under several names is factorized once and the one new module
is put under every name; a layer whose weight is shared with a module that is not factorized with it
(an embedding, an excluded layer) is left dense, since factorizing it would untie the two. The layers
of an earlier factorization are never factorized again, so applying a technique twice changes nothing
the first application made.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from pydantic import Field
from torch import nn

from ...core.config import TechniqueConfig
from ...core.forms import refuse_quantized
from ...core.errors import ConfigError, UnsupportedModuleError
from ...core.records import Part, Record, attach, record_class
from ...core.scope import is_excluded, match_scopes
from .modules import Factorized, TTLinear


class LowRankLayer(Part):
    """A factorized layer's parameters before and after; each technique's subclass adds how (rank, ...)."""

    params_before: int
    params_after: int


class LowRankRecord(Record):
    """What a lowrank.* technique factorized (``layers``), left dense and why (``skipped``), and the
    parameters of the factorized layers before and after. Each technique subclasses it with its key
    (its name) and its layer type."""

    layers: dict[str, LowRankLayer]
    skipped: dict[str, str]
    params_before: int
    params_after: int


class LowRankConfig(TechniqueConfig):
    """Fields shared by the low-rank techniques (subclasses add how the rank is chosen)."""

    layers: tuple[str, ...] = Field((), description="module-name glob patterns to decompose (empty: every supported layer)")
    exclude: tuple[str, ...] = Field((), description="module-name glob patterns left as they are")
    keep_last: bool = Field(True, description="leave the last Conv/Linear (the classifier) dense unless named in "
                            "'layers': a rank below the number of classes caps what it can tell apart")
    finetune_epochs: float = Field(0.0, ge=0.0, description="fine-tuning epochs after the decomposition")
    lr: float = Field(1e-3, gt=0.0, description="fine-tuning learning rate")


def needs(cfg: LowRankConfig) -> str:
    return "training" if cfg.finetune_epochs > 0 else "nothing"


class Skip(Exception):
    """Raised by a factorize function: leave this layer dense, for the given reason."""


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def check_rank(name: str, rank: int, full: int, what: str = "rank") -> None:
    if rank > full:
        raise ConfigError(f"{what} {rank} exceeds the full rank of layer {name!r} (max {full}): "
                          f"use a {what} between 1 and {full}")


def select(model: nn.Module, cfg: LowRankConfig, types: tuple[type, ...], technique: str,
           accept: Callable[[str, nn.Module], str | None] = lambda n, m: None) -> tuple[list, dict[str, str]]:
    """The layers to decompose and the ones passed over, {name: reason}.

    ``accept(name, m)`` returns why a layer of the right type cannot be decomposed (None if it can):
    named explicitly in ``layers`` that is an UnsupportedModuleError, found by the default
    every-layer selection it is skipped and recorded.
    """
    excluded = match_scopes(model, cfg.exclude)
    explicit = bool(cfg.layers)
    wanted = match_scopes(model, cfg.layers)
    kinds = " or ".join(t.__name__ for t in types)
    chosen, skipped = [], {}
    weighted = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    # a model that is one layer has no separate classifier to keep
    last = weighted[-1] if len(weighted) >= 2 and cfg.keep_last and not explicit else None
    factors = [n + "." for n, m in model.named_modules() if isinstance(m, (Factorized, TTLinear))]
    for name, m in model.named_modules():
        if name == last and isinstance(m, types):
            skipped[name] = "the classifier (last layer) is kept dense (keep_last=True)"
            continue
        if not name or is_excluded(name, excluded) or (explicit and not is_excluded(name, wanted)):
            continue
        if isinstance(m, types) and any(name.startswith(f) for f in factors):
            if explicit and name in wanted:
                raise UnsupportedModuleError(f"{technique}: {name!r} is a factor of an earlier low-rank "
                                             "decomposition: name the original layers, which are factorized already")
            skipped[name] = "a factor of an earlier low-rank decomposition (not factorized again)"
            continue
        if not isinstance(m, types):
            if explicit and name in wanted and not any(isinstance(c, types) for c in m.modules()):
                raise UnsupportedModuleError(
                    f"{technique} decomposes {kinds} layers, but {name!r} is a {type(m).__name__} with none "
                    f"inside: select {kinds} layers in 'layers' (or leave it empty for all of them)")
            continue
        reason = accept(name, m)
        if reason is not None:
            if explicit:
                raise UnsupportedModuleError(f"{technique} cannot decompose {name!r} ({type(m).__name__}): {reason}")
            skipped[name] = reason
            continue
        chosen.append((name, m))
    bad = [n for n, m in chosen if not all(bool(torch.isfinite(p).all()) for p in m.parameters(recurse=False))]
    if bad:
        raise ConfigError(f"{technique}: NaN/Inf in the weights of module(s) {', '.join(map(repr, bad))}: they have "
                          "no low-rank factorization. Fix the checkpoint (retrain, or lower the learning rate), or "
                          "leave those layers out with exclude=[...]")
    return chosen, skipped


def _key(w: torch.Tensor) -> tuple:
    return (w.data_ptr(), tuple(w.shape), tuple(w.stride()))


def _weight_owners(model: nn.Module) -> dict[tuple, list[tuple[str, nn.Module]]]:
    """{parameter memory: [(name, module)]} for parameters held by more than one distinct module (ties,
    by a shared Parameter or shared ``.data``)."""
    owners: dict[tuple, list[tuple[str, nn.Module]]] = {}
    for name, mod in model.named_modules():
        for _, p in mod.named_parameters(recurse=False):
            if p.numel():
                owners.setdefault(_key(p), []).append((name, mod))
    return {k: v for k, v in owners.items() if len(v) > 1}


def decompose(model: nn.Module, cfg: LowRankConfig, task, technique: str, types: tuple[type, ...],
              factorize: Callable[[str, nn.Module], tuple[nn.Module, dict]],
              accept: Callable[[str, nn.Module], str | None] = lambda n, m: None, extra: dict | None = None) -> nn.Module:
    """Replace each selected layer by ``factorize``'s module, record the outcome, fine-tune if asked."""
    refuse_quantized(model, technique)
    chosen, skipped = select(model, cfg, types, technique, accept)
    if not chosen and not skipped:
        kinds = " or ".join(t.__name__ for t in types)
        raise ConfigError(f"{technique} found no {kinds} layer to decompose (after 'layers'/'exclude'): "
                          f"apply it to a model with {kinds} layers or widen the selection")
    aliases: dict[int, list[str]] = {}  # a module used under several names: every name gets the new module
    for n, mod in model.named_modules(remove_duplicate=False):
        aliases.setdefault(id(mod), []).append(n)
    tied = _weight_owners(model)
    layers, before, after = {}, 0, 0
    for name, m in chosen:
        others = [o for o in tied.get(_key(m.weight), ()) if o[1] is not m]
        if others:
            skipped[name] = (f"its weight is tied to {others[0][0]!r} ({type(others[0][1]).__name__}), which is not "
                             "factorized with it: factorizing would untie them")
            continue
        try:
            new, info = factorize(name, m)
        except Skip as why:
            skipped[name] = str(why)
            continue
        layers[name] = {**info, "params_before": n_params(m), "params_after": n_params(new)}
        before, after = before + n_params(m), after + n_params(new)
        for alias in aliases[id(m)]:
            model.set_submodule(alias, new)
    record = {"layers": layers, "skipped": skipped, "params_before": before, "params_after": after, **(extra or {})}
    attach(model, record_class(technique).model_validate(record))
    if cfg.finetune_epochs > 0:
        task.train(model, epochs=cfg.finetune_epochs, lr=cfg.lr)
    return model.eval()
