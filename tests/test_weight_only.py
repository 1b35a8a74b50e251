import copy
import math

import pytest
import torch
import torch.nn as nn

import effdl
from effdl.compress.quantize.float_formats import (
    FloatFormatConfig,
    FloatFormatModel,
    load_float_format,
)
from effdl.compress.quantize.ptq import PTQConfig, QuantizedModel
from effdl.compress.quantize.weight_only import (
    WeightOnlyConfig,
    WeightOnlyModel,
    load_weight_only,
)
from effdl.core.errors import ConfigError
from effdl.deploy.storage import load_compact, model_tensors, save_compact

LINEARS = ("1", "3", "5")  # the digits MLP: Linear 64->64, 64->32, 32->10


def _acc(task, model):
    return task.evaluate(model, "test")["accuracy"]


def _weights(model):
    return {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def test_int8_per_channel_loses_under_one_point(digits_task):
    before = _weights(digits_task.model)
    q = effdl.apply(digits_task, WeightOnlyConfig(bits=8, granularity="channel"))
    assert isinstance(q, WeightOnlyModel) and q.quantized_modules == LINEARS
    assert all(torch.equal(w, _weights(digits_task.model)[n]) for n, w in before.items())  # input untouched
    for name, w in before.items():  # each weight within half a step of its channel's int8 grid
        step = w.abs().amax(1, keepdim=True) / 127
        w_hat = q.model.get_submodule(name).weight
        assert bool(((w_hat - w).abs() <= step / 2 * (1 + 1e-5)).all())
    drop = _acc(digits_task, digits_task.model) - _acc(digits_task, q)
    assert drop < 0.01


def test_int4_groupwise_storage_bytes_exact(digits_task, tmp_path):
    q = effdl.apply(digits_task, WeightOnlyConfig(bits=4, granularity="group", group_size=16))
    tensors = model_tensors(q)
    weight_bytes = {k: t.numel() * t.element_size() for k, t in tensors.items() if ".weight." in k}
    # codes: (64*64 + 32*64 + 10*32) weights at 4 bits = 6464 / 2 bytes, exactly 1/8 of FP32;
    # scales: one float32 per 16 weights of a row: 64*4 + 32*4 + 10*2 = 404 -> 1616 bytes
    fp32 = 4 * (64 * 64 + 32 * 64 + 10 * 32)
    assert sum(v for k, v in weight_bytes.items() if k.endswith(".packed")) == fp32 // 8 == 3232
    assert sum(v for k, v in weight_bytes.items() if k.endswith(".scale")) == 1616
    assert sum(weight_bytes.values()) == 4848  # 6 bits per weight all in
    assert not any(k.endswith(".zero_point") for k in tensors)  # symmetric: no zero points
    biases = 4 * (64 + 32 + 10)
    size = save_compact(tensors, tmp_path / "m.safetensors")
    assert 4848 + biases < size < 4848 + biases + 2500  # + the safetensors header/layout JSON
    assert _acc(digits_task, digits_task.model) - _acc(digits_task, q) < 0.05


def test_two_bit_still_runs(digits_task):
    q = effdl.apply(digits_task, WeightOnlyConfig(bits=2, granularity="channel"))
    for name in LINEARS:  # 2-bit symmetric restricted grid: {-1, 0, 1} * scale per channel
        w = q.model.get_submodule(name).weight
        levels = (w / w.abs().amax(1, keepdim=True).clamp_min(1e-12)).unique()
        assert set(levels.tolist()) <= {-1.0, 0.0, 1.0}
    out = q(digits_task.example_input(8))
    assert bool(torch.isfinite(out).all())
    assert _acc(digits_task, q) > 0.2  # well above chance (0.1) even at 2 bits


CONFIGS = [
    WeightOnlyConfig(bits=8, granularity="tensor"),
    WeightOnlyConfig(bits=4, granularity="group", group_size=16, mode="affine"),
    WeightOnlyConfig(bits=3, granularity="group", group_size=24),  # 64-wide rows: groups of 24, 24, 16
    WeightOnlyConfig(bits=5, format="pow2"),
    WeightOnlyConfig(bits=4, format="log2"),
    WeightOnlyConfig(bits=4, format="codebook"),
    WeightOnlyConfig(bits=3, format="codebook", granularity="tensor"),
    WeightOnlyConfig(bits=6, mode="affine", keep_first_last=True),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.short())
def test_round_trip_through_compact_storage_is_exact(digits_task, tmp_path, cfg):
    q = effdl.apply(digits_task, cfg)
    save_compact(model_tensors(q), tmp_path / "m.safetensors")
    fresh = copy.deepcopy(digits_task.model)
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    back = load_weight_only(fresh, load_compact(tmp_path / "m.safetensors"), cfg)
    for (k, a), (_, b) in zip(q.model.state_dict().items(), back.model.state_dict().items()):
        assert torch.equal(a, b), k
    x = digits_task.example_input(16)
    assert torch.equal(q(x), back(x))


def test_ragged_groups_and_affine_zero_points_are_packed(digits_task):
    q = effdl.apply(digits_task, WeightOnlyConfig(bits=3, granularity="group", group_size=24, mode="affine"))
    parts = q.parts["1"]
    assert parts["scale"].shape == (64, 3)  # ceil(64 / 24) groups per row
    assert parts["packed"].numel() == math.ceil(64 * 64 * 3 / 8)
    assert parts["zero_point"].dtype == torch.uint8 and parts["zero_point"].numel() == math.ceil(64 * 3 * 3 / 8)


def test_keep_first_last_and_exclude(digits_task):
    q = effdl.apply(digits_task, WeightOnlyConfig(bits=4, keep_first_last=True))
    assert q.quantized_modules == ("3",)
    assert torch.equal(q.model.get_submodule("1").weight, digits_task.model.get_submodule("1").weight)
    q = effdl.apply(digits_task, WeightOnlyConfig(bits=4, exclude=("5",)))
    assert q.quantized_modules == ("1", "3")
    assert "5.weight" in model_tensors(q)
    with pytest.raises(ConfigError, match="scope pattern 'fc9' matches no module"):
        effdl.apply(digits_task, WeightOnlyConfig(bits=4, exclude=("fc9",)))


def test_refuses_already_quantized_models(digits_task):
    q = effdl.apply(digits_task, WeightOnlyConfig(bits=4))
    with pytest.raises(ConfigError, match="already quantized \\(WeightOnlyModel\\)"):
        effdl.apply(q, WeightOnlyConfig(bits=8))
    with pytest.raises(ConfigError, match="already quantized \\(WeightOnlyModel\\); apply quantize.float"):
        effdl.apply(q, FloatFormatConfig(format="fp16"))
    ptq = QuantizedModel(digits_task.model, PTQConfig(), [], nn.Identity(), (), ())
    with pytest.raises(ConfigError, match="already quantized \\(QuantizedModel\\)"):
        effdl.apply(ptq, WeightOnlyConfig(bits=4))


def test_nan_weights_name_the_module(digits_task):
    bad = copy.deepcopy(digits_task.model)
    with torch.no_grad():
        bad.get_submodule("3").weight[0, 0] = float("nan")
    for cfg in (WeightOnlyConfig(bits=4), FloatFormatConfig(format="bf16")):
        with pytest.raises(ConfigError, match="NaN/Inf in the weights of module\\(s\\) '3'"):
            effdl.apply(bad, cfg)


@pytest.mark.parametrize("kw,phrase", [
    ({"bits": 17}, "wider than 16"),
    ({"bits": 1}, "binary"),
    ({"bits": True}, "whole number of bits"),
    ({"granularity": "group"}, "needs group_size"),
    ({"group_size": 16}, "group_size only applies"),
    ({"format": "codebook", "granularity": "group", "group_size": 16}, "one codebook per tensor or per channel"),
    ({"format": "log2", "mode": "affine"}, "has no zero point"),
    ({"format": "lut"}, "format"),
])
def test_bad_configs(kw, phrase):
    with pytest.raises(ConfigError, match=phrase):
        WeightOnlyConfig(**kw)


def test_config_round_trips_through_dict():
    from effdl.core.registry import config_from_dict

    cfg = WeightOnlyConfig(bits=4, granularity="group", group_size=32, exclude=("5",))
    assert config_from_dict(cfg.to_dict()) == cfg
    assert config_from_dict(FloatFormatConfig(format="fp8_e5m2").to_dict()) == FloatFormatConfig(format="fp8_e5m2")


# -- quantize.float ------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt,dtype,nbytes", [("fp16", torch.float16, 2), ("bf16", torch.bfloat16, 2),
                                              ("fp8_e4m3", torch.float8_e4m3fn, 1), ("fp8_e5m2", torch.float8_e5m2, 1)])
