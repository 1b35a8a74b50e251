"""quantize.qat: fake quantization + STE, LSQ scales, observers/BN freezing, conversion, records."""
import math

import pytest
import torch
import torch.nn as nn

import effdl
from effdl.compress.quantize.calibration import MovingAverageMinMax
from effdl.compress.quantize.packing import unpack
from effdl.compress.quantize.ptq import QuantizedModel
from effdl.compress.quantize.qat import ActFakeQuant, QATConfig, WeightFakeQuant
from effdl.compress.quantize.scheme import qparams
from effdl.compress.quantize.weight_only import (
    WeightOnlyConfig,
    WeightOnlyModel,
    dequantize_weight,
    load_weight_only,
    quantize_weight,
)
from effdl.core.errors import ConfigError
from effdl.core.records import records
from effdl.core.tasks import ImageClassification
from effdl.deploy.runtimes import lower

LINEARS = ("1", "3", "5")
W = torch.tensor([[0.1, -0.2, 0.4]])
INT4 = WeightOnlyConfig(bits=4, granularity="channel")


def _acc(task, model):
    return task.evaluate(model, "test")["accuracy"]


# -- the fake quantizer, by hand -------------------------------------------------------------
def test_weight_fake_quant_values_and_ste_gradient():
    # 4-bit symmetric per channel: s = 0.4 / 7; w/s = [1.75, -3.5, 7] -> codes [2, -4 (half to even), 7]
    w = W.clone().requires_grad_(True)
    out = WeightFakeQuant(W, INT4, learnable=False, init="ptq")(w)
    s = 0.4 / 7
    assert out.detach().tolist()[0] == pytest.approx([2 * s, -4 * s, 7 * s], abs=1e-7)
    out.sum().backward()
    assert w.grad.tolist() == [[1.0, 1.0, 1.0]]  # straight through: nothing is clamped


def test_lsq_scale_gradient_hand_computed():
    fq = WeightFakeQuant(W, INT4, learnable=True, init="ptq")
    assert float(fq.scale.detach()) == pytest.approx(0.4 / 7)  # warm start: the min-max (PTQ) scale
    g = 1 / math.sqrt(3 * 7)  # LSQ gradient scale 1/sqrt(numel * qmax)
    w = W.clone().requires_grad_(True)
    fq(w).sum().backward()
    # d/ds = sum(q - w/s) inside the range = (2 - 1.75) + (-4 + 3.5) + (7 - 7) = -0.25
    assert float(fq.scale.grad) == pytest.approx(-0.25 * g, rel=1e-5)
    # a scale too small to hold 0.4 clamps it: d/ds there = qmax = 7, and w gets no gradient
    fq.scale.grad = None
    with torch.no_grad():
        fq.scale.fill_(0.05)  # w/s = [2, -4, 8]: codes exact for the first two, 8 clamped to 7
    w = W.clone().requires_grad_(True)
    fq(w).sum().backward()
    assert float(fq.scale.grad) == pytest.approx(7 * g, rel=1e-5)
    assert w.grad.tolist() == [[1.0, 1.0, 0.0]]


def test_lsq_float_init_is_two_mean_abs_over_sqrt_qmax():
    fq = WeightFakeQuant(W, INT4, learnable=True, init="float")
    assert float(fq.scale.detach()) == pytest.approx(2 * (0.7 / 3) / math.sqrt(7), rel=1e-6)


def test_frozen_activation_observer_stops_changing():
    a = ActFakeQuant("fc", momentum=0.5)
    layer = nn.Linear(2, 2).train()
    a(layer, (torch.tensor([[0.0, 1.0]]),))
    a(layer, (torch.tensor([[-1.0, 3.0]]),))
    assert a.observer.range() == pytest.approx((-0.5, 2.0))  # EMA: 0.5 * 0 + 0.5 * -1, 0.5 * 1 + 0.5 * 3
    a.frozen = True
    out = a(layer, (torch.tensor([[-9.0, 9.0]]),))[0]
    assert a.observer.range() == pytest.approx((-0.5, 2.0))
    assert out[0].tolist() == pytest.approx([-0.5, 2.0], abs=2.5 / 255)  # clamped to the frozen range


# -- the technique on real data --------------------------------------------------------------
def test_ste_training_moves_weights_and_records_mse(digits_task):
    q = effdl.apply(digits_task, QATConfig(bits=4, epochs=2, freeze_after=1.0))
    assert isinstance(q, WeightOnlyModel) and q.quantized_modules == LINEARS
    mse = records(q)["qat_mse"].mse
    assert set(mse) == set(LINEARS) and all(len(v) == 3 for v in mse.values())  # before + 2 epoch ends
    for name, m in digits_task.model.named_modules():
        if name in LINEARS:
            w0 = m.weight.detach()
            ptq_w = dequantize_weight(quantize_weight(w0, INT4), w0.shape, INT4)
            assert mse[name][0] == pytest.approx(float(((ptq_w - w0) ** 2).mean()), rel=1e-5)
            # the weights left the PTQ grid point they started from
            assert not torch.equal(q.model.get_submodule(name).weight, ptq_w)


