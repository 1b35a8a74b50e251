"""quantize.weights: weight-only quantization of Conv/Linear weights to 2..8 (up to 16) bits.

Formats: ``uniform`` (integer grid, any scale), ``pow2`` (the same with power-of-two scales: a
shift), ``log2`` (sign * 2^k levels, log-domain) and ``codebook`` (2^bits k-means levels). Scales
are per tensor, per output channel, or per group of ``group_size`` consecutive weights of an output
channel (along the flattened in*kh*kw row; a row whose length is not a multiple of ``group_size``
ends with one shorter group: zero padding never changes a group's range, since every range holds 0).

There is no sub-8-bit kernel on this CPU: the result runs by dequantizing, i.e. its forward is the
original model with every quantized weight replaced by its dequantized float value. What it
*stores* (``storage_tensors()``) is the true compressed form: the integer codes bit-packed into
uint8 (packing.py), float32 scales, zero points packed with the same width (affine only), or the
codebooks; :func:`load_weight_only` rebuilds the exact dequantized weights from those tensors.
"""
from __future__ import annotations

import math
from typing import Literal

import pydantic
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...core.compressed import CompressedModel
from ...core.config import TechniqueConfig
from ...core.errors import ArtifactError, ConfigError
from ...core.forms import refuse_quantized
from ...core.registry import register
from ...core.scope import weighted_layers
from .packing import pack, unpack
from .scheme import (
    QScheme,
    check_bits,
    dequantize,
    kmeans_codebook,
    log2_dequantize,
    log2_quantize,
    qparams,
    quantize,
)

WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
PARTS = ("packed", "scale", "zero_point", "codebook")


class WeightOnlyConfig(TechniqueConfig):
    """Weight-only quantization (storage compression; runs by dequantizing)."""

    bits: int = pydantic.Field(4, description="code width in bits, 2..16 (2..8 typical)")
    format: Literal["uniform", "pow2", "log2", "codebook"] = pydantic.Field(
        "uniform", description="integer grid, grid with power-of-two scales, sign*2^k levels, or k-means levels")
    mode: Literal["symmetric", "affine"] = pydantic.Field(
        "symmetric", description="zero point 0, or an integer zero point per scale (uniform/pow2 only)")
    granularity: Literal["tensor", "channel", "group"] = pydantic.Field(
        "channel", description="one scale (or codebook) per tensor, per output channel, or per group of a channel")
    group_size: int | None = pydantic.Field(None, ge=2, description="weights per group (granularity='group' only)")
    keep_first_last: bool = pydantic.Field(False, description="leave the first and the last Conv/Linear layer in FP32")
    exclude: tuple[str, ...] = pydantic.Field((), description="module-name glob patterns left in FP32")

    @pydantic.field_validator("bits", mode="before")
    @classmethod
    def _bits(cls, v):
        return check_bits(v)

    @pydantic.model_validator(mode="after")
    def _consistent(self):
        if self.format in ("log2", "codebook") and self.mode == "affine":
            raise ValueError(f"format {self.format!r} has no zero point; use mode='symmetric'")
        if self.format == "codebook" and self.granularity == "group":
            raise ValueError("codebook keeps one codebook per tensor or per channel; use granularity 'tensor' or 'channel'")
        self.scheme()  # the remaining checks (group_size present iff group) live in QScheme
        return self

    def scheme(self) -> QScheme:
        """The QScheme applied to each weight viewed as [out_channels, row] (rows padded to whole groups)."""
        return QScheme(
            bits=self.bits, mode=self.mode, signed=True,
            granularity=self.granularity, axis=None if self.granularity == "tensor" else (0 if self.granularity == "channel" else 1),
            group_size=self.group_size, scale_restriction="pow2" if self.format == "pow2" else "none")


