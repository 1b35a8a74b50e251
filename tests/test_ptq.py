"""quantize.ptq: config validation, true int8 storage, observers, and the two real INT8 runtimes.

Models and tasks come from test_runtimes (a LeNet-5-like CNN and an MLP on scikit-learn digits).
torch.compile runs twice here: pt2e-int8 on the trained CNN and on a tiny Conv1d model.
"""
from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset
from test_runtimes import SmallCNN, trained_task

from effdl.compress.quantize.calibration import MSE, Entropy
from effdl.compress.quantize.observers import EstimatorObserver, PercentileObserver, PerChannelSharedScaleObserver
from effdl.compress.quantize.ptq import PTQConfig, QuantizedModel
from effdl.core.errors import ConfigError
from effdl.core.registry import apply, config_from_dict
from effdl.core.tasks import ImageClassification
from effdl.deploy.parity import check_parity, parity_inputs
from effdl.core.records import records
from effdl.deploy.runtimes import lower, runtimes_for
from effdl.report.quant import quant_section
from effdl.report.view import load_view


@pytest.fixture(scope="module")
def cnn_task(digits):
    return trained_task(SmallCNN, digits, epochs=30)


@pytest.fixture(scope="module")
def quantized(cnn_task):
    return apply(cnn_task, PTQConfig())


def accuracy(predict, task, batch: int = 32) -> float:
    """Test accuracy with every call at exactly ``batch`` rows (the last chunk padded), so the
    compiled runtime runs only the shape it was compiled for."""
    x = torch.stack([task.splits["test"][i][0] for i in range(len(task.splits["test"]))]).float()
    y = torch.tensor([int(task.splits["test"][i][1]) for i in range(len(task.splits["test"]))])
    preds = []
    for i in range(0, len(x), batch):
        chunk = x[i:i + batch]
        n = len(chunk)
        if n < batch:
            chunk = torch.cat([chunk, chunk[-1:].expand(batch - n, *chunk.shape[1:])])
        with torch.inference_mode():
            preds.append(predict(chunk)[:n].argmax(1))
    return float((torch.cat(preds) == y).float().mean())


# -- config ---------------------------------------------------------------------------------------
def test_defaults_and_round_trip():
    c = PTQConfig()
    assert (c.bits, c.weight_granularity, c.calibration, c.percentile, c.num_batches, c.batch_size, c.exclude) == (
        8, "channel", "minmax", 99.99, 8, 32, ())
    c2 = PTQConfig(calibration="percentile", percentile=99.9, exclude=("fc*",))
    assert config_from_dict(c2.to_dict()) == c2 and c2.to_dict()["technique"] == "quantize.ptq"


@pytest.mark.parametrize("kw,match", [
    ({"bits": 4}, "later release"), ({"bits": 2.5}, "bits"), ({"bits": 0}, "bits"), ({"bits": 17}, "bits"),
    ({"bits": True}, "bits"), ({"percentile": 90}, "percentile"), ({"percentile": 100.5}, "percentile"),
    ({"num_batches": 0}, "num_batches"), ({"batch_size": 0}, "batch_size"),
    ({"calibration": "kl"}, "calibration"), ({"weight_granularity": "group"}, "weight_granularity"),
    ({"granularity": "channel"}, "Did you mean 'weight_granularity'"),
])
def test_invalid_configs_raise_config_error(kw, match):
    with pytest.raises(ConfigError, match=match):
        PTQConfig(**kw)


def test_exclude_pattern_matching_nothing_is_named(cnn_task):
    with pytest.raises(ConfigError, match=r"'fcc\*' matches no module.*Did you mean"):
        apply(cnn_task, PTQConfig(exclude=("fcc*",), num_batches=1))


def test_nan_weights_are_refused_naming_the_module(cnn_task):
    bad = copy.deepcopy(cnn_task.model)
    with torch.no_grad():
        bad.conv2.weight[0, 0, 0, 0] = float("nan")
        bad.fc1.bias[3] = float("inf")
    with pytest.raises(ConfigError, match=r"'conv2', 'fc1'"):
        apply(bad, PTQConfig(num_batches=1), task=cnn_task)


