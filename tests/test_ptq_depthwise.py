"""Krishnamoorthi (2018)'s lesson on depthwise networks: per-tensor INT8 weights fit depthwise
convs badly (after BN folding their channel ranges differ widely), per-channel scales fix it, and
cross-layer equalization recovers much of the per-tensor loss.

Measured on the zoo's trained MobileNetV2 on MNIST (test split, 1,000 images; 2 threads; numbers
from this machine, deterministic calibration order):
  float 96.0 %; per-channel 96.0 % (drop 0.0 pt); per-tensor 96.0 % (drop 0.0 pt) (bench/quant_ptq.py (b)).
Per-tensor INT8 does NOT collapse on this small, well-conditioned model, so the test asserts the
measured gaps instead: depthwise weight SQNR per-tensor 41.1 dB (worst layer 37.7) vs per-channel
47.7 dB; after CLE per-tensor 44.8 dB (worst 43.9), i.e. 56 % of the gap closed; logit SQNR of the
simulated INT8 model on 400 validation images (2 calibration batches): per-channel 34.6 dB, per-tensor
31.5 dB, per-tensor + CLE + bias correction 33.1 dB (half the gap closed; with 8 calibration batches
34.6 / 31.9 / 33.7). Thresholds sit well inside these numbers.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from effdl.compress.quantize.bn_fold import fold_batchnorm
from effdl.compress.quantize.equalize import equalize, weight_sqnr_db
from effdl.compress.quantize.ptq import PTQConfig
from effdl.core.registry import apply
from effdl.core.tasks import ImageClassification
from effdl.data import load_data
from effdl.deploy.parity import sqnr_db
from effdl.zoo import trained


@pytest.fixture(scope="module")
def task():
    d = load_data("mnist")
    model = trained("mobilenetv2", "mnist").eval()
    return ImageClassification(model, d.train, d.val, d.test, num_classes=d.num_classes)


def _mean(xs):
    return sum(xs) / len(xs)


def test_per_tensor_weight_error_on_depthwise_convs_and_cle(task):
    folded = fold_batchnorm(task.model)
    eq = equalize(folded)
    dw = [n for n, m in folded.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(dw) == 8  # one per inverted-residual block
    pt = [weight_sqnr_db(folded.get_submodule(n).weight, "tensor") for n in dw]
    pc = [weight_sqnr_db(folded.get_submodule(n).weight, "channel") for n in dw]
    cle = [weight_sqnr_db(eq.get_submodule(n).weight, "tensor") for n in dw]
    gap = _mean(pc) - _mean(pt)
    assert gap >= 5.0, (_mean(pc), _mean(pt))  # measured 6.6 dB
    assert _mean(cle) - _mean(pt) >= 0.4 * gap, (_mean(cle), _mean(pt))  # measured 56 % of the gap
    # worst layer: 37.7 -> 43.9 dB where this test was written, 39.5 -> 42.5 dB for the baseline trained on
    # another Xeon of this kind (training is not bit-reproducible across ISAs): CLE lifts it by >= 2 dB
    assert min(cle) - min(pt) >= 2.0, (min(cle), min(pt))


def test_per_channel_keeps_accuracy_and_per_tensor_loses_fidelity(task):
    batches = list(task.batches("val", 200))
    x, y = torch.cat([xb for xb, _ in batches]), torch.cat([yb for _, yb in batches])
    quantized = {name: apply(task, PTQConfig(weight_granularity=g, fold_bn=True, equalize=cle, bias_correction=cle,
                                             num_batches=2))
                 for name, g, cle in (("channel", "channel", False), ("tensor", "tensor", False),
                                      ("tensor+cle", "tensor", True))}
    with torch.no_grad():
        ref = task.model(x)
        outs = {name: q(x) for name, q in quantized.items()}
    snr = {name: sqnr_db(ref, out) for name, out in outs.items()}
    assert snr["channel"] - snr["tensor"] >= 1.5, snr  # measured 34.6 vs 31.5 dB
    assert snr["tensor+cle"] - snr["tensor"] >= 0.3 * (snr["channel"] - snr["tensor"]), snr  # measured half
    acc = {name: float((out.argmax(1) == y).float().mean()) for name, out in {"float": ref, **outs}.items()}
    assert acc["float"] > 0.9
    assert acc["channel"] >= acc["float"] - 0.01, acc  # per-channel: <= 1 point (400 validation images)
