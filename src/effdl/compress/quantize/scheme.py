"""Quantization numerics: one scheme object and the pure functions every integer/float format uses.

Uniform (Jacob et al. 2018; Krishnamoorthi 2018; the survey's quantize/dequantize algorithms)::

    q = clamp(round(x / s) + z, qmin, qmax)        x_hat = s * (q - z)

* symmetric: z = 0, s = max|x| / qmax; signed symmetric uses the restricted range
  [-(2^(b-1) - 1), 2^(b-1) - 1] so the grid is symmetric around 0 (as quantize.ptq's int8 weights);
* affine: the range is first widened to contain 0, s = (hi - lo) / (qmax - qmin) and the integer
  z = qmin - round(lo / s), so 0.0 is exactly representable (q = z dequantizes to 0.0);
* the scale is floored at ``SCALE_FLOOR`` so a constant or all-zero tensor never divides by zero;
* ``scale_restriction='pow2'`` rounds every scale *up* to a power of two (shift quantization:
  multiplying by s is a bit shift; rounding up never clips the range).

Granularity (one (scale, zero point) per ...):

* ``tensor``: the whole tensor (parameters are 0-d);
* ``channel``: index along ``axis`` (default 0, output channels); parameters have shape [C];
* ``group``: ``group_size`` consecutive elements along ``axis`` (default -1, the input/reduction
  dimension of a Linear weight), separately for every index of the other dimensions; parameters
  have the tensor's shape with that dimension divided by ``group_size``. ``group_size`` must
  divide the dimension (no ragged last group: the storage format stays a plain dense grid);
* ``subchannel``: blocks of ``group_size`` elements of each channel (``axis``, default 0) after
  flattening the channel's other dimensions (e.g. Conv weights [O, I, kh, kw] -> O x (I*kh*kw / g)).

Also here: log-domain (sign * 2^round(log2|x|)) codes, fractional fixed point Qm.n, k-means
codebooks, and the FP16/BF16/FP8 (E4M3, E5M2) casts.
"""
from __future__ import annotations

import numbers
from typing import Literal

import pydantic
import torch

from ...core.config import _explain
from ...core.errors import ConfigError

#: smallest scale; float32 machine epsilon, torchao's default observer eps
SCALE_FLOOR = torch.finfo(torch.float32).eps
MIN_BITS, MAX_BITS = 2, 16

FLOAT_FORMATS: dict[str, torch.dtype] = {
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp8_e4m3": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}


def check_bits(v) -> int:
    """``v`` as an integer width in 2..16, or ValueError (a ConfigError) naming the fix."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise ConfigError(f"bits must be a whole number of bits ({MIN_BITS}..{MAX_BITS}), not {type(v).__name__}; e.g. bits=4")
    v = int(v)
    if v < MIN_BITS:
        raise ConfigError(
            f"bits={v} is not a uniform integer grid: binary (1-bit) is its own technique (quantize.binary); use bits >= {MIN_BITS}")
    if v > MAX_BITS:
        raise ConfigError(f"bits={v} is wider than {MAX_BITS}: keep the tensor in float (fp32, or fp16/bf16 via quantize.float)")
    return v


class QScheme(pydantic.BaseModel):
    """How a tensor is mapped to integers. Frozen; invalid settings raise ConfigError."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid", validate_default=True)

    bits: int = pydantic.Field(8, description="integer width, 2..16")
    mode: Literal["symmetric", "affine"] = pydantic.Field("symmetric", description="zero point 0, or an integer zero point")
    signed: bool = pydantic.Field(True, description="signed integer codes, or unsigned")
    granularity: Literal["tensor", "channel", "group", "subchannel"] = pydantic.Field(
        "tensor", description="one scale per tensor, per channel, per group along an axis, or per block of a channel")
    axis: int | None = pydantic.Field(
        None, description="channel axis (channel/subchannel, default 0) or the axis groups run along (group, default -1)")
    group_size: int | None = pydantic.Field(None, ge=1, description="elements per group/block (group and subchannel only)")
    rounding: Literal["nearest", "stochastic"] = pydantic.Field("nearest", description="round half to even, or stochastic (unbiased)")
    scale_restriction: Literal["none", "pow2"] = pydantic.Field("none", description="any float scale, or powers of two (shifts)")

    def __init__(self, **data) -> None:
        try:
            super().__init__(**data)
        except pydantic.ValidationError as exc:
            raise ConfigError(_explain(type(self), exc)) from None

    @pydantic.field_validator("bits", mode="before")
    @classmethod
    def _int_bits(cls, v):
        return check_bits(v)

    @pydantic.model_validator(mode="after")
    def _consistent(self):
        grouped = self.granularity in ("group", "subchannel")
        if grouped and self.group_size is None:
            raise ValueError(f"granularity={self.granularity!r} needs group_size (e.g. group_size=32)")
        if not grouped and self.group_size is not None:
            raise ValueError(f"group_size only applies to granularity 'group' or 'subchannel', not {self.granularity!r}; drop it")
        if self.axis is not None and self.granularity == "tensor":
            raise ValueError("axis does not apply to granularity 'tensor'; drop it or use granularity='channel'")
        return self

    # -- integer range ---------------------------------------------------------------------
    @property
    def qmin(self) -> int:
        if not self.signed:
            return 0
        half = 2 ** (self.bits - 1)
        return -(half - 1) if self.mode == "symmetric" else -half

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2 ** self.bits - 1

    @property
    def int_dtype(self) -> torch.dtype:
        return int_dtype(self.bits, self.signed)

    @property
    def resolved_axis(self) -> int:
        if self.axis is not None:
            return self.axis
        return -1 if self.granularity == "group" else 0


