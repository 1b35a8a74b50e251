"""quantize.qat: quantization-aware training (fake quantization in the forward, STE in the backward).

Every Conv/Linear weight is replaced, through a ``torch.nn.utils.parametrize`` parametrization
(module names and the float weights stay where they were), by its fake-quantized value on the
weight-only grid of ``quantize.weights`` (per output channel or per group of a channel's row,
2..8 bits, ``scheme.fake_quantize``: gradient 1 inside the grid's range, 0 where clamped).
With ``activations=True`` the input of every such layer is fake-quantized too, per tensor, uint8
affine (the INT8 runtimes' scheme), its range tracked by a moving-average min-max estimator
(calibration.py).

* Weight scales are the min-max of the current weights at every step, or, with
  ``learnable_scale``, LSQ parameters (Esser et al. 2020) whose gradient is scaled by
  1/sqrt(numel * qmax) and that are trained with the weights.
* ``init="ptq"`` warm-starts from post-training ranges: activation observers calibrated on
  ``task.calibration_batches`` and LSQ scales at the min-max scale; ``init="float"`` starts the
  observers on the first training batch and LSQ scales at LSQ's 2 mean|w| / sqrt(qmax).
* After ``freeze_after`` of the training steps the observers stop updating (activation ranges and
  weight scales are frozen at their current values) and BatchNorm statistics are frozen (eval mode).
* The mean squared quantization error of each weight is recorded before training and at every
  epoch end (record ``qat_mse``), with the error histograms (``quant_error_hist``) and activation
  ranges (``act_ranges``) of the final model.

Conversion at the end:
* ``bits == 8`` with activations: the QAT-trained float weights go through ``quantize.ptq``
  (PT2E INT8, so both INT8 runtimes lower it) with every layer's *input range pinned to the
  trained one* (the frozen moving average; pt2e-int8 sets the observer, ort-int8 passes
  TensorQuantOverrides), so the int8 model sees the activation grid QAT trained on; tensors QAT
  did not fake-quantize (pooling outputs, residual adds) are calibrated min-max. The per-channel
  weight grid (max|w| / 127) is the QAT grid when scales are min-max and unfrozen at the end; with
  learnable or frozen scales the grids can differ: the fraction of int8 weight codes equal to the
  QAT codes is recorded as ``qat_int8_agreement``.
* otherwise (weight-only): a ``WeightOnlyModel`` holding exactly the QAT grid's codes (the
  trained scales included), bit-packed, so the stored size is true.

Training runs by ``task.train`` (AdamW, cosine schedule). Exact zeros of a pruned model are not
kept through QAT (the trained weights behind the parametrization are free); prune after QAT or
fine-tune with the masks afterwards.
"""
from __future__ import annotations

import contextlib
import math
from typing import Literal

import pydantic
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from ...core.compressed import float_reference
from ...core.config import TechniqueConfig
from ...core.errors import ConfigError
from ...core.records import Part, Record, attach
from ...core.forms import refuse_quantized
from ...core.registry import register
from .calibration import MovingAverageMinMax
from .packing import pack
from .scheme import (
    SCALE_FLOOR,
    QScheme,
    check_bits,
    expand,
    fake_quantize,
    qparams,
    qparams_from_range,
    quantize,
)
from .weight_only import (
    WEIGHTED,
    WeightOnlyConfig,
    WeightOnlyModel,
    dequantize_weight,
    target_layers,
)

__all__ = ["ActFakeQuant", "QATConfig", "WeightFakeQuant", "histogram_record", "qat", "quant_error_hist"]

#: uint8 per-tensor affine: the activation scheme of the INT8 runtimes (quantize.ptq)
ACT_SCHEME = QScheme(bits=8, mode="affine", signed=False)
MAX_QAT_BITS = 8


