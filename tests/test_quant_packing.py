import math

import pytest
import torch

from effdl.compress.quantize.packing import pack, packed_nbytes, unpack
from effdl.core.errors import ConfigError, DataError


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("n", [1, 7, 13, 1000])
def test_round_trip_every_width_odd_lengths_extremes(bits, signed, n):
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    g = torch.Generator().manual_seed(bits * 100 + n)
    q = torch.randint(lo, hi + 1, (n,), generator=g)
    q[0] = lo
    q[-1] = hi  # both extremes of the range present (n=1: only hi)
    packed = pack(q, bits, signed)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(n * bits / 8) == packed_nbytes(n, bits)
    out = unpack(packed, bits, n, signed)
    assert out.dtype == (torch.int8 if signed else torch.uint8)
    assert torch.equal(out.long(), q)


def test_hand_computed_bytes():
    # little-endian bit stream: code i in bits [4i, 4i + 4)
    assert pack(torch.tensor([1, 2, 15]), 4, signed=False).tolist() == [0x21, 0x0F]
    # signed 2-bit stored with offset 2: [-2, -1, 0, 1] -> [0, 1, 2, 3] -> 0 | 1<<2 | 2<<4 | 3<<6
    assert pack(torch.tensor([-2, -1, 0, 1]), 2, signed=True).tolist() == [228]
    # 3-bit codes straddle bytes: 7, 0, 5 -> bits 0-2 = 111, 3-5 = 000, 6-8 = 101 -> 0b01000111, 0b1
    assert pack(torch.tensor([7, 0, 5]), 3, signed=False).tolist() == [0b01000111, 0b1]


def test_multidimensional_input_is_flattened_row_major():
    q = torch.tensor([[1, -3], [2, 0]])
    assert unpack(pack(q, 3, True), 3, 4, True).tolist() == [1, -3, 2, 0]


def test_wider_codes_round_trip():
    q = torch.tensor([-32768, 32767, 0, -1])
    assert torch.equal(unpack(pack(q, 16, True), 16, 4, True).long(), q)


def test_bad_inputs():
    with pytest.raises(DataError, match="outside the signed 4-bit range \\[-8, 7\\]"):
        pack(torch.tensor([8]), 4, signed=True)
    with pytest.raises(DataError, match="outside the unsigned 2-bit range"):
        pack(torch.tensor([-1]), 2, signed=False)
    with pytest.raises(DataError, match="integer tensor of codes"):
        pack(torch.tensor([0.5]), 4, signed=True)
    with pytest.raises(ConfigError, match="whole number of bits"):
        pack(torch.tensor([0]), 0, signed=True)
    with pytest.raises(ConfigError, match="whole number of bits"):
        packed_nbytes(3, 2.5)
    with pytest.raises(DataError, match="cannot hold exactly 5 codes"):
        unpack(torch.zeros(2, dtype=torch.uint8), 4, 5, signed=False)
    with pytest.raises(DataError, match="1-D uint8"):
        unpack(torch.zeros(2, dtype=torch.int8), 4, 4, signed=False)
