"""quantize.mixed: a bit width per layer, from measured sensitivity, under a size budget.

1. Sensitivity of each Conv/Linear layer at each width b of ``choices``:
   * ``measure="val_drop"``: the validation-split quality drop when that layer alone is weight-
     quantized to b bits (every other layer FP32);
   * ``measure="hessian"``: HAWQ-V2's proxy tr(H_l)/n_l * ||Q_b(w_l) - w_l||^2, the trace of the
     loss Hessian block of the layer estimated by Hutchinson's method (E[v^T H v], Rademacher v,
     Hessian-vector products by double backprop on training batches).
2. Allocation: minimise the summed sensitivity subject to the budget, either exactly
   (``allocation="dp"``: a multiple-choice knapsack solved over the Pareto front of (cost,
   sensitivity) partial assignments, layer by layer) or greedily (start at the widest choice and
   repeatedly narrow the layer with the smallest sensitivity increase per bit saved).
   The budget is ``budget_bits_per_weight`` (mean code bits over all quantized weights) or
   ``budget_bytes`` (bytes of the stored quantized weights: packed codes + float32 scales).
   First/last layers (``keep_first_last``) are fixed at the widest choice and count in the budget.
3. The result is a ``MixedPrecisionModel``, a WeightOnlyModel whose layers each carry their own
   width (stored bit-packed, so the measured size is true; runs by dequantizing).

The sensitivity table is attached as record ``quant_sensitivity`` (the report's bar chart), the
weight error histograms as ``quant_error_hist``. Sensitivities are measured one layer at a time and
assumed additive, the usual approximation (interactions between layers are not measured).
"""
from __future__ import annotations

import math
from typing import Literal

import pydantic
import torch
import torch.nn as nn

from ...core.config import TechniqueConfig
from ...core.errors import ArtifactError, ConfigError
from ...core.records import Part, Record, attach
from ...core.registry import register
from ...core.forms import refuse_quantized
from .packing import packed_nbytes
from .qat import QuantErrorHistRecord, histogram_record
from .scheme import check_bits
from .weight_only import (
    split_parts,
    WeightOnlyConfig,
    WeightOnlyModel,
    dequantize_weight,
    quantize_weight,
    target_layers,
)

__all__ = ["MixedConfig", "MixedPrecisionModel", "allocate", "layer_cost", "load_mixed", "mixed"]

SCALE_BYTES = 4  # float32


class MixedLayer(Part):
    """One layer: its weights, chosen width, whether it was fixed at the widest (first/last) and its
    sensitivity at each width (keys: the width as a string, as JSON keys are)."""

    params: int
    bits: int
    fixed: bool
    sensitivity: dict[str, float]
    hessian_trace: float | None = None  # measure="hessian" only


class MixedSensitivityRecord(Record):
    """quantize.mixed's per-layer sensitivity table and allocation (the report's bar chart)."""

    key = "quant_sensitivity"
    measure: Literal["val_drop", "hessian"]
    metric: str
    budget: int | float  # in ``unit``s
    cost: int  # of the chosen widths, in ``unit``s
    unit: Literal["bytes", "bits"]
    layers: dict[str, MixedLayer]


class MixedConfig(TechniqueConfig):
    """Per-layer weight bit widths from sensitivity, under a size budget."""

    choices: tuple[int, ...] = pydantic.Field((2, 4, 8), min_length=1, description="candidate widths (2..8 bits)")
    budget_bits_per_weight: float | None = pydantic.Field(
        None, gt=0.0, description="mean code bits per quantized weight (give this or budget_bytes)")
    budget_bytes: int | None = pydantic.Field(
        None, gt=0, description="bytes of the stored quantized weights, packed codes + scales (or budget_bits_per_weight)")
    granularity: Literal["channel", "group"] = pydantic.Field("channel", description="one scale per output channel or per group")
    group_size: int | None = pydantic.Field(None, ge=2, description="weights per group (granularity='group' only)")
    measure: Literal["val_drop", "hessian"] = pydantic.Field(
        "val_drop", description="sensitivity: validation quality drop of the layer quantized alone, or Hutchinson Hessian proxy")
    allocation: Literal["dp", "greedy"] = pydantic.Field("dp", description="exact knapsack, or greedy narrowing")
    keep_first_last: bool = pydantic.Field(True, description="fix the first and the last Conv/Linear layer at the widest choice")
    hutchinson_samples: int = pydantic.Field(16, ge=1, description="Rademacher probes for the Hessian trace")
    num_batches: int = pydantic.Field(4, ge=1, description="training batches for the Hessian trace")
    exclude: tuple[str, ...] = pydantic.Field((), description="module-name glob patterns left in FP32")

    @pydantic.field_validator("choices", mode="before")
    @classmethod
    def _choices(cls, v):
        v = tuple(v) if isinstance(v, (list, tuple)) else (v,)
        out = tuple(sorted({check_bits(b) for b in v}))
        if out and out[-1] > 8:
            raise ValueError(f"choices {out}: mixed precision picks among 2..8-bit widths; keep wider layers FP32 via exclude")
        return out

    @pydantic.model_validator(mode="after")
    def _budget(self):
        if (self.budget_bits_per_weight is None) == (self.budget_bytes is None):
            raise ValueError("give exactly one budget: budget_bits_per_weight (e.g. 4.0) or budget_bytes")
        self.layer_config(self.choices[0])
        return self

    def layer_config(self, bits: int) -> WeightOnlyConfig:
        return WeightOnlyConfig(bits=bits, granularity=self.granularity, group_size=self.group_size)


