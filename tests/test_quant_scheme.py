import math

import pytest
import torch

from effdl.compress.quantize.scheme import (
    SCALE_FLOOR,
    QScheme,
    codebook_dequantize,
    dequantize,
    fake_quantize,
    kmeans_codebook,
    log2_dequantize,
    log2_quantize,
    qparams,
    qparams_from_range,
    quantize,
    round_to_float_format,
    to_fixed_point,
    to_float_format,
)
from effdl.core.errors import ConfigError

U8_AFFINE = QScheme(bits=8, mode="affine", signed=False)


def test_affine_uint8_hand_computed():
    x = torch.tensor([-1.0, 0.0, 0.5, 2.0])
    scale, zp = qparams(x, U8_AFFINE)
    assert float(scale) == pytest.approx(3 / 255, rel=1e-7)  # (hi - lo) / (qmax - qmin)
    assert int(zp) == 85  # qmin - round(lo / s) = 0 - round(-85)
    q = quantize(x, scale, zp, U8_AFFINE)
    assert q.dtype == torch.uint8
    # 0.5 / s is the tie 42.5 in exact arithmetic; float32(3/255) is slightly above 3/255, so
    # 0.5 / s = 42.4999992 rounds to 42 -> 127
    assert q.tolist() == [0, 85, 127, 255]
    x_hat = dequantize(q, scale, zp, U8_AFFINE)
    assert x_hat.tolist()[1] == 0.0
    assert torch.allclose(x_hat, torch.tensor([-1.0, 0.0, 42 * 3 / 255, 2.0]), atol=1e-6)


def test_symmetric_int8_hand_computed():
    s = QScheme(bits=8)  # signed symmetric, restricted range [-127, 127]
    assert (s.qmin, s.qmax) == (-127, 127)
    x = torch.tensor([-2.0, 0.5, 1.27])
    scale, zp = qparams(x, s)
    assert float(scale) == pytest.approx(2 / 127, rel=1e-7) and int(zp) == 0
    assert quantize(x, scale, zp, s).tolist() == [-127, 32, 81]  # round(31.75), round(80.645)


def test_survey_formulas_quantize_dequantize():
    """x_q = round(x / s) + z, x_hat = s (x_q - z), |x - x_hat| <= s / 2 inside the range."""
    torch.manual_seed(0)
    x = torch.randn(1000)
    for scheme in (QScheme(bits=4, mode="affine", signed=True), QScheme(bits=6, mode="affine", signed=False), QScheme(bits=5)):
        scale, zp = qparams(x, scheme)
        q = quantize(x, scale, zp, scheme)
        assert torch.equal(q.long(), (torch.round(x / scale) + zp).clamp(scheme.qmin, scheme.qmax).long())
        assert torch.equal(dequantize(q, scale, zp, scheme), scale * (q.long() - zp).float())
        assert float((dequantize(q, scale, zp, scheme) - x).abs().max()) <= float(scale) / 2 * (1 + 1e-5)


@pytest.mark.parametrize("lo,hi", [(0.3, 0.9), (-5.0, -1.0), (-0.37, 2.9), (-1e-3, 7.0), (-3.3, 0.01)])
@pytest.mark.parametrize("signed", [True, False])
def test_zero_exactly_representable_under_affine(lo, hi, signed):
    scheme = QScheme(bits=8, mode="affine", signed=signed)
    scale, zp = qparams(torch.tensor([lo, hi]), scheme)
    assert scheme.qmin <= int(zp) <= scheme.qmax
    zero = torch.zeros(3)
    assert torch.equal(dequantize(quantize(zero, scale, zp, scheme), scale, zp, scheme), zero)


def test_constant_and_all_zero_tensors_do_not_divide_by_zero():
    for x in (torch.zeros(5), torch.full((5,), 0.0)):
        for scheme in (QScheme(bits=8), U8_AFFINE):
            scale, zp = qparams(x, scheme)
            assert float(scale) == pytest.approx(SCALE_FLOOR)
            out = dequantize(quantize(x, scale, zp, scheme), scale, zp, scheme)
            assert torch.equal(out, x)


