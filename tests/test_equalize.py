"""Cross-layer equalization: the paper's scale by hand, exactness in FP32 (ReLU, ReLU6 via
ChannelClamp, pooling, grouped/depthwise convs), which pairs qualify, and bias correction."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from effdl.compress.quantize.bias_correction import correct_bias
from effdl.compress.quantize.bn_fold import fold_batchnorm
from effdl.compress.quantize.equalize import (ChannelClamp, equalizable_pairs, equalize, input_ranges,
                                              output_ranges)
from effdl.compress.quantize.ptq import quantize_weight
from effdl.zoo import build
from test_bn_fold import randomise_bn


def test_two_linear_layers_scale_by_hand():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[4.0, -1.0], [0.5, 0.25]]))
        model[0].bias.copy_(torch.tensor([2.0, -1.0]))
        model[2].weight.copy_(torch.tensor([[1.0, 8.0]]))
    eq = equalize(model)
    # r1 = (4, 0.5), r2 = (1, 8): s = sqrt(r1 / r2) = (2, 0.25); both ranges become sqrt(r1 r2) = (2, 2)
    torch.testing.assert_close(eq[0].weight, torch.tensor([[2.0, -0.5], [2.0, 1.0]]))
    torch.testing.assert_close(eq[0].bias, torch.tensor([1.0, -4.0]))
    torch.testing.assert_close(eq[2].weight, torch.tensor([[2.0, 2.0]]))
    x = torch.randn(16, 2)
    with torch.no_grad():
        torch.testing.assert_close(eq(x), model(x))


def test_grouped_and_depthwise_pairs_are_exact_and_equalized():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Conv2d(8, 6, 1, groups=2)).eval()
    with torch.no_grad():  # spread channel ranges over 3 orders of magnitude
        model[0].weight.mul_(torch.logspace(-1.5, 1.5, 8).reshape(8, 1, 1, 1))
    eq = equalize(model)
    assert [p[:2] for p in equalizable_pairs(model)] == [("0", "2"), ("2", "5")]
    x = torch.randn(5, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(eq(x), model(x))
    # at convergence layer 1's output range equals layer 2's input range, channel by channel
    torch.testing.assert_close(output_ranges(eq[0]), input_ranges(eq[2]), rtol=1e-3, atol=0)
    torch.testing.assert_close(output_ranges(eq[2]), input_ranges(eq[5]), rtol=1e-3, atol=0)
    spread = lambda r: float(r.max() / r.min())
    assert spread(output_ranges(eq[0])) < spread(output_ranges(model[0])) / 10


def test_relu6_becomes_a_per_channel_clamp_and_stays_exact():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 1), nn.ReLU6(), nn.Conv2d(4, 3, 1)).eval()
    with torch.no_grad():
        model[0].weight.mul_(10)  # pre-activations well past 6, so the ceiling matters
    eq = equalize(model)
    assert isinstance(eq[1], ChannelClamp) and isinstance(model[1], nn.ReLU6)
    s = output_ranges(model[0]) / output_ranges(eq[0])
    torch.testing.assert_close(eq[1].upper, 6.0 / s)
    x = torch.randn(8, 2, 5, 5)
    with torch.no_grad():
        assert bool((model[0](x) > 6).any())
        torch.testing.assert_close(eq(x), model(x))


def test_folded_zoo_mobilenetv2_is_exact_after_equalization():
    torch.manual_seed(0)
    model = fold_batchnorm(randomise_bn(build("mobilenetv2", input_shape=(1, 28, 28), num_classes=10)))
    eq = equalize(model)
    pairs = equalizable_pairs(model)
    # per inverted block: expand -> depthwise and depthwise -> project (ReLU6 between), plus stem -> first dw
    assert len(pairs) >= 15 and any(model.get_submodule(b).groups > 1 for _, b, _ in pairs)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(eq(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("between", [nn.Sigmoid(), nn.BatchNorm2d(4), nn.Hardtanh(-1.0, 1.0)])
def test_non_homogeneous_ops_block_the_pair(between):
    model = nn.Sequential(nn.Conv2d(2, 4, 1), between, nn.Conv2d(4, 3, 1)).eval()
    assert equalizable_pairs(model) == []


def _dequantize(w):
    q, scale = quantize_weight(w, "tensor")
    return q.float() * scale.reshape((-1,) + (1,) * (w.dim() - 1))


def test_bias_correction_removes_the_mean_output_shift():
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(16, 8))
    with torch.no_grad():
        layer[0].weight.copy_(torch.randn(8, 16) * torch.logspace(-2, 0, 16))  # coarse per-tensor grid
    calib = [torch.rand(64, 16) + 0.5 for _ in range(4)]  # positive mean inputs, like ReLU outputs
    w = layer[0].weight.detach().clone()
    b = layer[0].bias.detach().clone()
    shifts = correct_bias(layer, ["0"], calib, _dequantize)
    # by hand: shift = (W_q - W) E[x]
    expected = (_dequantize(w) - w) @ torch.cat(calib).mean(0)
    torch.testing.assert_close(shifts["0"], expected, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(layer[0].bias, b - expected)
    # on fresh data the quantized layer's mean output error shrinks to a small fraction
    x = torch.rand(512, 16) + 0.5
    with torch.no_grad():
        before = ((x @ _dequantize(w).t() + b) - (x @ w.t() + b)).mean(0).abs().max()
        after = ((x @ _dequantize(w).t() + layer[0].bias) - (x @ w.t() + b)).mean(0).abs().max()
    assert float(after) < 0.1 * float(before), (float(before), float(after))
    assert math.isfinite(float(after))


def test_bias_correction_gives_a_bias_to_a_conv_without_one():
    conv = nn.Sequential(nn.Conv2d(2, 3, 3, bias=False))
    correct_bias(conv, ["0"], [torch.rand(4, 2, 6, 6)], _dequantize)
    assert conv[0].bias is not None and conv[0].bias.shape == (3,)
