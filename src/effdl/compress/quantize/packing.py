"""Dense bit-packing of low-bit integer codes into uint8, so stored size is bits/8 bytes per value.

Layout: code i occupies bits [i*b, (i+1)*b) of one little-endian bit stream (least significant
bit first, numpy ``packbits(bitorder="little")``); codes may straddle bytes (3, 5, 6, 7 bits).
Signed codes are stored with an offset of 2^(b-1) (so -2^(b-1) -> 0), unsigned codes as is. The
last byte is zero-padded; a stream of n codes takes ``packed_nbytes(n, b) = ceil(n * b / 8)`` bytes.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from ...core.errors import ConfigError, DataError
from .scheme import MAX_BITS, int_dtype


def _check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or not 1 <= bits <= MAX_BITS:
        raise ConfigError(f"packing needs a whole number of bits in 1..{MAX_BITS}, got {bits!r}")
    return int(bits)


def packed_nbytes(n: int, bits: int) -> int:
    """Bytes taken by ``n`` packed ``bits``-bit codes."""
    return math.ceil(n * _check_bits(bits) / 8)


def _range(bits: int, signed: bool) -> tuple[int, int]:
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)


def pack(q: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    """Pack integer codes (any shape, flattened row-major) into a 1-D uint8 tensor."""
    bits = _check_bits(bits)
    if q.is_floating_point() or q.is_complex() or q.dtype == torch.bool:
        raise DataError(f"pack needs an integer tensor of codes, got {q.dtype}; quantize first")
    lo, hi = _range(bits, signed)
    v = q.detach().reshape(-1).to(torch.int64)
    if v.numel() and (int(v.min()) < lo or int(v.max()) > hi):
        raise DataError(
            f"codes span [{int(v.min())}, {int(v.max())}], outside the {'signed' if signed else 'unsigned'} "
            f"{bits}-bit range [{lo}, {hi}]: clamp them or pack with more bits")
    u = (v - lo).numpy().astype(np.uint32)
    if bits == 8:  # byte-aligned: no bit shuffling needed
        return torch.from_numpy(u.astype(np.uint8))
    planes = ((u[:, None] >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8)
    return torch.from_numpy(np.packbits(planes.reshape(-1), bitorder="little"))


def unpack(packed: torch.Tensor, bits: int, n: int, signed: bool) -> torch.Tensor:
    """Exact inverse of :func:`pack`: ``n`` codes in the smallest integer dtype holding them."""
    bits = _check_bits(bits)
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise DataError(f"unpack needs the 1-D uint8 tensor pack() returns, got {packed.dtype}{list(packed.shape)}")
    if packed.numel() != packed_nbytes(n, bits):
        raise DataError(
            f"{packed.numel()} packed bytes cannot hold exactly {n} codes of {bits} bits "
            f"({packed_nbytes(n, bits)} expected): the tensor is truncated or the shape is wrong")
    lo, _ = _range(bits, signed)
    raw = packed.numpy()
    if bits == 8:
        u = raw.astype(np.int64)
    else:
        planes = np.unpackbits(raw, count=n * bits, bitorder="little").reshape(n, bits).astype(np.int64)
        u = planes @ (np.int64(1) << np.arange(bits, dtype=np.int64))
    return torch.from_numpy(u + lo).to(int_dtype(bits, signed))