class MixedPrecisionModel(WeightOnlyModel):
    """A WeightOnlyModel with one width per layer (``bits``); ``config`` is the widest layer's."""

    def __init__(self, model: nn.Module, config: MixedConfig, parts, bits: dict[str, int]) -> None:
        super().__init__(model, config.layer_config(max(bits.values())), parts)
        self.mixed_config = config
        #: per quantized module: its code width
        self.bits = dict(bits)


# -- costs and allocation -----------------------------------------------------------------------
def _num_scales(weight_shape, cfg: MixedConfig) -> int:
    out, row = weight_shape[0], math.prod(weight_shape[1:])
    return out if cfg.granularity == "channel" else out * math.ceil(row / cfg.group_size)


def layer_cost(weight_shape, bits: int, cfg: MixedConfig) -> int:
    """Budget units of one layer at ``bits``: code bits (bits-per-weight budget) or stored bytes."""
    n = math.prod(weight_shape)
    if cfg.budget_bytes is None:
        return n * bits
    return packed_nbytes(n, bits) + SCALE_BYTES * _num_scales(weight_shape, cfg)


def allocate(costs: dict[str, dict[int, int]], sens: dict[str, dict[int, float]], budget: float,
             method: str = "dp") -> dict[str, int]:
    """Widths minimising the summed sensitivity with total cost <= budget (ties: the cheaper)."""
    smallest = sum(min(c.values()) for c in costs.values())
    if smallest > budget:
        raise ConfigError(f"the budget ({budget:g}) is below the smallest possible size ({smallest:g}, every layer at its "
                          "narrowest choice): raise the budget, add narrower choices or quantize the fixed layers")
    names = list(costs)
    if method == "greedy":
        bits = {n: max(costs[n]) for n in names}
        total = sum(costs[n][bits[n]] for n in names)
        while total > budget:
            best = None
            for n in names:
                lower = [b for b in costs[n] if b < bits[n]]
                if not lower:
                    continue
                b = max(lower)
                saved = costs[n][bits[n]] - costs[n][b]
                rate = (sens[n][b] - sens[n][bits[n]]) / max(saved, 1e-12)
                if best is None or rate < best[0]:
                    best = (rate, n, b, saved)
            _, n, b, saved = best
            bits[n] = b
            total -= saved
        return bits
    # exact: Pareto front of (cost, sensitivity, widths) over the layers seen so far
    front: list[tuple[float, float, tuple[int, ...]]] = [(0, 0.0, ())]
    for n in names:
        grown = sorted(((c + costs[n][b], s + sens[n][b], w + (b,)) for c, s, w in front for b in costs[n]
                        if c + costs[n][b] <= budget), key=lambda t: (t[0], t[1]))
        front = []
        for item in grown:  # keep only strictly better sensitivity at higher cost
            if not front or item[1] < front[-1][1] - 1e-15:
                front.append(item)
    best = min(front, key=lambda t: (t[1], t[0]))
    return dict(zip(names, best[2]))


# -- sensitivity --------------------------------------------------------------------------------
def _quantized_weight(w: torch.Tensor, bits: int, cfg: MixedConfig) -> tuple[dict, torch.Tensor]:
    lc = cfg.layer_config(bits)
    parts = quantize_weight(w, lc)
    return parts, dequantize_weight(parts, w.shape, lc).to(w.dtype)


@torch.no_grad()
def _val_drops(model, task, layers, cfg: MixedConfig) -> dict[str, dict[int, float]]:
    metric = task.metric  # the task's primary metric and direction (accuracy, Spearman, perplexity)
    base = task.evaluate(model, "val")[metric.name]
    out = {}
    for name, m in layers:
        original = m.weight.detach().clone()
        out[name] = {}
        for b in cfg.choices:
            m.weight.copy_(_quantized_weight(original, b, cfg)[1])
            out[name][b] = float(metric.drop(base, task.evaluate(model, "val")[metric.name]))
        m.weight.copy_(original)
    return out


