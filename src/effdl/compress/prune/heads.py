"""prune.heads: remove whole attention heads (Michel et al. 2019, "Are Sixteen Heads Really Better than One?").

A head is a slice of ``head_dim`` rows of the query, key and value projections and the same
columns of the output projection; removing it shrinks all four Linear layers and lowers the
layer's head count, so the model is physically smaller and every runtime does less work.

Attention layouts recognised (``head_sites``):

* effdl's zoo encoder (``zoo.transformer.SelfAttention``: ``query/key/value/out`` + ``num_heads``);
* Hugging Face BERT-style attention (``BertAttention``: ``self.query/key/value`` with
  ``num_attention_heads``/``attention_head_size``/``all_head_size``, and ``output.dense``).

Head saliency: ``l1`` (mean |w| of the head's slices), ``random`` (control) or ``taylor``: the
absolute gradient of the training loss with respect to a gate multiplying each head's output,
averaged over real batches (Michel et al.'s importance score E|dL/dg_h|), normalised per layer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from ...core.config import TechniqueConfig
from ...core.errors import ConfigError, UnsupportedModuleError
from ...core.forms import refuse_quantized
from ...core.records import Part, Record, attach
from ...core.registry import register
from ...core.scope import match_scopes
from .structured import below_one, train_batches


class HeadsKept(Part):
    """One attention layer: its head count before pruning and the (sorted) heads it kept."""

    before: int
    kept: list[int]


class HeadsRecord(Record):
    """Per attention layer, the heads prune.heads kept."""

    key = "heads"
    root = "layers"
    layers: dict[str, HeadsKept]


@dataclass
class HeadSite:
    """One attention layer: its projections and where its head count lives."""

    name: str
    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    out: nn.Linear
    holder: nn.Module  # the module whose attributes count the heads
    count_attr: str
    head_dim: int

    @property
    def num_heads(self) -> int:
        return int(getattr(self.holder, self.count_attr))

    def rows(self, heads: list[int]) -> torch.Tensor:
        d = self.head_dim
        return torch.tensor([h * d + j for h in heads for j in range(d)], dtype=torch.long)

    def keep(self, heads: list[int]) -> None:
        """Keep only ``heads`` (sorted indices): slice q/k/v rows and out columns, update counts."""
        idx = self.rows(heads)
        for proj in (self.query, self.key, self.value):
            proj.weight = nn.Parameter(proj.weight.detach()[idx].clone())
            if proj.bias is not None:
                proj.bias = nn.Parameter(proj.bias.detach()[idx].clone())
            proj.out_features = len(idx)
        self.out.weight = nn.Parameter(self.out.weight.detach()[:, idx].clone())
        self.out.in_features = len(idx)
        setattr(self.holder, self.count_attr, len(heads))
        if hasattr(self.holder, "all_head_size"):  # Hugging Face keeps the product too
            self.holder.all_head_size = len(idx)


def head_sites(model: nn.Module) -> list[HeadSite]:
    """Every attention layer of a layout this module knows, in model order."""
    sites = []
    for name, m in model.named_modules():
        if all(isinstance(getattr(m, a, None), nn.Linear) for a in ("query", "key", "value", "out")) \
                and hasattr(m, "num_heads") and hasattr(m, "head_dim"):
            sites.append(HeadSite(name, m.query, m.key, m.value, m.out, m, "num_heads", int(m.head_dim)))
        elif hasattr(m, "self") and isinstance(getattr(getattr(m, "output", None), "dense", None), nn.Linear):
            s = m.self
            if all(isinstance(getattr(s, a, None), nn.Linear) for a in ("query", "key", "value")) \
                    and hasattr(s, "num_attention_heads") and hasattr(s, "attention_head_size"):
                sites.append(HeadSite(name, s.query, s.key, s.value, m.output.dense, s,
                                      "num_attention_heads", int(s.attention_head_size)))
    return sites


class HeadPruneConfig(TechniqueConfig):
    """Physically remove attention heads (q/k/v rows and output columns)."""

    ratio: float = Field(0.5, ge=0.0, description="fraction of heads removed, in [0, 1); every layer keeps >= 1 head")
    saliency: Literal["l1", "taylor", "random"] = "taylor"
    scope: Literal["layer", "global"] = Field(
        "global", description="same fraction per layer, or one ranking over all heads (scores normalised per layer)")
    layers: tuple[str, ...] = Field((), description="attention-module name globs to prune (default: every one)")
    finetune_epochs: float = Field(0.0, ge=0.0)
    lr: float = Field(1e-3, gt=0.0)
    batches: int = Field(8, ge=1, le=200, description="real training batches for the taylor score")
    seed: int = 0

    _check_ratio = field_validator("ratio")(classmethod(lambda cls, v: below_one(v, "head", "an attention layer")))


def _needs(cfg: HeadPruneConfig) -> str:
    return "training" if cfg.finetune_epochs > 0 or cfg.saliency == "taylor" else "nothing"


def _l1(site: HeadSite) -> torch.Tensor:
    d, h = site.head_dim, site.num_heads
    parts = [p.weight.detach().abs().reshape(h, d, -1).mean((1, 2)) for p in (site.query, site.key, site.value)]
    parts.append(site.out.weight.detach().abs().reshape(-1, h, d).mean((0, 2)))
    return torch.stack(parts).mean(0)


def _taylor(model: nn.Module, sites: list[HeadSite], batches, loss_fn) -> list[torch.Tensor]:
    """Mean over batches of |dL/dg_h| with a gate g_h = 1 on each head's context (Michel et al. 2019
    take the expectation of the absolute gradient; per batch is the affordable version of per sample)."""
    gates = [torch.ones(s.num_heads, requires_grad=True) for s in sites]

    def gate_hook(site, gate):
        def hook(module, args):
            x = args[0]
            shaped = x.unflatten(-1, (site.num_heads, site.head_dim)) * gate[:, None]
            return (shaped.flatten(-2),) + tuple(args[1:])
        return hook

    handles = [s.out.register_forward_pre_hook(gate_hook(s, g)) for s, g in zip(sites, gates)]
    was = model.training
    model.eval()
    try:
        grads = [torch.zeros(s.num_heads) for s in sites]
        for x, y in batches:
            model.zero_grad(set_to_none=True)
            for g in gates:
                g.grad = None
            loss = loss_fn(model(x), y)
            loss.backward()
            for acc, g in zip(grads, gates):
                acc += g.grad.detach().abs()
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
        model.train(was)
    scores = grads
    # per-layer L2 normalisation, as in the paper, so layers compete on equal footing globally
    return [s / s.norm().clamp_min(1e-12) for s in scores]


def head_scores(model: nn.Module, sites: list[HeadSite], saliency: str, task=None, batches: int = 8,
                seed: int = 0) -> list[torch.Tensor]:
    if saliency == "l1":
        return [_l1(s) for s in sites]
    if saliency == "random":
        gen = torch.Generator().manual_seed(seed)
        return [torch.rand(s.num_heads, generator=gen) for s in sites]
    if task is None:
        raise ConfigError("prune.heads with saliency='taylor' needs training data: pass task=, or use saliency='l1'")
    return _taylor(model, sites, train_batches(task, batches, seed), task.output_loss)


def plan(scores: list[torch.Tensor], ratio: float, scope: str) -> list[list[int]]:
    """Heads each layer keeps (sorted). Every layer keeps at least one head."""
    counts = [len(s) for s in scores]
    if scope == "layer":
        keeps = [max(1, n - round(ratio * n)) for n in counts]
        return [sorted(torch.argsort(s, descending=True, stable=True)[:k].tolist()) for s, k in zip(scores, keeps)]
    total = sum(counts)
    drop = round(ratio * total)
    # scores divided by their layer's mean, so layers of different weight scale compete fairly
    norm = [s / s.mean().clamp_min(1e-12) for s in scores]
    order = sorted(((float(v), i, h) for i, s in enumerate(norm) for h, v in enumerate(s.tolist())))
    keep = [set(range(n)) for n in counts]
    for _, i, h in order:
        if drop == 0:
            break
        if len(keep[i]) > 1:
            keep[i].discard(h)
            drop -= 1
    return [sorted(k) for k in keep]


@register("prune.heads", HeadPruneConfig, needs=_needs, models=("encoder",), example=lambda: HeadPruneConfig(batches=1))
def prune_heads(model: nn.Module, cfg: HeadPruneConfig, task) -> nn.Module:
    """Remove attention heads by l1/taylor/random saliency; q/k/v/output projections shrink."""
    refuse_quantized(model, "prune.heads")
    sites = head_sites(model)
    if not sites:
        raise UnsupportedModuleError(
            f"prune.heads found no attention layer it knows in {type(model).__name__}: it handles effdl's zoo "
            "encoder (query/key/value/out + num_heads) and Hugging Face BERT-style attention. Fix: build the "
            "attention from separate query/key/value/output nn.Linear layers with a num_heads attribute")
    if cfg.layers:
        chosen = match_scopes(model, cfg.layers)
        sites = [s for s in sites if s.name in chosen]
        if not sites:
            raise ConfigError(f"prune.heads: layers={list(cfg.layers)} match no attention layer; attention layers "
                              f"are {[s.name for s in head_sites(model)][:6]}")
    for s in sites:
        if s.query.out_features != s.num_heads * s.head_dim or s.out.in_features != s.query.out_features:
            raise UnsupportedModuleError(
                f"prune.heads: attention {s.name!r} has {s.num_heads} heads of {s.head_dim} but projections of "
                f"{s.query.out_features}/{s.out.in_features} features; its head count attribute is inconsistent")
    if cfg.ratio > 0:
        scores = head_scores(model, sites, cfg.saliency, task, cfg.batches, cfg.seed)
        kept = plan(scores, cfg.ratio, cfg.scope)
        before = {s.name: s.num_heads for s in sites}
        for s, heads in zip(sites, kept):
            if len(heads) < s.num_heads:
                s.keep(heads)
        attach(model, HeadsRecord(layers={s.name: HeadsKept(before=before[s.name], kept=heads)
                                          for s, heads in zip(sites, kept)}))
    if cfg.finetune_epochs > 0:
        task.train(model, epochs=cfg.finetune_epochs, lr=cfg.lr)
    return model.eval()


def head_counts(model: nn.Module) -> dict[str, int]:
    return {s.name: s.num_heads for s in head_sites(model)}


__all__ = ["HeadPruneConfig", "HeadSite", "head_counts", "head_scores", "head_sites", "plan",
           "prune_heads"]