def test_quantizing_twice_is_refused(quantized, cnn_task):
    with pytest.raises(ConfigError, match="already quantized"):
        apply(quantized, PTQConfig(), task=cnn_task)


def test_apply_leaves_the_input_model_untouched_and_copies(cnn_task, quantized):
    before = {k: v.clone() for k, v in cnn_task.model.state_dict().items()}
    q = apply(cnn_task, PTQConfig(num_batches=2))
    assert all(torch.equal(before[k], v) for k, v in cnn_task.model.state_dict().items())
    assert q.float_model is not cnn_task.model and isinstance(q, QuantizedModel)
    assert len(quantized.calibration) == 8 and all(b.shape[0] == 32 for b in quantized.calibration)
    dup = copy.deepcopy(quantized)
    x = cnn_task.example_input(4)
    torch.testing.assert_close(dup(x), quantized(x), rtol=0, atol=0)


# -- storage ----------------------------------------------------------------------------------------
def test_storage_tensors_are_true_int8_with_per_channel_scales(quantized):
    st = quantized.storage_tensors()
    assert set(quantized.quantized_modules) == {"conv1", "conv2", "fc1", "fc2"}
    w = quantized.float_model.conv2.weight.detach()
    # hand check for conv2: scale_c = max|w_c| / 127, q = clamp(round(w / scale_c), -127, 127)
    for c in (0, 7, 15):
        scale = w[c].abs().max().item() / 127
        assert st["conv2.weight.scale"][c].item() == pytest.approx(scale, rel=1e-6)
        expect = np.clip(np.round(w[c].numpy() / np.float32(scale)), -127, 127).astype(np.int8)
        assert np.array_equal(st["conv2.weight.int8"][c].numpy(), expect)
    assert st["conv2.weight.int8"].dtype == torch.int8 and st["conv2.weight.scale"].shape == (16,)
    assert int(st["conv2.weight.int8"].abs().max()) == 127  # the largest weight of a channel maps to 127
    # fold_bn (default): BatchNorm lives in the stored conv weights and bias, its statistics are gone
    assert "conv2.weight" not in st and st["conv2.bias"].dtype == torch.float32
    assert not any(k.startswith("bn1.") for k in st)
    int8_bytes = sum(t.numel() * t.element_size() for t in st.values())
    fp32_bytes = sum(t.numel() * 4 for t in quantized.float_model.state_dict().values() if t.is_floating_point())
    assert int8_bytes < 0.4 * fp32_bytes


def test_tensor_granularity_uses_one_scale(cnn_task):
    q = apply(cnn_task, PTQConfig(weight_granularity="tensor", num_batches=2))
    st = q.storage_tensors()
    w = q.float_model.fc1.weight.detach()
    assert st["fc1.weight.scale"].shape == (1,)
    assert st["fc1.weight.scale"].item() == pytest.approx(w.abs().max().item() / 127, rel=1e-6)
    # the PT2E graph uses the same single scale for every channel (per-channel form, equal values)
    obs = PerChannelSharedScaleObserver(dtype=torch.int8, qscheme=torch.per_channel_symmetric,
                                        quant_min=-127, quant_max=127, ch_axis=0)
    obs(w)
    scale, zp = obs.calculate_qparams()
    assert torch.allclose(scale, torch.full((32,), w.abs().max().item() / 127)) and not zp.any()


# -- observers ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("split", [1, 2])
def test_percentile_observer_matches_hand_computed_percentiles(split):
    values = torch.arange(10000, dtype=torch.float32)  # percentile p of 0..9999 is 99.99 * p
    obs = PercentileObserver(percentile=99.0, bins=2048)
    for part in values.chunk(split):  # split=2: the range grows, old counts are re-binned
        obs(part)
    bin_width = 9999 / 2048
    assert obs.percentile_value(99.0) == pytest.approx(np.percentile(values.numpy(), 99.0), abs=bin_width)
    assert obs.percentile_value(1.0) == pytest.approx(np.percentile(values.numpy(), 1.0), abs=bin_width)
    assert obs.percentile_value(50.0) == pytest.approx(4999.5, abs=bin_width)
    lo, hi = obs.observed_range()
    scale, zp = obs.calculate_qparams()
    # uint8 affine over [min(lo, 0), hi]: lo ~ 99.99 > 0, so the range is [0, hi]
    assert scale.item() == pytest.approx(hi.item() / 255, rel=1e-6) and zp.item() == 0