def test_int2_qat_beats_ptq_and_int4_qat_keeps_float_accuracy(digits_task):
    """Measured (digits MLP 64-64-32-10, 359 test digits): INT2 per channel PTQ 86.9% -> QAT 95.0%;
    INT4 per channel: PTQ already equals FP32 (96.1%) here, so QAT at 4 bits can only be held to
    not losing: within 1 point of FP32. Margin for INT2: QAT >= PTQ + 3 points."""
    base = _acc(digits_task, digits_task.model)
    ptq2 = _acc(digits_task, effdl.apply(digits_task, WeightOnlyConfig(bits=2, granularity="channel")))
    qat2 = _acc(digits_task, effdl.apply(digits_task, QATConfig(bits=2, epochs=2)))
    assert qat2 >= ptq2 + 0.03, (ptq2, qat2)
    ptq4 = _acc(digits_task, effdl.apply(digits_task, WeightOnlyConfig(bits=4, granularity="channel")))
    qat4 = _acc(digits_task, effdl.apply(digits_task, QATConfig(bits=4, epochs=2)))
    assert qat4 >= base - 0.01 and qat4 >= ptq4 - 0.01, (base, ptq4, qat4)


def test_weight_only_result_is_the_trained_grid_and_reloads(digits_task, tmp_path):
    from effdl.deploy.storage import load_compact, model_tensors, save_compact

    cfg = QATConfig(bits=4, granularity="group", group_size=16, epochs=1, learnable_scale=True)
    q = effdl.apply(digits_task, cfg)
    for name in LINEARS:  # every weight is scale * integer code, on the learned scales
        w = q.model.get_submodule(name).weight.detach()
        scale = q.parts[name]["scale"].repeat_interleave(16, dim=1)
        codes = w / scale
        assert torch.allclose(codes, codes.round(), atol=1e-4) and float(codes.abs().max()) <= 7 + 1e-4
    assert q.parts["1"]["packed"].numel() == 64 * 64 * 4 // 8
    save_compact(model_tensors(q), tmp_path / "m.safetensors")
    fresh = effdl.zoo.build("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(64, 32))
    back = load_weight_only(fresh, load_compact(tmp_path / "m.safetensors"), cfg.weight_config())
    x = digits_task.example_input(16)
    assert torch.equal(back(x), q(x))


def test_frozen_weight_scales_are_the_starting_minmax(digits_task):
    q = effdl.apply(digits_task, QATConfig(bits=4, epochs=1, freeze_after=0.0))
    for name in LINEARS:
        w0 = digits_task.model.get_submodule(name).weight.detach()
        assert torch.equal(q.parts[name]["scale"], qparams(w0, INT4.scheme())[0])
    late = effdl.apply(digits_task, QATConfig(bits=4, epochs=1, freeze_after=1.0))  # never frozen: final min-max
    w1 = late.model.get_submodule("1").weight.detach()
    raw = unpack(late.parts["1"]["packed"], 4, w1.numel(), signed=True).reshape(w1.shape)
    assert int(raw.abs().amax(1).min()) == 7  # each channel's largest weight sits on +-qmax


def test_freeze_after_zero_keeps_calibrated_ranges_and_bn_statistics(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
    task = ImageClassification(model, digits.train, digits.val, digits.test, num_classes=10)
    task.train(model, epochs=2, lr=3e-3)
    cfg = QATConfig(bits=8, activations=True, epochs=1, freeze_after=0.0, num_batches=4, momentum=0.9)
    q = effdl.apply(task, cfg)
    assert isinstance(q, QuantizedModel)
    bn_before, bn_after = model[2], q.float_model[2]
    assert torch.equal(bn_before.running_mean, bn_after.running_mean)
    assert torch.equal(bn_before.running_var, bn_after.running_var)
    expected = MovingAverageMinMax(momentum=0.9)  # the first layer's input is the flattened image
    for x in task.calibration_batches(4):
        expected.observe(x)
    r = records(q)["act_ranges"].layers["1"]
    assert (r.clip_lo, r.clip_hi) == pytest.approx(expected.range())
    # not frozen: training moves BatchNorm statistics
    moved = effdl.apply(task, QATConfig(bits=4, epochs=1, freeze_after=1.0))
    assert not torch.equal(bn_before.running_mean, moved.model[2].running_mean)


def test_int8_conversion_through_ptq_keeps_accuracy(digits_task):
    base = _acc(digits_task, digits_task.model)
    q = effdl.apply(digits_task, QATConfig(bits=8, activations=True, epochs=1))
    assert isinstance(q, QuantizedModel) and q.quantized_modules == LINEARS
    rec = records(q)
    # the PTQ int8 codes are the QAT grid's (min-max per channel) except where the scales were frozen
    # before the last steps moved the weights: measured 98.5%
    assert rec["qat_int8_agreement"].agreement >= 0.95
    assert abs(_acc(digits_task, q) - base) <= 0.01
    hist = rec["quant_error_hist"].layers["1"]
    assert sum(hist.weights) == 64 * 64 and sum(hist.activations) == 32 * 64  # one calibration batch of 32
    centre = len(hist.activations) // 2  # the bin holding 0.0: the inputs do have rounding errors
    assert sum(hist.activations) - hist.activations[centre] > 0
    assert set(rec["act_ranges"].layers) == set(LINEARS)
    # the int8 model uses the trained input ranges, not a re-calibration: each Linear's input observer
    # was pinned to QAT's clip, so its uint8 scale is (clip_hi - min(clip_lo, 0)) / 255
    assert q.input_ranges == {n: (r.clip_lo, r.clip_hi) for n, r in rec["act_ranges"].layers.items()}
    scales = _input_scales(q.reference)
    assert set(scales) == set(LINEARS)
    for layer, scale in scales.items():
        lo, hi = q.input_ranges[layer]
        assert scale == pytest.approx((hi - min(lo, 0.0)) / 255, rel=1e-5), layer


def _input_scales(graph_module) -> dict[str, float]:
    """Layer name -> the uint8 scale of its input in a converted PT2E graph."""
    out = {}
    for node in graph_module.graph.nodes:
        if "quantize_per_tensor" not in str(node.target) or "dequantize" in str(node.target):
            continue
        for dq in node.users:
            for user in dq.users:
                stack = user.meta.get("nn_module_stack") or {}
                if "linear" in str(user.target) and stack:
                    out[list(stack.values())[-1][0]] = float(node.args[1])
    return out


def test_int8_conversion_keeps_the_trained_ranges_on_onnx_runtime(digits_task, tmp_path):
    import onnx
    from onnx import numpy_helper

    q = effdl.apply(digits_task, QATConfig(bits=8, activations=True, epochs=0.5))
    low = lower(q, "ort-int8", task=digits_task, workdir=tmp_path, threads=2, batch_sizes=(1, 32))
    assert low.info["given_input_ranges"] == sorted(LINEARS)
    float_graph = onnx.load(low.info["float_onnx"]).graph
    inputs = {n.input[1].removesuffix(".weight"): n.input[0] for n in float_graph.node if len(n.input) > 1}
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(low.artifact)).graph.initializer}
    for layer in LINEARS:  # ORT names a quantized tensor's scale "<tensor>_scale"
        lo, hi = q.input_ranges[layer]
        assert float(inits[f"{inputs[layer]}_scale"]) == pytest.approx((hi - min(lo, 0.0)) / 255, rel=1e-5), layer
    assert abs(_acc(digits_task, low.predict) - _acc(digits_task, q)) <= 0.01


