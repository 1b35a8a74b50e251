"""One-shot pruning of Linear layers from statistics of their inputs: what Wanda and SparseGPT share.

Both methods look at each Linear layer's inputs X on a few real calibration batches (the train
split, through ``Task.calibration_batches``) and prune that layer's weight (out, in) so that its
output X W^T changes little; they differ only in what they do with a layer's statistics, so this
module holds the rest: the config fields, which layers, the calibration data and the order.

Order (``sequential``). As in both papers, the model is pruned stage by stage in forward order,
and each stage's statistics are taken with every earlier stage already pruned, so a layer is fitted
to the inputs it will really see. A stage is one repeated block (a child of the outermost
``nn.ModuleList`` holding the layer: a transformer layer's q/k/v/o and MLP projections are pruned
together, as the papers do) or, outside such lists, a single layer (an MLP's Linears one after the
other). Each stage's pass over the calibration batches stops where the next stage begins, so the
whole costs about half a forward pass per stage and batch. ``sequential=False`` takes every
layer's statistics in one pass on the dense model (faster, less accurate on deep models).

Which layers: the ``nn.Linear`` layers among ``prune.weights``' prunable layers (same ``exclude``
globs and ``protect_first_last``); Conv layers are left dense, with a warning naming them. A
Linear that its model never calls through ``forward`` (``nn.MultiheadAttention``'s ``out_proj``,
whose weight the attention reads directly) has no inputs to measure and is left dense with a
warning. A decoder's ``lm_head`` is a Linear like any other; the papers leave it (and the
embedding it is often tied to) dense: ``exclude=("*lm_head",)`` does the same.

Results are plain weights with +0.0 at pruned positions (as ``prune.magnitude`` leaves them), so
sparsity counting, compact storage, export and the search treat them alike. Weights that are
already zero stay zero (they are pruned first, and SparseGPT never moves them), so applying the
same config twice changes nothing; if existing zeros are spread unevenly over rows they may
leave a layer sparser than asked.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field, model_validator

from ...core.config import TechniqueConfig
from ...core.errors import ConfigError, DataError
from ...core.forms import refuse_quantized
from ..layer_stats import InputStats, input_stats
from .distribution import prunable_layers
from .granularity import Granularity

log = logging.getLogger(__name__)

__all__ = ["CalibratedPruneConfig", "needs", "prune_calibrated"]

#: prune one layer in place from its input statistics (writes +0.0 where pruned)
LayerPruner = Callable[[str, nn.Linear, InputStats], None]


class CalibratedPruneConfig(TechniqueConfig):
    """The fields Wanda and SparseGPT share (not registered itself)."""

    sparsity: float = Field(0.5, ge=0.0, lt=1.0, description="fraction of each pruned layer's weights set to zero (n:m: must be 1 - n/m)")
    pattern: Literal["unstructured", "n:m"] = Field("unstructured", description="any weights of a row, or N of every M consecutive inputs kept")
    n: int = Field(2, ge=1, description="N of N:M (weights kept per group)")
    m: int = Field(4, ge=2, description="M of N:M (group length along the input dimension)")
    num_batches: int = Field(8, ge=1, description="calibration batches from the train split")
    batch_size: int = Field(32, ge=1, description="calibration batch size")
    sequential: bool = Field(True, description="prune stage by stage, each measured after the earlier ones are pruned (see calibrated.py)")
    exclude: tuple[str, ...] = Field((), description="module-name glob patterns left dense")
    protect_first_last: bool = Field(False, description="keep the first prunable layer and the last one (classifier, lm_head) dense")

    @model_validator(mode="after")
    def _consistent(self):
        self.granularity()  # N >= M refused, naming the fix
        if self.pattern == "n:m" and abs(self.sparsity - (1 - self.n / self.m)) > 1e-9:
            raise ValueError(f"{self.n}:{self.m} sparsity is fixed at {1 - self.n / self.m}: "
                             f"set sparsity={1 - self.n / self.m}")
        return self

    def granularity(self) -> Granularity:
        return Granularity(self.pattern, self.n, self.m)

    @property
    def is_noop(self) -> bool:
        """Unstructured at sparsity 0 removes nothing (and leaves the model bit-identical)."""
        return self.pattern == "unstructured" and self.sparsity == 0.0


def needs(cfg: CalibratedPruneConfig) -> str:
    return "nothing" if cfg.is_noop else "calibration"


def target_layers(model: nn.Module, cfg: CalibratedPruneConfig) -> list[tuple[str, nn.Linear]]:
    """The Linear layers to prune, in module order; the N:M grouping checked against each."""
    layers = prunable_layers(model, cfg.exclude, cfg.protect_first_last)
    dense = [n for n, m in layers if not isinstance(m, nn.Linear)]
    if dense:
        warnings.warn(f"{cfg.technique} prunes nn.Linear layers only: {len(dense)} Conv layer(s) left dense "
                      f"({', '.join(dense[:5])}{' ...' if len(dense) > 5 else ''}); exclude them to silence this, "
                      "or use prune.weights for convolutions", stacklevel=3)
    linears = [(n, m) for n, m in layers if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"{cfg.technique} prunes nn.Linear layers and the model has none left to prune "
                          "(check 'exclude' and 'protect_first_last'); use prune.weights for convolutions")
    gran = cfg.granularity()
    for name, m in linears:
        gran.check(name, m.weight)
    return linears


def calibration(task, cfg: CalibratedPruneConfig) -> list[torch.Tensor]:
    """The task's calibration batches, refused with a DataError when there are none or they are not finite."""
    batches = [b for b in task.calibration_batches(cfg.num_batches, cfg.batch_size) if b.shape[0] > 0]
    if not batches:
        raise DataError(f"{cfg.technique}: the task's calibration_batches gave no input: it needs real inputs "
                        "from the train split (at least one example) to measure each layer's activations")
    for i, b in enumerate(batches):
        if b.is_floating_point() and not bool(torch.isfinite(b).all()):
            raise DataError(f"{cfg.technique}: calibration batch {i} contains NaN/Inf: clean the train split")
    return batches