@pytest.mark.parametrize("estimator", [Entropy, MSE])
def test_estimator_observer_gives_the_estimators_clip_as_uint8_qparams(estimator):
    torch.manual_seed(0)
    # ReLU-like activations with a few large outliers: both estimators clip below the maximum
    batches = [torch.relu(torch.randn(64, 100)) for _ in range(3)] + [torch.tensor([[40.0, 0.5]])]
    obs, ref = EstimatorObserver(estimator=estimator), estimator(bits=8)
    for x in batches:
        obs(x)
        ref.observe(x)
    lo, hi = ref.range()
    assert lo == pytest.approx(0.0) and 2.0 < hi < 40.0  # clipped, and the low end is the observed 0
    scale, zp = obs.calculate_qparams()
    # uint8 affine over [min(lo, 0), max(hi, 0)]: scale = (hi - lo) / 255, zero point = round(-lo / scale)
    assert scale.item() == pytest.approx((hi - min(lo, 0.0)) / 255, rel=1e-6) and zp.item() == 0


def test_entropy_and_mse_calibration_quantize_and_pick_their_runtimes(cnn_task, tmp_path):
    float_acc = accuracy(lambda x: cnn_task.model(x), cnn_task)
    for calibration, runtimes in (("entropy", ["pt2e-int8", "ort-int8", "ort-int8-s8s8"]), ("mse", ["pt2e-int8"])):
        q = apply(cnn_task, PTQConfig(calibration=calibration, num_batches=4))
        assert runtimes_for(q) == runtimes  # ONNX Runtime has no MSE calibrator
        assert abs(accuracy(q, cnn_task) - float_acc) <= 0.01, calibration
        obs = [m for m in q.reference.modules() if isinstance(m, EstimatorObserver)]
        assert not obs  # converted: observers replaced by fixed q/dq constants
    with pytest.raises(ConfigError, match=r"calibration='mse'.*use one of pt2e-int8"):
        lower(q, "ort-int8", task=cnn_task, workdir=tmp_path, threads=2, batch_sizes=(1,))
    low = lower(apply(cnn_task, PTQConfig(calibration="entropy", num_batches=4)), "ort-int8", task=cnn_task,
                workdir=tmp_path, threads=2, batch_sizes=(1, 32))
    assert low.info["calibrate_method"] == "Entropy"
    assert abs(accuracy(low.predict, cnn_task) - float_acc) <= 0.01


@pytest.mark.parametrize("value", [0.0, 3.5])
def test_percentile_observer_constant_input_has_finite_floored_scale(value):
    obs = PercentileObserver(percentile=99.99, eps=2**-12)
    obs(torch.full((4, 100), value))
    scale, zp = obs.calculate_qparams()
    assert torch.isfinite(scale).all() and scale.item() >= 2**-12
    if value == 0.0:
        assert scale.item() == 2**-12 and zp.item() == 0


@pytest.mark.parametrize("calibration", ["minmax", "percentile", "entropy", "mse"])
def test_constant_calibration_data_gives_finite_outputs_and_a_named_warning(digits, calibration):
    x = torch.zeros(64, 1, 8, 8)
    y = torch.arange(64) % 10
    model = SmallCNN().eval()
    task = ImageClassification(model, TensorDataset(x, y), digits.val, num_classes=10)
    with pytest.warns(RuntimeWarning, match=r"constant value \(0\) at the model input"):
        q = apply(task, PTQConfig(calibration=calibration, num_batches=2))
    out = q(task.example_input(8))
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(t).all() for t in q.storage_tensors().values())


# -- the real INT8 runtimes -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def int8_lowerings(quantized, cnn_task, tmp_path_factory):
    wd = tmp_path_factory.mktemp("int8")
    return {rt: lower(quantized, rt, task=cnn_task, workdir=wd, threads=2, batch_sizes=(1, 32))
            for rt in ("pt2e-int8", "ort-int8", "ort-int8-s8s8")}