class EncodedWeightsModel(CompressedModel):
    """A model whose converted weights hold their decoded float values, plus the encoded parts that
    are stored instead (weight-only codes, float formats, binary/ternary signs).

    Inference model: ``forward`` is the wrapped model's (run by decoding: no low-bit kernel here),
    so it runs on the FP32 runtimes and its float reference is the wrapped model (``.model``).
    ``storage_tensors()`` gives ``<module>.weight.<part>`` for each encoded part (a part named
    ``weight`` is stored as ``<module>.weight`` itself) and every other tensor of the state dict as is.
    """

    runtime_kind = "float"

    def __init__(self, model: nn.Module, parts: dict[str, dict[str, torch.Tensor]]) -> None:
        super().__init__()
        self.model = model
        #: per converted module: the stored tensors
        self.parts = parts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def float_reference(self) -> nn.Module:
        return self.model

    @property
    def quantized_modules(self) -> tuple[str, ...]:
        return tuple(self.parts)

    def storage_tensors(self) -> dict[str, torch.Tensor]:
        encoded = {id(self.model.get_submodule(n).weight) for n in self.parts}
        out = {(f"{n}.weight" if k == "weight" else f"{n}.weight.{k}"): t
               for n, p in self.parts.items() for k, t in p.items()}
        for key, t in self.model.state_dict(keep_vars=True).items():
            if id(t) not in encoded:
                out[key] = t.detach()
        return out


def split_parts(tensors: dict[str, torch.Tensor], part_names) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """Inverse of ``EncodedWeightsModel.storage_tensors`` naming: ({module: {part: tensor}}, other tensors)."""
    suffixes = tuple(f".weight.{k}" for k in part_names)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    plain: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        if key.endswith(suffixes):
            name, _, part = key.rpartition(".weight.")
            parts.setdefault(name, {})[part] = t
        else:
            plain[key] = t
    return parts, plain


class WeightOnlyModel(EncodedWeightsModel):
    """Weight-only quantized: parts ``packed`` (uint8 codes) + ``scale`` (+ ``zero_point`` /
    ``codebook``); fine-tuning would move the weights off the grid (quantize after training)."""

    def __init__(self, model: nn.Module, config: WeightOnlyConfig, parts: dict[str, dict[str, torch.Tensor]]) -> None:
        super().__init__(model, parts)
        self.config = config


# -- one weight <-> its parts -----------------------------------------------------------------------
def _rows(w: torch.Tensor, cfg: WeightOnlyConfig) -> torch.Tensor:
    """The weight as [out, row], zero-padded to whole groups."""
    rows = w.detach().float().reshape(w.shape[0], -1)
    if cfg.granularity == "group":
        pad = -rows.shape[1] % cfg.group_size
        rows = F.pad(rows, (0, pad))
    return rows


def quantize_weight(w: torch.Tensor, cfg: WeightOnlyConfig) -> dict[str, torch.Tensor]:
    """The stored parts of one weight (codes packed at ``cfg.bits``)."""
    s, n = cfg.scheme(), w[0].numel()
    rows = _rows(w, cfg)
    if cfg.format == "codebook":
        groups = [rows] if cfg.granularity == "tensor" else list(rows)
        fitted = [kmeans_codebook(g, cfg.bits) for g in groups]
        codes = torch.stack([c for c, _ in fitted]).reshape(rows.shape)
        return {"packed": pack(codes, cfg.bits, signed=False), "codebook": torch.stack([b for _, b in fitted])}
    if cfg.format == "log2":
        codes, top = log2_quantize(rows, s)
        return {"packed": pack(codes[:, :n], cfg.bits, signed=True), "scale": top}
    scale, zp = qparams(rows, s)
    parts = {"packed": pack(quantize(rows, scale, zp, s)[:, :n], cfg.bits, signed=True), "scale": scale}
    if cfg.mode == "affine":
        parts["zero_point"] = pack(zp, cfg.bits, signed=True)
    return parts