# -- bad inputs ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, phrase", [
    ({"bits": 0}, "quantize.binary"),
    ({"bits": 1, "mode": "affine"}, "quantize.binary"),
    ({"bits": 17}, "wider than 16"),
    ({"bits": 2.5}, "whole number"),
    ({"bits": 12}, "2..8-bit"),
    ({"bits": 4, "activations": True}, "use bits=8"),
    ({"learnable_scale": True, "mode": "affine"}, "symmetric"),
    ({"granularity": "group"}, "needs group_size"),
    ({"freeze_after": 1.5}, "freeze_after"),
])
def test_bad_config(kw, phrase):
    with pytest.raises(ConfigError, match=phrase):
        QATConfig(**kw)


def test_refuses_an_already_quantized_model(digits_task):
    q = effdl.apply(digits_task, WeightOnlyConfig(bits=4))
    with pytest.raises(ConfigError, match="already quantized"):
        effdl.apply(q, QATConfig(bits=4), task=digits_task)


def test_needs_a_task(digits_task):
    with pytest.raises(ConfigError, match="needs training"):
        effdl.apply(digits_task.model, QATConfig(bits=4))


def test_error_histogram_of_any_weight_only_model(digits_task):
    from effdl.compress.quantize.qat import quant_error_hist

    q = effdl.apply(digits_task, WeightOnlyConfig(bits=4, granularity="tensor"))
    hist = quant_error_hist(digits_task.model, q, bins=11)
    assert set(hist) == set(LINEARS)
    for name in LINEARS:
        w = digits_task.model.get_submodule(name).weight.detach()
        h = hist[name]
        assert len(h["edges"]) == 12 and sum(h["weights"]) == w.numel()
        half_step = float(w.abs().max()) / 7 / 2  # round to nearest: |error| <= s / 2
        assert h["edges"][-1] == pytest.approx(-h["edges"][0]) and h["edges"][-1] <= half_step * (1 + 1e-5)