def int_dtype(bits: int, signed: bool) -> torch.dtype:
    """Smallest torch integer dtype holding ``bits``-bit codes."""
    if bits <= 8:
        return torch.int8 if signed else torch.uint8
    return torch.int16 if signed and bits <= 16 else torch.int32


# -- granularity: reduce to parameters, expand back ---------------------------------------------
def _check_shape(x: torch.Tensor, s: QScheme) -> int:
    if s.granularity == "tensor":
        return 0
    if x.dim() == 0:
        raise ConfigError(f"granularity {s.granularity!r} needs a tensor with dimensions, got a scalar; use granularity='tensor'")
    axis = s.resolved_axis
    if not -x.dim() <= axis < x.dim():
        raise ConfigError(f"axis={axis} is out of range for a tensor of shape {list(x.shape)}; use an axis in [{-x.dim()}, {x.dim() - 1}]")
    axis %= x.dim()
    g = s.group_size
    if s.granularity == "group" and x.shape[axis] % g:
        raise ConfigError(
            f"group_size={g} does not divide dimension {axis} (size {x.shape[axis]}) of a tensor of shape {list(x.shape)}; "
            f"use a divisor of {x.shape[axis]} (groups never straddle rows)")
    if s.granularity == "subchannel":
        per_channel = x.numel() // max(x.shape[axis], 1)
        if per_channel % g:
            raise ConfigError(
                f"group_size={g} does not divide the {per_channel} elements of each channel (shape {list(x.shape)}, axis {axis}); "
                f"use a divisor of {per_channel}")
    return axis


def _reduce(x: torch.Tensor, s: QScheme, op) -> torch.Tensor:
    """``op`` (amin/amax) over each quantization group: a tensor of the parameter shape."""
    axis = _check_shape(x, s)
    if s.granularity == "tensor":
        return op(x)
    if s.granularity == "channel":
        return op(x.movedim(axis, 0).reshape(x.shape[axis], -1), 1)
    g = s.group_size
    if s.granularity == "group":
        moved = x.movedim(axis, -1)
        return op(moved.reshape(*moved.shape[:-1], -1, g), -1).movedim(-1, axis)
    return op(x.movedim(axis, 0).reshape(x.shape[axis], -1, g), -1)  # subchannel


def expand(p: torch.Tensor, x: torch.Tensor, s: QScheme) -> torch.Tensor:
    """Broadcast a parameter tensor (scale, zero point, ...) to ``x``'s shape."""
    if s.granularity == "tensor":
        return p
    axis = _check_shape(x, s)
    if s.granularity == "channel":
        return p.reshape([-1 if d == axis else 1 for d in range(x.dim())])
    g = s.group_size
    if s.granularity == "group":
        return p.repeat_interleave(g, dim=axis)
    moved_shape = x.movedim(axis, 0).shape  # subchannel
    return p.repeat_interleave(g, dim=1).reshape(moved_shape).movedim(0, axis)


# -- uniform quantization ------------------------------------------------------------------------
def _pow2_up(scale: torch.Tensor) -> torch.Tensor:
    return torch.exp2(torch.ceil(torch.log2(scale)))