@pytest.mark.parametrize("runtime", ["pt2e-int8", "ort-int8", "ort-int8-s8s8"])
def test_int8_runtimes_keep_fidelity_and_accuracy(cnn_task, quantized, int8_lowerings, runtime):
    low = int8_lowerings[runtime]
    assert (low.precision, low.lossless) == ("int8", False)
    res = check_parity(quantized.float_model, low, parity_inputs(cnn_task, (1, 32)))
    assert res.ok, res.reason
    assert res.sqnr_db >= 20.0 and res.top1_agreement >= 0.99 and res.n_samples >= 256
    float_acc = accuracy(lambda x: cnn_task.model(x), cnn_task)
    int8_acc = accuracy(low.predict, cnn_task)
    assert float_acc > 0.9
    assert abs(int8_acc - float_acc) <= 0.01, (float_acc, int8_acc)


def test_pt2e_int8_really_runs_int8_kernels(int8_lowerings):
    info = int8_lowerings["pt2e-int8"].info
    assert info["int8_kernels_lowered"].get("qconv_unary", 0) >= 2  # both convs -> oneDNN qconv
    assert info["int8_modules"] == ["conv1", "conv2", "fc1", "fc2"]


@pytest.mark.parametrize("runtime,act_type", [("ort-int8", "UINT8"), ("ort-int8-s8s8", "INT8")])
def test_ort_int8_is_a_qdq_model_with_its_activation_type(int8_lowerings, runtime, act_type):
    import onnx

    low = int8_lowerings[runtime]
    proto = onnx.load(str(low.artifact))
    inits = {i.name: i for i in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    layers = [n for n in proto.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    assert len(layers) == 4
    for layer in layers:  # each weight is an int8 initializer behind a DequantizeLinear
        dq = producer[layer.input[1]]
        assert dq.op_type == "DequantizeLinear" and inits[dq.input[0]].data_type == onnx.TensorProto.INT8
    acts = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    zp = {i.name: i.data_type for i in proto.graph.initializer}
    assert acts and all(zp[n.input[2]] == getattr(onnx.TensorProto, act_type) for n in acts)
    assert low.info["per_channel"] is True and low.info["calibrate_method"] == "MinMax"


def test_percentile_tensor_and_exclude_variants_stay_faithful(cnn_task, tmp_path):
    cfg = PTQConfig(calibration="percentile", percentile=99.99, weight_granularity="tensor", exclude=("fc*",))
    q = apply(cnn_task, cfg)
    assert q.quantized_modules == ("conv1", "conv2") and q.excluded == ("fc1", "fc2")
    st = q.storage_tensors()
    assert st["fc1.weight"].dtype == torch.float32 and st["conv1.weight.scale"].shape == (1,)
    inputs = parity_inputs(cnn_task, (1, 32))
    sim = check_parity(cnn_task.model, _as_lowered(q), inputs)
    assert sim.ok and sim.sqnr_db >= 20, sim.reason
    low = lower(q, "ort-int8", task=cnn_task, workdir=tmp_path, threads=2)
    assert low.info["calibrate_method"] == "Percentile" and low.info["per_channel"] is False
    assert low.info["nodes_kept_float"]  # the fc Gemm nodes
    res = check_parity(cnn_task.model, low, inputs)
    assert res.ok and res.sqnr_db >= 20, res.reason


def test_excluding_a_conv_fused_with_batchnorm_keeps_it_float_in_ort(cnn_task, tmp_path):
    import onnx

    q = apply(cnn_task, PTQConfig(exclude=("conv1",), num_batches=2))
    assert "conv1" not in q.quantized_modules and "conv2" in q.quantized_modules
    low = lower(q, "ort-int8", task=cnn_task, workdir=tmp_path, threads=2)
    proto = onnx.load(str(low.artifact))
    producer = {o: n for n in proto.graph.node for o in n.output}
    convs = {n.input[1] if n.input[1] not in producer else producer[n.input[1]].input[0]: n
             for n in proto.graph.node if n.op_type == "Conv"}
    # the exporter fused bn1 into conv1 (the node carries bn1's scope): still found and kept FP32
    assert "conv1.weight" in convs and convs["conv1.weight"].input[1] == "conv1.weight"
    assert producer[convs["conv2.weight_quantized"].input[1]].op_type == "DequantizeLinear"


class Signal1D(nn.Module):
    """Digits read as a 1-D signal of 64 samples: Conv1d + ReLU, then Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 8, 5, stride=2, padding=2)
        self.fc = nn.Linear(8 * 32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x.flatten(1).unsqueeze(1))).flatten(1))


class Volume3D(nn.Module):
    """Digits as a depth-1 volume: Conv3d (no x86 int8 pattern) + Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 4, (1, 3, 3), padding=(0, 1, 1))
        self.fc = nn.Linear(4 * 64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x.unsqueeze(1))).flatten(1))