def dequantize_weight(parts: dict[str, torch.Tensor], shape: torch.Size, cfg: WeightOnlyConfig) -> torch.Tensor:
    """Exact inverse of the storage: the float32 weight of ``shape`` the parts encode."""
    s = cfg.scheme()
    out_ch, n = shape[0], math.prod(shape[1:])
    signed = cfg.format != "codebook"
    codes = unpack(parts["packed"], cfg.bits, out_ch * n, signed=signed).reshape(out_ch, n)
    if cfg.format == "codebook":
        book = parts["codebook"].expand(out_ch, -1)  # one row per channel, or one shared row
        return torch.gather(book, 1, codes.long()).reshape(shape)
    if cfg.granularity == "group":
        codes = F.pad(codes, (0, -n % cfg.group_size))
    if cfg.format == "log2":
        rows = log2_dequantize(codes, parts["scale"], s)
    else:
        scale = parts["scale"]
        zp = unpack(parts["zero_point"], cfg.bits, scale.numel(), signed=True).reshape(scale.shape) \
            if "zero_point" in parts else torch.zeros(scale.shape, dtype=torch.int64)
        rows = dequantize(codes, scale, zp, s)
    return rows[:, :n].reshape(shape)


# -- checks shared with quantize.float -------------------------------------------------------------
def target_layers(model: nn.Module, exclude, keep_first_last: bool) -> list[tuple[str, nn.Module]]:
    """Conv/Linear layers to convert (exclusions applied), refusing NaN/Inf weights."""
    layers = weighted_layers(model, WEIGHTED, exclude)
    if keep_first_last:
        every = weighted_layers(model, WEIGHTED)
        ends = {every[0][0], every[-1][0]} if every else set()
        layers = [(n, m) for n, m in layers if n not in ends]
    bad = [n or "(root)" for n, m in layers if not bool(torch.isfinite(m.weight).all())]
    if bad:
        raise ConfigError(f"NaN/Inf in the weights of module(s) {', '.join(map(repr, bad))}: no range can be computed. "
                          "Fix the checkpoint (retrain, or lower the learning rate)")
    return layers


def encode_layers(model: nn.Module, cfg, encode, decode) -> dict[str, dict[str, torch.Tensor]]:
    """Encode each target layer's weight (``encode(w) -> parts``) and put the decoded values back in
    place (``decode(parts, shape)``): the model then runs exactly what is stored."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    with torch.no_grad():
        for name, m in target_layers(model, cfg.exclude, cfg.keep_first_last):
            parts[name] = encode(m.weight)
            m.weight.copy_(decode(parts[name], m.weight.shape))
    return parts


@register("quantize.weights", WeightOnlyConfig, needs="nothing", models=("cnn", "mlp", "encoder", "decoder"))
def quantize_weights(model: nn.Module, cfg: WeightOnlyConfig, task=None) -> WeightOnlyModel:
    """Weight-only quantization (2-8 bit uniform/pow2/log2/codebook); stored bit-packed, runs dequantized."""
    refuse_quantized(model, "quantize.weights")
    parts = encode_layers(model, cfg, lambda w: quantize_weight(w, cfg), lambda p, shape: dequantize_weight(p, shape, cfg))
    return WeightOnlyModel(model.eval(), cfg, parts)


def load_weight_only(model: nn.Module, tensors: dict[str, torch.Tensor], cfg: WeightOnlyConfig) -> WeightOnlyModel:
    """Rebuild a WeightOnlyModel from ``storage_tensors()`` (e.g. after deploy.storage.load_compact)
    into ``model``, a float model of the same architecture (its values are overwritten)."""
    parts, plain = split_parts(tensors, PARTS)
    try:
        with torch.no_grad():
            for name, p in parts.items():
                w = model.get_submodule(name).weight
                plain[f"{name}.weight"] = dequantize_weight(p, w.shape, cfg).to(w.dtype)
            missing, unexpected = model.load_state_dict(plain, strict=False)
    except (AttributeError, KeyError, RuntimeError, ValueError) as exc:
        raise ArtifactError(f"the stored tensors do not match the model ({str(exc).splitlines()[0]}): "
                            "load them into the architecture they were saved from") from None
    tied = {id(model.get_submodule(n).weight) for n in parts}
    state = model.state_dict(keep_vars=True)
    missing = [k for k in missing if id(state[k]) not in tied]
    if missing or unexpected:
        raise ArtifactError(f"the stored tensors do not match the model (missing {missing[:5]}, unexpected "
                            f"{list(unexpected)[:5]}): load them into the architecture they were saved from")
    return WeightOnlyModel(model.eval(), cfg, parts)