def qparams_from_range(lo: torch.Tensor | float, hi: torch.Tensor | float, scheme: QScheme,
                       eps: float = SCALE_FLOOR) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale float32, zero point int64) of the range [lo, hi] (tensors of the parameter shape)."""
    lo = torch.as_tensor(lo, dtype=torch.float32)
    hi = torch.as_tensor(hi, dtype=torch.float32)
    if scheme.mode == "symmetric":
        amax = torch.maximum(lo.abs(), hi.abs()) if scheme.signed else hi.clamp_min(0.0)
        scale = amax / scheme.qmax
    else:
        lo, hi = lo.clamp_max(0.0), hi.clamp_min(0.0)  # 0.0 must be inside the range
        scale = (hi - lo) / (scheme.qmax - scheme.qmin)
    scale = scale.clamp_min(eps)
    if scheme.scale_restriction == "pow2":
        scale = _pow2_up(scale)
    if scheme.mode == "symmetric":
        zp = torch.zeros_like(scale, dtype=torch.int64)
    else:
        zp = (scheme.qmin - torch.round(lo / scale)).clamp(scheme.qmin, scheme.qmax).to(torch.int64)
    return scale, zp


def qparams(x: torch.Tensor, scheme: QScheme, eps: float = SCALE_FLOOR) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero point) from the min/max of ``x`` per quantization group."""
    x = x.detach().float()
    return qparams_from_range(_reduce(x, scheme, torch.amin), _reduce(x, scheme, torch.amax), scheme, eps)


def _round(v: torch.Tensor, scheme: QScheme, generator: torch.Generator | None) -> torch.Tensor:
    if scheme.rounding == "nearest":
        return torch.round(v)
    # floor(v + u), u ~ U[0, 1): rounds up with probability frac(v), so E[result] = v
    u = torch.rand(v.shape, generator=generator, dtype=v.dtype, device=v.device)
    return torch.floor(v + u)


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, scheme: QScheme,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Integer codes ``clamp(round(x / s) + z, qmin, qmax)`` in ``scheme.int_dtype``."""
    v = _round(x.float() / expand(scale, x, scheme), scheme, generator) + expand(zero_point, x, scheme)
    return v.clamp(scheme.qmin, scheme.qmax).to(scheme.int_dtype)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, scheme: QScheme) -> torch.Tensor:
    """``s * (q - z)`` in float32."""
    return expand(scale, q, scheme) * (q.to(torch.int64) - expand(zero_point, q, scheme)).float()


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, scheme: QScheme,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """quantize -> dequantize in float, differentiable by the straight-through estimator.

    The forward value is the dequantized one; the gradient w.r.t. ``x`` is 1 where the rounded
    code lies inside [qmin, qmax] and 0 where it was clamped (as torch.fake_quantize_* do).
    """
    s, z = expand(scale, x, scheme), expand(zero_point, x, scheme)
    code = _round(x.detach().float() / s, scheme, generator) + z
    inside = ((code >= scheme.qmin) & (code <= scheme.qmax)).to(x.dtype)
    value = (s * (code.clamp(scheme.qmin, scheme.qmax) - z)).to(x.dtype)
    return value + (x - x.detach()) * inside


# -- log-domain (power-of-two) weights --------------------------------------------------------
def log2_quantize(x: torch.Tensor, scheme: QScheme) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-domain codes: x ~ sign * 2^round(log2|x|), with the exponent range per group.

    With b bits there are L = 2^(b-1) - 1 magnitudes per group: ``top = 2^round(log2 max|x|)``
    (per group, as a float32 tensor of the parameter shape) and ``top * 2^-(k-1)`` for k = 1..L.
    The code is ``sign(x) * k`` (signed, |code| <= L); code 0 is 0.0 and is given to values below
    half the smallest magnitude on the log scale. Returns (codes in ``scheme.int_dtype``, top).
    Only ``mode='symmetric'``, ``signed=True`` schemes make sense (the sign is a code bit).
    """
    if scheme.mode != "symmetric" or not scheme.signed:
        raise ConfigError("log2 quantization stores sign * exponent: use a signed symmetric scheme (mode='symmetric', signed=True)")
    x = x.detach().float()
    levels = 2 ** (scheme.bits - 1) - 1
    amax = _reduce(x.abs(), scheme, torch.amax).clamp_min(SCALE_FLOOR)
    e_top = torch.round(torch.log2(amax))
    top = torch.exp2(e_top)
    e = torch.round(torch.log2(x.abs().clamp_min(torch.finfo(torch.float32).tiny)))
    k = (expand(e_top, x, scheme) - e + 1).clamp_min(1)  # 1 = the top magnitude
    k = torch.where(k > levels, torch.zeros_like(k), k)  # below the smallest magnitude -> 0
    return (torch.sign(x) * k).to(scheme.int_dtype), top