class QATConfig(TechniqueConfig):
    """Quantization-aware training of Conv/Linear weights (2..8 bits) and optionally uint8 activations."""

    bits: int = pydantic.Field(8, description="weight code width, 2..8")
    mode: Literal["symmetric", "affine"] = pydantic.Field("symmetric", description="weight zero point 0, or an integer one")
    granularity: Literal["channel", "group"] = pydantic.Field(
        "channel", description="one weight scale per output channel, or per group of a channel's row")
    group_size: int | None = pydantic.Field(None, ge=2, description="weights per group (granularity='group' only)")
    activations: bool = pydantic.Field(
        False, description="also fake-quantize each layer's input (uint8 per tensor); needs bits=8, converts to INT8 PTQ")
    learnable_scale: bool = pydantic.Field(False, description="LSQ: weight scales are trained parameters (symmetric only)")
    init: Literal["ptq", "float"] = pydantic.Field(
        "ptq", description="warm start from calibrated (PTQ) ranges, or from the float model (ranges from training)")
    epochs: float = pydantic.Field(2.0, gt=0.0, description="training epochs (fractions allowed)")
    lr: float = pydantic.Field(1e-3, gt=0.0, description="learning rate (AdamW, cosine schedule)")
    freeze_after: float = pydantic.Field(
        0.75, ge=0.0, le=1.0, description="fraction of the training after which observers and BatchNorm statistics freeze")
    momentum: float = pydantic.Field(0.9, ge=0.0, lt=1.0, description="moving-average momentum of the activation ranges")
    num_batches: int = pydantic.Field(8, ge=1, description="calibration batches (warm start and INT8 conversion)")
    keep_first_last: bool = pydantic.Field(False, description="leave the first and the last Conv/Linear layer in FP32")
    exclude: tuple[str, ...] = pydantic.Field((), description="module-name glob patterns left in FP32")

    @pydantic.field_validator("bits", mode="before")
    @classmethod
    def _bits(cls, v):
        v = check_bits(v)
        if v > MAX_QAT_BITS:
            raise ValueError(f"bits={v}: QAT trains 2..{MAX_QAT_BITS}-bit grids; for wider codes use post-training quantize.weights")
        return v

    @pydantic.model_validator(mode="after")
    def _consistent(self):
        if self.activations and (self.bits != 8 or self.granularity != "channel" or self.mode != "symmetric"):
            raise ValueError("activations=True converts to the INT8 runtimes' scheme: use bits=8, granularity='channel', "
                             "mode='symmetric' (or activations=False for weight-only QAT)")
        if self.learnable_scale and self.mode != "symmetric":
            raise ValueError("learnable_scale (LSQ) learns scales of a symmetric grid: use mode='symmetric'")
        self.weight_config()  # group_size present iff group, checked by QScheme
        return self

    def weight_config(self) -> WeightOnlyConfig:
        """The weight-only format the result is stored in (the grid trained on)."""
        return WeightOnlyConfig(bits=self.bits, mode=self.mode, granularity=self.granularity, group_size=self.group_size)


# -- fake quantizers -----------------------------------------------------------------------------
def _grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """Value x, gradient scaled by g (LSQ's step-size gradient scale)."""
    return (x - x * g).detach() + x * g