def test_ste_gradient_one_inside_zero_outside():
    scheme = QScheme(bits=4)  # codes [-7, 7]
    scale, zp = torch.tensor(0.5), torch.tensor(0)
    x = torch.tensor([0.2, -3.4, 3.6, -3.9, 10.0], requires_grad=True)
    y = fake_quantize(x, scale, zp, scheme)
    assert y.detach().tolist() == [0.0, -3.5, 3.5, -3.5, 3.5]
    y.sum().backward()
    # codes: 0, -7 (inside), round(7.2)=7 (inside), round(-7.8)=-8 (clamped), 20 (clamped)
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_stochastic_rounding_is_unbiased_and_seeded():
    scheme = QScheme(bits=8, rounding="stochastic")
    scale, zp = torch.tensor(0.1), torch.tensor(0)
    x = torch.full((200_000,), 0.037)  # 0.37 of a step: rounds up with probability 0.37
    q = quantize(x, scale, zp, scheme, generator=torch.Generator().manual_seed(0))
    assert set(q.unique().tolist()) == {0, 1}
    mean = float(dequantize(q, scale, zp, scheme).mean())
    # std of the mean: 0.1 * sqrt(0.37 * 0.63 / 2e5) = 1.1e-4; tolerance 5 sigma
    assert mean == pytest.approx(0.037, abs=5.5e-4)
    again = quantize(x, scale, zp, scheme, generator=torch.Generator().manual_seed(0))
    assert torch.equal(q, again)


def test_pow2_scales_are_powers_of_two_and_never_clip():
    torch.manual_seed(1)
    w = torch.randn(6, 10) * torch.rand(6, 1) * 3
    free = QScheme(bits=4, granularity="channel")
    pow2 = QScheme(bits=4, granularity="channel", scale_restriction="pow2")
    s_free, _ = qparams(w, free)
    s_pow2, _ = qparams(w, pow2)
    exps = torch.log2(s_pow2)
    assert torch.equal(exps, torch.round(exps))
    assert bool((s_pow2 >= s_free).all()) and bool((s_pow2 < 2 * s_free).all())
    q = quantize(w, s_pow2, torch.zeros(6, dtype=torch.long), pow2)
    assert int(q.abs().max()) <= 7


def test_group_granularity_hand_computed():
    scheme = QScheme(bits=4, granularity="group", group_size=2)  # groups along the last axis
    w = torch.tensor([[1.2, -2.0, 0.5, 4.0], [0.7, 0.0, -0.1, 0.0]])
    scale, zp = qparams(w, scheme)
    assert scale.shape == (2, 2)
    expected = torch.tensor([[2 / 7, 4 / 7], [0.7 / 7, 0.1 / 7]])
    assert torch.allclose(scale, expected, rtol=1e-6)
    q = quantize(w, scale, zp, scheme)
    assert q.tolist() == [[4, -7, 1, 7], [7, 0, -7, 0]]  # round(1.2 * 3.5 = 4.2), round(0.5 * 1.75 = 0.875)


def test_channel_axis_and_subchannel_shapes():
    w = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4) - 11
    s1, _ = qparams(w, QScheme(bits=8, granularity="channel", axis=1))
    assert s1.shape == (3,)
    assert torch.allclose(s1, torch.tensor([11.0, 8.0, 12.0]) / 127)  # max |w| over w[:, c, :]
    s2, _ = qparams(w, QScheme(bits=8, granularity="subchannel", group_size=6))  # 12 per channel -> 2 blocks
    assert s2.shape == (2, 2)
    assert torch.allclose(s2, torch.tensor([[11.0, 5.0], [6.0, 12.0]]) / 127)
    for scheme in (QScheme(bits=8, granularity="channel", axis=1), QScheme(bits=8, granularity="subchannel", group_size=6)):
        sc, zp = qparams(w, scheme)
        err = (dequantize(quantize(w, sc, zp, scheme), sc, zp, scheme) - w).abs().max()
        assert float(err) <= 12 / 127 / 2 + 1e-6


def test_group_size_not_dividing_dimension():
    with pytest.raises(ConfigError, match="group_size=3 does not divide dimension 1"):
        qparams(torch.zeros(2, 8), QScheme(bits=4, granularity="group", group_size=3))
    with pytest.raises(ConfigError, match="does not divide the 8 elements of each channel"):
        qparams(torch.zeros(2, 8), QScheme(bits=4, granularity="subchannel", group_size=3))


@pytest.mark.parametrize("kw,phrase", [
    ({"bits": 0}, "binary \\(1-bit\\) is its own technique"),
    ({"bits": 1, "mode": "affine"}, "binary \\(1-bit\\) is its own technique"),
    ({"bits": 17}, "wider than 16"),
    ({"bits": 2.5}, "whole number of bits"),
    ({"bits": 4.0}, "whole number of bits"),
    ({"bits": True}, "whole number of bits"),
    ({"bits": 4, "granularity": "group"}, "needs group_size"),
    ({"bits": 4, "group_size": 8}, "group_size only applies"),
    ({"bits": 4, "axis": 1}, "axis does not apply"),
    ({"bits": 4, "rounding": "up"}, "rounding"),
    ({"bits": 4, "granularity": "group", "group_size": 0}, "group_size"),
])
def test_bad_schemes(kw, phrase):
    with pytest.raises(ConfigError, match=phrase):
        QScheme(**kw)