def test_conv1d_is_int8_in_both_runtimes(digits, tmp_path):
    """Conv1d runs as an equivalent Conv2d inside PT2E (inductor cannot compile int8 conv1d)."""
    task = trained_task(Signal1D, digits, epochs=5)
    q = apply(task, PTQConfig(num_batches=2))
    assert q.quantized_modules == ("conv", "fc") and q.float_modules() == ()
    st = q.storage_tensors()
    assert st["conv.weight.int8"].shape == (8, 1, 5) and st["conv.weight.scale"].shape == (8,)
    inputs = parity_inputs(task)
    for rt in ("pt2e-int8", "ort-int8"):
        low = lower(q, rt, task=task, workdir=tmp_path, threads=2)
        res = check_parity(task.model, low, inputs)
        assert res.ok and res.sqnr_db >= 20, res.reason
    assert low.info["nodes_kept_float"] == []


def test_layers_without_int8_kernels_stay_float_everywhere(digits, tmp_path):
    task = trained_task(Volume3D, digits, epochs=5)
    with pytest.warns(UserWarning, match=r"kept in FP32.*'conv' \(Conv3d\)"):
        q = apply(task, PTQConfig(num_batches=2))
    assert q.quantized_modules == ("fc",) and q.float_modules() == ("conv",)
    assert q.storage_tensors()["conv.weight"].dtype == torch.float32
    low = lower(q, "ort-int8", task=task, workdir=tmp_path, threads=2)
    assert len(low.info["nodes_kept_float"]) == 1  # the Conv node stays FP32 in ORT too
    assert check_parity(task.model, low, parity_inputs(task)).ok
    # the report lists it, with the reason
    rec = records(q)["int8_layers"]
    assert rec.model_dump() == {"int8": ["fc"], "fp32": {"conv": {"type": "Conv3d", "why": "no int8 kernel"}}}
    view = load_view({"schema_version": 2, "goal": {"metric": "accuracy", "higher_is_better": True},
                      "baseline": "c00", "candidates": [
        {"id": "c00", "label": "baseline", "status": "ok", "recipe": []},
        {"id": "c01", "label": "int8", "status": "ok", "recipe": [{"technique": "quantize.ptq"}], "records": records(q)}]})
    html = quant_section(view)
    assert "Layers kept in FP32 by INT8 quantization" in html
    assert "<td>conv</td><td>Conv3d</td><td>no int8 kernel</td><td>1</td>" in html


def _as_lowered(model):
    from effdl.deploy.lowered import Lowered

    return Lowered("simulated", "int8", False, lambda x: model(x))


def test_quantized_forward_is_quiet_and_finite(quantized, cnn_task):
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("error")  # evaluating the quantized model warns about nothing
        out = quantized(cnn_task.example_input(32))
    assert torch.isfinite(out).all() and not math.isnan(float(out.sum()))


def test_one_sample_calibration_works(digits):
    x, y = digits.train[0]
    task = ImageClassification(SmallCNN().eval(), TensorDataset(x[None], torch.tensor([int(y)])), digits.val,
                               num_classes=10)
    q = apply(task, PTQConfig())
    assert len(q.calibration) == 1 and q.calibration[0].shape[0] == 1
    out = q(task.example_input(5))  # any batch size runs: the export kept the batch dynamic
    assert out.shape == (5, 10) and torch.isfinite(out).all()