def test_float_formats_store_the_real_dtype_and_round_trip(digits_task, tmp_path, fmt, dtype, nbytes):
    q = effdl.apply(digits_task, FloatFormatConfig(format=fmt))
    assert isinstance(q, FloatFormatModel)
    tensors = model_tensors(q)
    for name in LINEARS:
        assert tensors[f"{name}.weight"].dtype == dtype
        assert tensors[f"{name}.bias"].dtype == torch.float32
        assert (f"{name}.weight.scale" in tensors) == fmt.startswith("fp8")
    n = 64 * 64 + 32 * 64 + 10 * 32
    assert sum(tensors[f"{k}.weight"].numel() * tensors[f"{k}.weight"].element_size() for k in LINEARS) == n * nbytes
    save_compact(tensors, tmp_path / "m.safetensors")
    loaded = load_compact(tmp_path / "m.safetensors")
    assert loaded["1.weight"].dtype == dtype
    back = load_float_format(copy.deepcopy(digits_task.model), loaded, FloatFormatConfig(format=fmt))
    x = digits_task.example_input(16)
    assert torch.equal(q(x), back(x))
    drop = _acc(digits_task, digits_task.model) - _acc(digits_task, q)
    assert drop < (0.01 if nbytes == 2 else 0.03)


def test_float_activations_are_rounded(digits_task):
    q = effdl.apply(digits_task, FloatFormatConfig(format="fp8_e4m3", activations=True))
    seen = {}
    q.model.get_submodule("3").register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    q(digits_task.example_input(4))
    x = seen["x"]
    assert torch.equal(x, x.to(torch.float8_e4m3fn).float())  # every input value is an E4M3 value


def test_footprint_names_layers_as_the_user_model_does(digits_task, tmp_path):
    from effdl.metrics.measure import static_footprint

    q = effdl.apply(digits_task, effdl.quantize.Weights(bits=4))
    fp = static_footprint(q, digits_task, tmp_path / "q.safetensors")
    dense = static_footprint(digits_task.model, digits_task, tmp_path / "d.safetensors")
    assert list(fp["layers"]) == list(dense["layers"]) == ["1", "3", "5"]