class WeightFakeQuant(nn.Module):
    """Parametrization: weight -> its fake-quantized value on the weight-only grid (rows [out, in*k*k])."""

    def __init__(self, weight: torch.Tensor, cfg: WeightOnlyConfig, learnable: bool, init: str) -> None:
        super().__init__()
        self.cfg, self.scheme = cfg, cfg.scheme()
        self.shape, self.n = tuple(weight.shape), weight[0].numel()
        self.frozen = False
        rows = self._rows(weight.detach())
        scale, zp = qparams(rows, self.scheme)
        if learnable:
            if init == "float":  # LSQ's initialisation: 2 mean|w| / sqrt(qmax) per scale
                scale = _group_mean(rows.abs(), scale.shape, self.scheme) * 2 / math.sqrt(self.scheme.qmax)
            self.scale = nn.Parameter(scale.clamp_min(SCALE_FLOOR))
            self.grad_factor = 1.0 / math.sqrt(weight.numel() * self.scheme.qmax)
        else:
            self.scale = None
        self.register_buffer("frozen_scale", scale.clone())
        self.register_buffer("zero_point", zp.clone())

    def _rows(self, w: torch.Tensor) -> torch.Tensor:
        rows = w.reshape(w.shape[0], -1)
        if self.cfg.granularity == "group":
            rows = F.pad(rows, (0, -rows.shape[1] % self.cfg.group_size))
        return rows

    def qparams(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero point) in use now: learned, frozen, or the min-max of the current weight."""
        if self.scale is not None:
            return self.scale.detach().clamp_min(SCALE_FLOOR), self.zero_point
        if self.frozen:
            return self.frozen_scale, self.zero_point
        return qparams(self._rows(w), self.scheme)

    def freeze(self, w: torch.Tensor) -> None:
        if self.scale is None:
            scale, zp = qparams(self._rows(w), self.scheme)
            self.frozen_scale.copy_(scale)
            self.zero_point.copy_(zp)
        self.frozen = True

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        rows = self._rows(w)
        if self.scale is None:
            scale, zp = self.qparams(w)
            out = fake_quantize(rows, scale, zp, self.scheme)
        else:
            # s * fq(w / s) with unit scale: d/dw = 1 inside the range, d/ds = q - w/s inside and
            # qmin/qmax where clamped (the LSQ gradient), all through scheme.fake_quantize
            s = _grad_scale(self.scale.clamp_min(SCALE_FLOOR), self.grad_factor)
            s_full = expand(s, rows, self.scheme)
            out = s_full * fake_quantize(rows / s_full, torch.ones_like(self.scale.detach()), self.zero_point, self.scheme)
        return out[:, :self.n].reshape(self.shape)

    def codes(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """The stored parts (weight_only.py's layout) of ``w`` on the grid in use."""
        scale, zp = self.qparams(w)
        scale, zp = scale.detach().float(), zp.detach()
        q = quantize(self._rows(w.detach()), scale, zp, self.scheme)[:, :self.n]
        parts = {"packed": pack(q, self.cfg.bits, signed=True), "scale": scale.clone()}
        if self.cfg.mode == "affine":
            parts["zero_point"] = pack(zp, self.cfg.bits, signed=True)
        return parts


def _group_mean(values: torch.Tensor, shape, scheme: QScheme) -> torch.Tensor:
    """Mean of ``values`` over each quantization group of a 2-D [out, row] view."""
    if scheme.granularity == "channel":
        return values.mean(1)
    g = scheme.group_size
    return values.reshape(values.shape[0], -1, g).mean(-1).reshape(shape)


class ActFakeQuant:
    """Forward pre-hook state: fake-quantizes a layer's input (uint8 per tensor) with a moving-average range."""

    def __init__(self, name: str, momentum: float) -> None:
        self.observer = MovingAverageMinMax(momentum=momentum, name=name)
        self.frozen = False
        self.calibrating = False  # observe in eval mode too (the warm start's calibration pass)
        self.seen_lo, self.seen_hi = math.inf, -math.inf  # absolute extremes, for the range plot

    def observe(self, x: torch.Tensor) -> None:
        self.observer.observe(x)
        x = x.detach()
        self.seen_lo, self.seen_hi = min(self.seen_lo, float(x.min())), max(self.seen_hi, float(x.max()))

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self.observer.range()
        return qparams_from_range(lo, hi, ACT_SCHEME)

    def __call__(self, module: nn.Module, args):
        x = args[0]
        if (module.training or self.calibrating) and not self.frozen:
            self.observe(x)
        if self.observer.count == 0:  # nothing seen yet (eval before any data): leave the input float
            return None
        scale, zp = self.qparams()
        return (fake_quantize(x, scale, zp, ACT_SCHEME),) + tuple(args[1:])


# -- records for the report -------------------------------------------------------------------
class ErrorHist(Part):
    """One layer's error histograms: counts of each kind over one shared set of bin edges."""

    edges: list[float]
    weights: list[float] | None = None
    activations: list[float] | None = None


class QuantErrorHistRecord(Record):
    """Per layer, the histogram of the quantization error (quantized - float) of its weights (and,
    for QAT with activations, its inputs); quantize.qat, quantize.mixed and quantize.binary/ternary."""

    key = "quant_error_hist"
    root = "layers"
    layers: dict[str, ErrorHist]


class QATRecord(Record):
    """Per layer, the mean squared weight quantization error before QAT and at each epoch's end."""

    key = "qat_mse"
    root = "mse"
    mse: dict[str, list[float]]


class ActRange(Part):
    """A layer's observed input range and the range kept by quantization (the clip)."""

    min: float
    max: float
    clip_lo: float
    clip_hi: float


class ActRangesRecord(Record):
    """Per layer, its input's observed range and the clip quantization kept (QAT's trained ranges, or
    quantize.ptq's calibration)."""

    key = "act_ranges"
    root = "layers"
    layers: dict[str, ActRange]


class Int8AgreementRecord(Record):
    """The fraction of INT8 weight codes equal to QAT's own grid (None: no layer to compare)."""

    key = "qat_int8_agreement"
    root = "agreement"
    agreement: float | None


def histogram_record(errors: dict[str, torch.Tensor], bins: int = 31) -> dict[str, list[float]]:
    """{"edges", <kind>: counts} of each error tensor over one shared symmetric range."""
    m = max((float(e.abs().max()) for e in errors.values() if e.numel()), default=0.0) or 1e-12
    edges = torch.linspace(-m, m, bins + 1, dtype=torch.float64)
    out: dict[str, list[float]] = {"edges": edges.tolist()}
    for kind, e in errors.items():
        out[kind] = torch.histc(e.detach().double().reshape(-1), bins=bins, min=-m, max=m).tolist()
    return out


def quant_error_hist(reference: nn.Module, quantized: nn.Module, bins: int = 31) -> dict[str, dict]:
    """Histogram of (quantized - float) weights of every Conv/Linear layer that differs; works for any
    weight-quantized model (WeightOnlyModel, quantize.binary/ternary, mixed) against its float source."""
    inner = float_reference(quantized)  # an encoded-weights model keeps its decoded layers there
    ref = dict(reference.named_modules())
    out = {}
    for name, m in inner.named_modules():
        r = ref.get(name)
        if isinstance(m, WEIGHTED) and isinstance(r, WEIGHTED) and r.weight.shape == m.weight.shape:
            err = m.weight.detach().float() - r.weight.detach().float()
            if bool((err != 0).any()):
                out[name] = histogram_record({"weights": err}, bins)
    return out


# -- the technique -----------------------------------------------------------------------------
def _mse(layers) -> dict[str, float]:
    with torch.no_grad():
        out = {}
        for name, m in layers:
            w = m.parametrizations.weight.original
            out[name] = float(((m.weight - w) ** 2).mean())
        return out


@contextlib.contextmanager
def _fake_quantized(layers, cfg: QATConfig):
    """Attach the weight parametrizations and activation hooks; remove both (keeping the trained
    float weights) on exit."""
    wcfg = cfg.weight_config()
    quantizers, acts, handles = {}, {}, []
    try:
        for name, m in layers:
            quantizers[name] = WeightFakeQuant(m.weight, wcfg, cfg.learnable_scale, cfg.init)
            parametrize.register_parametrization(m, "weight", quantizers[name])
            if cfg.activations:
                acts[name] = ActFakeQuant(name or "(root)", cfg.momentum)
                handles.append(m.register_forward_pre_hook(acts[name]))
        yield quantizers, acts
    finally:
        for h in handles:
            h.remove()
        for name, m in layers:
            if parametrize.is_parametrized(m, "weight"):
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)


