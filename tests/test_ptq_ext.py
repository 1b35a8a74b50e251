"""PTQ extensions: BN folding / CLE / bias correction / AdaRound options, dynamic INT8 (torch and
ONNX Runtime), the bf16 runtime, and bad inputs (calibration NaN/shape, re-quantizing, layers
without int8 kernels). Real scikit-learn digits; models from test_runtimes / test_ptq."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn as nn
from test_ptq import Volume3D
from test_runtimes import SmallCNN, trained_task

from effdl.compress.quantize.adaround import adaround_weight, layer_inputs
from effdl.compress.quantize.float_formats import FloatFormatConfig
from effdl.compress.quantize.ptq import PTQConfig, QuantizedModel, quantize_weight
from effdl.core.errors import ConfigError, DataError
from effdl.core.registry import apply, config_from_dict
from effdl.deploy.parity import check_parity, parity_inputs
from effdl.deploy.runtimes import lower, runtimes_for


@pytest.fixture(scope="module")
def cnn_task(digits):
    return trained_task(SmallCNN, digits, epochs=10)


def _dequant(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.reshape((-1,) + (1,) * (q.dim() - 1))


# -- config -----------------------------------------------------------------------------------------
def test_defaults_fold_bn_only_and_round_trip():
    c = PTQConfig()
    assert (c.mode, c.fold_bn, c.equalize, c.bias_correction, c.rounding) == ("static", True, False, False, "nearest")
    c2 = PTQConfig(mode="dynamic", fold_bn=True, equalize=True, bias_correction=True, rounding="adaround",
                   adaround_iterations=50)
    assert config_from_dict(c2.to_dict()) == c2


@pytest.mark.parametrize("kw", [{"equalize": True}, {"bias_correction": True}, {"rounding": "adaround"}])
def test_weight_rewrites_need_bn_folding(kw):
    with pytest.raises(ConfigError, match="needs fold_bn=True"):
        PTQConfig(fold_bn=False, **kw)


@pytest.mark.parametrize("kw,match", [({"mode": "weight_only"}, "mode"), ({"rounding": "stochastic"}, "rounding"),
                                      ({"adaround_iterations": 0}, "adaround_iterations")])
def test_bad_values_are_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        PTQConfig(fold_bn=False, **kw)


# -- bad inputs ---------------------------------------------------------------------------------------
class _Calib:
    """The task with its calibration batches replaced (what a user's custom task could return)."""

    def __init__(self, task, batches):
        self.task, self.batches = task, batches

    def calibration_batches(self, n, batch_size=32):
        return self.batches

    def __getattr__(self, name):
        return getattr(self.task, name)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_calibration_with_nan_or_inf_is_a_data_error(cnn_task, value):
    x = cnn_task.example_input(8).clone()
    x[3, 0, 2, 2] = value
    with pytest.raises(DataError, match="calibration batch 0 contains NaN/Inf"):
        apply(cnn_task.model, PTQConfig(), task=_Calib(cnn_task, [x]))


def test_calibration_of_the_wrong_shape_names_expected_and_got(cnn_task):
    with pytest.raises(DataError, match=r"shape \(64,\), expected \(1, 8, 8\)"):
        apply(cnn_task.model, PTQConfig(), task=_Calib(cnn_task, [torch.rand(8, 64)]))


def test_quantizing_a_quantized_model_is_refused(digits_task):
    q = apply(digits_task, PTQConfig(mode="dynamic"))
    with pytest.raises(ConfigError, match="already quantized"):
        apply(q, PTQConfig(), task=digits_task)


def test_layers_without_int8_kernels_are_listed_in_the_result(digits):
    task = trained_task(Volume3D, digits, epochs=2)
    with pytest.warns(UserWarning, match=r"kept in FP32.*'conv' \(Conv3d\).*QuantizedModel.unsupported"):
        q = apply(task, PTQConfig(num_batches=1))
    assert q.unsupported == ("conv",) and q.quantized_modules == ("fc",)
    with pytest.warns(UserWarning, match="'conv' \\(Conv3d\\)"):  # excluded on purpose: not "unsupported"
        excl = apply(task, PTQConfig(num_batches=1, exclude=("fc",)))
    assert excl.excluded == ("fc",) and "fc" not in excl.unsupported


# -- static PTQ with folding, equalization, bias correction ------------------------------------------
def test_fold_equalize_bias_correct_stays_faithful_in_ort_int8(cnn_task, tmp_path):
    cfg = PTQConfig(weight_granularity="tensor", fold_bn=True, equalize=True, bias_correction=True, num_batches=4)
    q = apply(cnn_task, cfg)
    assert isinstance(q.float_model.bn1, nn.Identity)  # folded: the stored model has no BN left
    st = q.storage_tensors()
    assert not any(k.startswith("bn1.") for k in st) and st["conv1.weight.int8"].dtype == torch.int8
    inputs = parity_inputs(cnn_task, (1, 32))
    # the prepared float model is the source's function up to the bias correction (a small shift)
    prep = check_parity(cnn_task.model, _wrap(q.float_model), inputs)
    assert prep.sqnr_db >= 30, prep.reason
    low = lower(q, "ort-int8", task=cnn_task, workdir=tmp_path, threads=2)
    res = check_parity(q.float_model, low, inputs)
    assert res.ok and res.sqnr_db >= 20, res.reason
    acc = lambda f: cnn_task.evaluate(f)["accuracy"]
    assert acc(low.predict) >= acc(cnn_task.model) - 0.02


def _wrap(model):
    from effdl.deploy.lowered import Lowered

    return Lowered("prepared", "fp32", False, lambda x: model(x))


# -- AdaRound -------------------------------------------------------------------------------------------
def test_adaround_beats_nearest_on_a_conv_layer_and_requantizes_to_the_same_ints(cnn_task):
    model = copy.deepcopy(cnn_task.model).eval()
    calib = cnn_task.calibration_batches(2, 32)
    x = layer_inputs(model, "conv2", calib)
    conv = model.conv2
    q, scale = adaround_weight(conv, x, "tensor", iterations=150)
    q_near, scale_near = quantize_weight(conv.weight.detach(), "tensor")
    torch.testing.assert_close(scale, scale_near)
    changed = float((q != q_near).float().mean())
    assert 0 < changed < 0.5  # some weights rounded the other way, most not
    assert int((q.int() - q_near.int()).abs().max()) == 1  # never further than the neighbouring level
    with torch.no_grad():
        ref = conv(x)
        mse = lambda w: float(((conv._conv_forward(x, w, conv.bias) - ref) ** 2).mean())
        ada, near = mse(_dequant(q, scale)), mse(_dequant(q_near, scale_near))
    assert ada <= 0.8 * near, (ada, near)  # measured: ~0.4x at 150 steps
    # the dequantized weights re-quantize to exactly the learned ints (same scale from max|w|)
    q2, s2 = quantize_weight(_dequant(q, scale), "tensor")
    assert torch.equal(q2, q) and torch.allclose(s2, scale, rtol=1e-6, atol=0)


def test_adaround_option_feeds_the_learned_ints_to_storage_and_the_pt2e_observer(cnn_task):
    from torchao.quantization.pt2e import PerChannelMinMaxObserver

    q = apply(cnn_task, PTQConfig(fold_bn=True, rounding="adaround", adaround_iterations=30, num_batches=2))
    st = q.storage_tensors()
    for name in q.quantized_modules:
        w = q.float_model.get_submodule(name).weight.detach()
        torch.testing.assert_close(_dequant(st[f"{name}.weight.int8"], st[f"{name}.weight.scale"]), w,
                                   rtol=0, atol=1e-6 * float(w.abs().max()))
        # what PT2E computes for this weight: same per-channel scale, hence the same ints
        obs = PerChannelMinMaxObserver(dtype=torch.int8, qscheme=torch.per_channel_symmetric,
                                       quant_min=-127, quant_max=127, ch_axis=0, eps=2**-12)
        obs(w)
        scale, _ = obs.calculate_qparams()
        ints = torch.round(w / scale.reshape((-1,) + (1,) * (w.dim() - 1))).clamp(-127, 127).to(torch.int8)
        assert torch.equal(ints, st[f"{name}.weight.int8"]), name


# -- dynamic INT8 ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dynamic(digits_task):
    return apply(digits_task, PTQConfig(mode="dynamic"))


def test_dynamic_quantizes_every_linear_with_effdl_int8_weights(dynamic):
    assert dynamic.quantized_modules == ("1", "3", "5") and dynamic.unsupported == ()
    assert runtimes_for(dynamic) == ["torch-int8-dynamic", "ort-int8-dynamic"]
    st = dynamic.storage_tensors()
    for name in dynamic.quantized_modules:  # torch's packed int8 weights are exactly the stored ones
        packed = dynamic.reference.get_submodule(name).weight()
        assert torch.equal(packed.int_repr(), st[f"{name}.weight.int8"]), name
        torch.testing.assert_close(packed.q_per_channel_scales().float(), st[f"{name}.weight.scale"])


@pytest.mark.parametrize("runtime", ["torch-int8-dynamic", "ort-int8-dynamic"])
def test_dynamic_runtimes_keep_fidelity_and_accuracy(digits_task, dynamic, runtime, tmp_path):
    low = lower(dynamic, runtime, task=digits_task, workdir=tmp_path, threads=2)
    assert (low.runtime, low.precision, low.lossless) == (runtime, "int8", False)
    res = check_parity(dynamic.float_model, low, parity_inputs(digits_task, (1, 32)))
    assert res.ok and res.sqnr_db >= 20 and res.top1_agreement >= 0.99, res.reason
    float_acc = digits_task.evaluate(digits_task.model)["accuracy"]
    assert digits_task.evaluate(low.predict)["accuracy"] >= float_acc - 0.01
    if runtime == "ort-int8-dynamic":
        assert low.info["integer_nodes"] == 3 and low.artifact.name.endswith(".int8-dynamic.onnx")


def test_static_and_dynamic_runtimes_refuse_the_other_mode(digits_task, dynamic, tmp_path):
    with pytest.raises(ConfigError, match="mode='dynamic'.*use one of torch-int8-dynamic"):
        lower(dynamic, "pt2e-int8", task=digits_task, workdir=tmp_path)
    static = apply(digits_task, PTQConfig(num_batches=1))
    with pytest.raises(ConfigError, match="mode='static'.*use one of pt2e-int8, ort-int8"):
        lower(static, "ort-int8-dynamic", task=digits_task, workdir=tmp_path)


def test_dynamic_forward_is_quiet(dynamic, digits_task):
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("error")
        out = dynamic(digits_task.example_input(4))
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    assert isinstance(copy.deepcopy(dynamic), QuantizedModel)


# -- bf16 -----------------------------------------------------------------------------------------------
def test_bf16_runtime_is_tried_on_bf16_weights_and_faithful(digits_task, tmp_path):
    assert "bf16" not in runtimes_for(digits_task.model)  # lossy: not a default for FP32 models
    bf16 = apply(digits_task, FloatFormatConfig(format="bf16"))
    assert "bf16" in runtimes_for(bf16) and "bf16" not in runtimes_for(apply(digits_task, FloatFormatConfig(format="fp16")))
    low = lower(digits_task.model, "bf16", task=digits_task, workdir=tmp_path, threads=2, batch_sizes=(32,))
    assert (low.precision, low.lossless, low.info["autocast"]) == ("bf16", False, "bfloat16")
    res = check_parity(digits_task.model, low, parity_inputs(digits_task, (32,)))
    assert res.ok and res.sqnr_db >= 20 and res.top1_agreement >= 0.99, res.reason
    assert res.max_abs_err > 0  # really computed in bf16, not a silent fp32 fallback