class _Stop(Exception):
    """Raised by a hook to end a calibration pass where the next stage begins."""


def _raise_stop(module, args):
    raise _Stop


def _call_order(model: nn.Module, layers: dict[str, nn.Linear], batch: torch.Tensor, technique: str) -> list[str]:
    """The names of ``layers`` in the order one forward pass calls them (repeats kept)."""
    order: list[str] = []
    handles = [m.register_forward_pre_hook(lambda mod, args, name=name: order.append(name))
               for name, m in layers.items()]
    try:
        with torch.no_grad():
            model(batch[:1])
    except Exception as exc:  # the model's own error type; what matters is that it refused the data
        raise DataError(f"{technique}: the model fails on a calibration batch of shape {tuple(batch.shape)} "
                        f"({type(exc).__name__}: {str(exc).strip()[:200]}): calibrate with the inputs the model expects") from None
    finally:
        for h in handles:
            h.remove()
    return order


def _stage_key(name: str, lists: list[str]) -> str:
    """The repeated block holding layer ``name`` (``<list>.<index>`` of the outermost ModuleList
    above it), else the layer itself."""
    for lst in lists:
        if name.startswith(lst + "."):
            return lst + "." + name[len(lst) + 1:].split(".", 1)[0]
    return name


def plan_stages(model: nn.Module, layers: dict[str, nn.Linear], batch: torch.Tensor, sequential: bool,
                technique: str = "pruning") -> list[tuple[list[str], nn.Module | None]]:
    """[(layer names of a stage, the module whose call ends its pass or None)] in forward order.

    Layers the forward pass never calls are left out with a warning (they have no inputs to measure).
    """
    order = _call_order(model, layers, batch, technique)
    uncalled = [n for n in layers if n not in order]
    if uncalled:
        warnings.warn(f"{technique}: {', '.join(uncalled[:5])} {'is' if len(uncalled) == 1 else 'are'} never called "
                      "through forward() (e.g. nn.MultiheadAttention's out_proj), so there are no inputs to measure: "
                      "left dense; exclude to silence this", stacklevel=3)
    called = [n for n in layers if n in order]
    if not sequential:
        return [(called, None)]
    lists = sorted((n for n, m in model.named_modules() if n and isinstance(m, nn.ModuleList)), key=lambda n: n.count("."))
    first = {n: order.index(n) for n in called}
    last = {n: len(order) - 1 - order[::-1].index(n) for n in called}
    groups: dict[str, list[str]] = {}
    for n in sorted(called, key=first.get):
        groups.setdefault(_stage_key(n, lists), []).append(n)
    stages = list(groups.values())
    out = []
    for i, stage in enumerate(stages):
        stop = None
        if i + 1 < len(stages):
            nxt = min(stages[i + 1], key=first.get)
            # stopping early is only safe when the whole stage has run before the next one starts
            if max(last[n] for n in stage) < first[nxt]:
                stop = layers[nxt]
        out.append((stage, stop))
    return out


def _until(model: nn.Module, stop: nn.Module | None):
    """``model`` as a callable that ends its forward pass at ``stop``'s first call."""
    if stop is None:
        return model

    def run(batch):
        try:
            model(batch)
        except _Stop:
            pass
    return run


def prune_calibrated(model: nn.Module, cfg: CalibratedPruneConfig, task, prune_layer: LayerPruner, *,
                     hessian: bool) -> nn.Module:
    """Prune ``model``'s target layers in place with ``prune_layer``, stage by stage (see the module docstring)."""
    refuse_quantized(model, cfg.technique)
    layers = dict(target_layers(model, cfg))
    if cfg.is_noop:
        return model.eval()
    model.eval()  # dropout off: the statistics are those of inference
    batches = calibration(task, cfg)
    for stage, stop in plan_stages(model, layers, batches[0], cfg.sequential, cfg.technique):
        handle = stop.register_forward_pre_hook(_raise_stop) if stop is not None else None
        try:
            stats = input_stats(_until(model, stop), {n: layers[n] for n in stage}, batches, hessian=hessian)
        finally:
            if handle is not None:
                handle.remove()
        for name in stage:
            prune_layer(name, layers[name], stats[name])
        del stats  # a stage's Hessians are (in, in) each: free them before the next
    return model.eval()