@register("quantize.qat", QATConfig, needs="training", models=("cnn", "mlp", "encoder", "decoder"), example=lambda: QATConfig(epochs=0.25, num_batches=1))
def qat(model: nn.Module, cfg: QATConfig, task) -> nn.Module:
    """Quantization-aware training (fake quant + STE, optional LSQ scales); INT8 via PTQ or packed weight-only."""
    refuse_quantized(model, "quantize.qat")
    if task is None:
        raise ConfigError("quantize.qat needs training data: pass task=ImageClassification(...)")
    layers = target_layers(model, cfg.exclude, cfg.keep_first_last)
    if not layers:
        raise ConfigError("quantize.qat: no Conv/Linear layer left to quantize; check exclude / keep_first_last")
    steps_per_epoch = task.steps_per_epoch()
    total = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    freeze_step = math.floor(cfg.freeze_after * total)
    mse: dict[str, list[float]] = {n: [] for n, _ in layers}

    with _fake_quantized(layers, cfg) as (quantizers, acts):
        if cfg.activations and cfg.init == "ptq":  # warm start: calibrate the ranges on real batches first
            model.eval()  # BatchNorm statistics untouched by calibration
            for a in acts.values():
                a.calibrating = True
            with torch.no_grad():
                for x in task.calibration_batches(cfg.num_batches):
                    model(x)
            for a in acts.values():
                a.calibrating = False
        for n, v in _mse(layers).items():
            mse[n].append(v)
        step = 0

        def freeze() -> None:
            for name, m in layers:
                quantizers[name].freeze(m.parametrizations.weight.original)
            for a in acts.values():
                a.frozen = True
            for mod in model.modules():
                if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                    mod.eval()  # task.train sets train() once at its start, so this holds to the end

        def loss_fn(m, x, y):
            nonlocal step
            if step and step % steps_per_epoch == 0:  # an epoch just ended
                for n, v in _mse(layers).items():
                    mse[n].append(v)
            if step == freeze_step:
                freeze()
            step += 1
            return task.loss(m, x, y)

        task.train(model, epochs=cfg.epochs, lr=cfg.lr, loss_fn=loss_fn)
        for n, v in _mse(layers).items():  # the end of the last (possibly partial) epoch
            mse[n].append(v)
        parts = {name: quantizers[name].codes(m.parametrizations.weight.original) for name, m in layers}
        ranges = {}
        for name, a in acts.items():
            if a.observer.count:
                lo, hi = a.observer.range()
                ranges[name] = {"min": a.seen_lo, "max": a.seen_hi, "clip_lo": lo, "clip_hi": hi}
        act_err = _activation_errors(model, task, acts) if acts else {}

    wcfg = cfg.weight_config()
    reference = {n: m.weight.detach().clone() for n, m in layers}  # the trained float weights
    if cfg.activations:
        out = _to_int8(model, cfg, task, parts, ranges)
    else:
        with torch.no_grad():
            for name, m in layers:
                m.weight.copy_(dequantize_weight(parts[name], m.weight.shape, wcfg))
        out = WeightOnlyModel(model.eval(), wcfg, parts)
    hist = {}
    for name, m in layers:
        w_err = dequantize_weight(parts[name], m.weight.shape, wcfg) - reference[name]
        errs = {"weights": w_err}
        if name in act_err:
            errs["activations"] = act_err[name]
        hist[name] = histogram_record(errs)
    attach(out, QATRecord(mse=mse))
    attach(out, QuantErrorHistRecord(layers=hist))
    if ranges:
        attach(out, ActRangesRecord(layers=ranges))
    return out