def test_axis_out_of_range():
    with pytest.raises(ConfigError, match="axis=3 is out of range"):
        qparams(torch.zeros(2, 2), QScheme(bits=8, granularity="channel", axis=3))


def test_qparams_from_range_symmetric_unsigned():
    scale, zp = qparams_from_range(-1.0, 2.55, QScheme(bits=8, signed=False))  # post-ReLU style: [0, 255]
    assert float(scale) == pytest.approx(0.01) and int(zp) == 0


def test_log2_quantization_hand_computed():
    scheme = QScheme(bits=3)  # 3 magnitudes: top, top/2, top/4
    x = torch.tensor([1.0, -0.5, 0.3, 0.26, 0.1, -0.7, 0.0])
    codes, top = log2_quantize(x, scheme)
    assert float(top) == 1.0
    # log2: 0, -1, -1.74 -> -2, -1.94 -> -2, -3.3 -> -3 (below 1/4: zero), -0.51 -> -1, zero
    assert codes.tolist() == [1, -2, 3, 3, 0, -2, 0]
    assert log2_dequantize(codes, top, scheme).tolist() == [1.0, -0.5, 0.25, 0.25, 0.0, -0.5, 0.0]
    with pytest.raises(ConfigError, match="signed symmetric"):
        log2_quantize(x, U8_AFFINE)


def test_fixed_point_rounding_and_saturation():
    # Q2.3: steps of 1/8, range [-4, 4 - 1/8]
    x = torch.tensor([1.3, 100.0, -100.0, 0.0625, -4.0, 3.9])
    assert to_fixed_point(x, 2, 3).tolist() == [1.25, 3.875, -4.0, 0.0, -4.0, 3.875]  # 0.5 step ties to even (0)
    assert to_fixed_point(torch.tensor([0.7]), 0, 0).tolist() == [0.0]  # Q0.0: {-1, 0}, 0.7 -> round 1 -> saturates at 0
    with pytest.raises(ConfigError, match="m \\+ n \\+ 1 <= 32"):
        to_fixed_point(x, 20, 20)
    with pytest.raises(ConfigError, match="m, n >= 0"):
        to_fixed_point(x, -1, 3)


def test_codebook_finds_the_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([-3.0, -1.0, 1.0, 3.0])
    x = centres[torch.randint(0, 4, (4000,), generator=g)] + 0.01 * torch.randn(4000, generator=g)
    codes, book = kmeans_codebook(x, bits=2)
    assert book.shape == (4,) and codes.dtype == torch.uint8
    assert torch.allclose(book, centres, atol=0.01)
    assert float((codebook_dequantize(codes, book) - x).abs().max()) < 0.06  # noise is ~N(0, 0.01)


# FP formats: values exactly representable in each format survive the cast unchanged
@pytest.mark.parametrize("fmt,values", [
    ("fp8_e4m3", [448.0, -448.0, 2.0 ** -6, 2.0 ** -9, 1.125, 240.0, -0.875, 0.0]),
    ("fp8_e5m2", [57344.0, -57344.0, 2.0 ** -14, 2.0 ** -16, 1.25, 0.75, -3.0, 0.0]),
    ("fp16", [65504.0, 2.0 ** -24, 1.0009765625, -0.1000976562]),
    ("bf16", [3.3895313892515355e38, 1.0078125, -2.0 ** -126]),
])
def test_float_format_representable_values_round_trip(fmt, values):
    x = torch.tensor(values)
    assert torch.equal(round_to_float_format(x, fmt), x)


@pytest.mark.parametrize("fmt,fmax", [("fp8_e4m3", 448.0), ("fp8_e5m2", 57344.0), ("fp16", 65504.0)])
def test_float_format_overflow_saturates_instead_of_inf_or_nan(fmt, fmax):
    out = to_float_format(torch.tensor([1e6, -1e6, math.inf]), fmt).float()
    assert out.tolist() == [fmax, -fmax, fmax]


def test_float_format_rounds_to_nearest_even_and_rejects_unknown():
    # E4M3 has 3 mantissa bits: 1.0625 is halfway between 1.0 and 1.125 -> even (1.0); 1.07 -> 1.125
    assert round_to_float_format(torch.tensor([1.0625, 1.07]), "fp8_e4m3").tolist() == [1.0, 1.125]
    with pytest.raises(ConfigError, match="unknown float format 'fp4'"):
        to_float_format(torch.zeros(1), "fp4")