def _hessian_traces(model, task, layers, cfg: MixedConfig) -> dict[str, float]:
    """Hutchinson estimate of tr(H) of the loss Hessian block of each layer's weight."""
    weights = [m.weight for _, m in layers]
    gen = torch.Generator().manual_seed(0)
    was = model.training
    model.eval()
    traces = [0.0] * len(weights)
    batches = 0
    for x, y in task.batches("train", shuffle=True):
        loss = task.loss(model, x, y)
        grads = torch.autograd.grad(loss, weights, create_graph=True)
        for _ in range(cfg.hutchinson_samples):
            vs = [torch.randint(0, 2, w.shape, generator=gen).float() * 2 - 1 for w in weights]
            hv = torch.autograd.grad(grads, weights, grad_outputs=vs, retain_graph=True)
            for i, (v, h) in enumerate(zip(vs, hv)):
                traces[i] += float((v * h).sum()) / cfg.hutchinson_samples
        batches += 1
        if batches == cfg.num_batches:
            break
    model.train(was)
    return {name: t / batches for (name, _), t in zip(layers, traces)}


def _hessian_sens(model, task, layers, cfg: MixedConfig) -> tuple[dict[str, dict[int, float]], dict[str, float]]:
    traces = _hessian_traces(model, task, layers, cfg)
    out = {}
    for name, m in layers:
        w = m.weight.detach()
        out[name] = {b: traces[name] / w.numel() * float(((_quantized_weight(w, b, cfg)[1] - w) ** 2).sum())
                     for b in cfg.choices}
    return out, traces


# -- the technique -----------------------------------------------------------------------------
@register("quantize.mixed", MixedConfig, needs="calibration", models=("cnn", "mlp", "encoder", "decoder"), example=lambda: MixedConfig(choices=(4, 8), budget_bits_per_weight=6.0, keep_first_last=False, num_batches=1))
def mixed(model: nn.Module, cfg: MixedConfig, task) -> MixedPrecisionModel:
    """Per-layer weight widths (e.g. 2/4/8 bits) from measured sensitivity under a size budget; packed weight-only."""
    refuse_quantized(model, "quantize.mixed")
    if task is None:
        raise ConfigError("quantize.mixed measures sensitivity on data: pass task=ImageClassification(...)")
    model.eval()
    layers = target_layers(model, cfg.exclude, False)
    if not layers:
        raise ConfigError("quantize.mixed: no Conv/Linear layer to quantize; check exclude")
    ends = {layers[0][0], layers[-1][0]} if cfg.keep_first_last else set()
    widest = max(cfg.choices)
    if cfg.measure == "val_drop":
        sens, traces = _val_drops(model, task, layers, cfg), {}
    else:
        sens, traces = _hessian_sens(model, task, layers, cfg)
    costs = {n: {b: layer_cost(m.weight.shape, b, cfg) for b in ((widest,) if n in ends else cfg.choices)}
             for n, m in layers}
    total_weights = sum(m.weight.numel() for _, m in layers)
    budget = cfg.budget_bytes if cfg.budget_bytes is not None else cfg.budget_bits_per_weight * total_weights
    bits = allocate(costs, sens, budget, cfg.allocation)
    parts, hist = {}, {}
    with torch.no_grad():
        for name, m in layers:
            parts[name], value = _quantized_weight(m.weight, bits[name], cfg)
            hist[name] = histogram_record({"weights": value - m.weight})
            m.weight.copy_(value)
    out = MixedPrecisionModel(model, cfg, parts, bits)
    attach(out, MixedSensitivityRecord(
        measure=cfg.measure, metric=task.metric.name if cfg.measure == "val_drop" else "hessian proxy",
        budget=budget, cost=sum(costs[n][bits[n]] for n in bits),
        unit="bytes" if cfg.budget_bytes is not None else "bits",
        layers={n: MixedLayer(params=m.weight.numel(), bits=bits[n], fixed=n in ends,
                              sensitivity={str(b): v for b, v in sens[n].items()},
                              hessian_trace=traces[n] if traces else None) for n, m in layers}))
    attach(out, QuantErrorHistRecord(layers=hist))
    return out


def load_mixed(model: nn.Module, tensors: dict[str, torch.Tensor], bits: dict[str, int], cfg: MixedConfig) -> MixedPrecisionModel:
    """Rebuild a MixedPrecisionModel from ``storage_tensors()`` and the per-layer widths (``.bits``)."""
    parts, plain = split_parts(tensors, ("packed", "scale"))
    if set(parts) != set(bits):
        raise ArtifactError(f"stored layers {sorted(parts)} do not match the widths given for {sorted(bits)}: "
                            "pass the .bits of the model that was saved")
    try:
        with torch.no_grad():
            for name, p in parts.items():
                w = model.get_submodule(name).weight
                plain[f"{name}.weight"] = dequantize_weight(p, w.shape, cfg.layer_config(bits[name])).to(w.dtype)
        model.load_state_dict(plain, strict=True)
    except (AttributeError, KeyError, RuntimeError, ValueError) as exc:
        raise ArtifactError(f"the stored tensors do not match the model ({str(exc).splitlines()[0]}): "
                            "load them into the architecture they were saved from") from None
    return MixedPrecisionModel(model.eval(), cfg, parts, bits)