def log2_dequantize(codes: torch.Tensor, top: torch.Tensor, scheme: QScheme) -> torch.Tensor:
    k = codes.to(torch.int64)
    mag = expand(top, codes, scheme) * torch.exp2(-(k.abs() - 1).float())
    return torch.where(k == 0, torch.zeros_like(mag), torch.sign(k).float() * mag)


# -- fixed point ---------------------------------------------------------------------------------
def to_fixed_point(x: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """Signed Qm.n fixed point (1 sign bit, m integer bits, n fractional bits), as float32.

    Values are rounded to multiples of 2^-n and saturate at [-2^m, 2^m - 2^-n].
    """
    for name, v in (("m", m), ("n", n)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
            raise ConfigError(f"Qm.n needs whole numbers m, n >= 0; got {name}={v!r}")
    if m + n + 1 > 32:
        raise ConfigError(f"Q{m}.{n} needs {m + n + 1} bits; use m + n + 1 <= 32")
    step = 2.0 ** -n
    q = torch.round(x.double() / step).clamp(-(2 ** (m + n)), 2 ** (m + n) - 1)
    return (q * step).float()


# -- codebooks (non-uniform) ------------------------------------------------------------------
def kmeans_codebook(x: torch.Tensor, bits: int, iters: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-uniform quantization: 2^bits levels by 1-D k-means (Lloyd), deterministic.

    Levels start at evenly spaced quantiles of the values; each step assigns every value to its
    nearest level (searchsorted on the midpoints of the sorted levels) and moves each level to
    the mean of its values (an empty level stays put). Returns (codes uint8/int16 indices into the
    codebook, codebook float32 sorted ascending, length 2^bits).
    """
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or not 1 <= bits <= MAX_BITS:
        raise ConfigError(f"codebook bits must be a whole number in 1..{MAX_BITS}, got {bits!r}")
    flat = x.detach().reshape(-1).double()
    k = 2 ** bits
    if flat.numel() == 0:
        raise ConfigError("kmeans_codebook got an empty tensor: nothing to quantize")
    levels = torch.quantile(flat, torch.linspace(0, 1, k, dtype=torch.float64)) if flat.numel() <= 2 ** 24 else \
        torch.linspace(float(flat.min()), float(flat.max()), k, dtype=torch.float64)
    for _ in range(iters):
        idx = torch.searchsorted((levels[1:] + levels[:-1]) / 2, flat)
        counts = torch.bincount(idx, minlength=k).double()
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, idx, flat)
        new = torch.where(counts > 0, sums / counts.clamp_min(1), levels)
        new, _ = torch.sort(new)
        if torch.equal(new, levels):
            break
        levels = new
    idx = torch.searchsorted((levels[1:] + levels[:-1]) / 2, flat)
    return idx.reshape(x.shape).to(int_dtype(bits, signed=False) if bits <= 8 else torch.int32), levels.float()


def codebook_dequantize(codes: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    return codebook[codes.long()]


# -- floating-point formats ----------------------------------------------------------------------
def float_dtype(fmt: str) -> torch.dtype:
    if fmt not in FLOAT_FORMATS:
        raise ConfigError(f"unknown float format {fmt!r}; use one of {', '.join(FLOAT_FORMATS)}")
    return FLOAT_FORMATS[fmt]


def to_float_format(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """``x`` cast to ``fmt`` (fp16, bf16, fp8_e4m3, fp8_e5m2), saturating at the format's max.

    Torch's own casts disagree on overflow (float32 -> fp16/e5m2 gives inf; -> e4m3fn, which has
    no inf, saturates in torch 2.13 but NaN in other libraries), so finite values are clamped to
    [-max, max] first: overflow always saturates. NaN stays NaN (callers refuse NaN weights).
    Round to nearest even; values below the smallest subnormal flush to zero.
    """
    dtype = float_dtype(fmt)
    fmax = torch.finfo(dtype).max
    return x.detach().float().clamp(-fmax, fmax).to(dtype)


def round_to_float_format(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """The float32 value ``x`` would have after storing it in ``fmt`` (simulation)."""
    return to_float_format(x, fmt).to(x.dtype if x.is_floating_point() else torch.float32)