@torch.no_grad()
def _activation_errors(model: nn.Module, task, acts: dict[str, ActFakeQuant]) -> dict[str, torch.Tensor]:
    """(fake-quantized - float) inputs of each layer on one calibration batch, frozen ranges."""
    errs: dict[str, torch.Tensor] = {}
    handles = []
    for name, a in acts.items():
        def grab(module, args, name=name, a=a):
            if a.observer.count:
                scale, zp = a.qparams()
                errs[name] = fake_quantize(args[0], scale, zp, ACT_SCHEME) - args[0]
        handles.append(model.get_submodule(name).register_forward_pre_hook(grab, prepend=True))  # sees the float input
    try:
        model.eval()
        model(task.calibration_batches(1)[0])
    finally:
        for h in handles:
            h.remove()
    return errs


def _to_int8(model: nn.Module, cfg: QATConfig, task, parts, ranges: dict[str, dict]):
    """The QAT-trained float weights through quantize.ptq (real INT8 lowerings) with each layer's
    input range the trained one; records how many int8 weight codes equal the QAT grid's."""
    from .packing import unpack
    from .ptq import PTQConfig, quantize_int8

    # fold_bn=False: QAT trained the unfolded weights on its grid, so those are the codes to store
    # and compare (QAT does not simulate BatchNorm folding)
    config = PTQConfig(weight_granularity="channel", calibration="minmax", num_batches=cfg.num_batches,
                       exclude=cfg.exclude, fold_bn=False)
    q = quantize_int8(model.eval(), config, task,
                      input_ranges={n: (r["clip_lo"], r["clip_hi"]) for n, r in ranges.items()})
    stored = q.storage_tensors()
    same = count = 0
    for name, p in parts.items():
        key = f"{name}.weight.int8"
        if key not in stored:
            continue
        ptq_codes = stored[key].reshape(stored[key].shape[0], -1).to(torch.int64)
        qat_codes = unpack(p["packed"], 8, ptq_codes.numel(), signed=True).reshape(ptq_codes.shape).to(torch.int64)
        same += int((ptq_codes == qat_codes).sum())
        count += ptq_codes.numel()
    attach(q, Int8AgreementRecord(agreement=same / count if count else None))
    return q
