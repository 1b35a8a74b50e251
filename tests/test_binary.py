"""quantize.binary / quantize.ternary: hand-computed levels, packed storage, STE training, refusals."""
import pytest
import torch
import torch.nn as nn

import effdl
from effdl.compress.quantize.binary import (
    BinaryConfig,
    ExtremeQuantModel,
    TernaryConfig,
    binarize,
    load_extreme,
    ternarize,
)
from effdl.compress.quantize.weight_only import WeightOnlyConfig
from effdl.core.errors import ConfigError, UnsupportedModuleError
from effdl.core.records import records

W = torch.tensor([[0.5, -1.0, 0.0, 1.5], [-0.2, 0.2, 0.4, -0.4]])
LINEARS = {"1": (64, 64), "3": (32, 64), "5": (10, 32)}


def test_binary_levels_by_hand():
    codes, alpha = binarize(W)
    assert codes.tolist() == [[1, -1, 1, 1], [-1, 1, 1, -1]]  # sign(0) -> +1: one bit per weight
    assert alpha.tolist() == pytest.approx([0.75, 0.3])  # mean|w| per row: 3.0/4, 1.2/4


def test_ternary_levels_by_hand():
    codes, alpha = ternarize(W)
    # row 0: delta = 0.7 * 0.75 = 0.525 -> keeps -1.0, 1.5, alpha = 1.25
    # row 1: delta = 0.7 * 0.3 = 0.21 -> keeps 0.4, -0.4 (0.2 is below), alpha = 0.4
    assert codes.tolist() == [[0, -1, 0, 1], [0, 0, 1, -1]]
    assert alpha.tolist() == pytest.approx([1.25, 0.4])


def _bytes(t: dict) -> int:
    return sum(v.numel() * v.element_size() for v in t.values())


@pytest.mark.parametrize("cfg, bits", [(BinaryConfig(epochs=0, keep_first_last=False), 1),
                                       (TernaryConfig(epochs=0, keep_first_last=False), 2)])
def test_storage_is_packed_codes_plus_scales(digits_task, cfg, bits, tmp_path):
    from effdl.deploy.storage import load_compact, model_tensors, save_compact

    q = effdl.apply(digits_task, cfg)
    t = q.storage_tensors()
    for name, (o, i) in LINEARS.items():
        assert t[f"{name}.weight.packed"].numel() == o * i * bits // 8  # 512/256/40 (1 bit), x2 (2 bits)
        assert t[f"{name}.weight.alpha"].shape == (o,)
        assert f"{name}.weight" not in t
    # codes + 106 float32 alphas + 106 float32 biases
    assert _bytes(t) == (64 * 64 + 32 * 64 + 10 * 32) * bits // 8 + 106 * 4 + 106 * 4
    save_compact(model_tensors(q), tmp_path / "m.safetensors")
    fresh = effdl.zoo.build("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(64, 32))
    back = load_extreme(fresh, load_compact(tmp_path / "m.safetensors"), q.kind)
    x = digits_task.example_input(8)
    assert torch.equal(back(x), q(x))
    w = q.model.get_submodule("3").weight  # runs dequantized: each row is alpha * {-1, (0,) +1}
    levels = (w / q.parts["3"]["alpha"][:, None]).round()
    assert torch.allclose(w, levels * q.parts["3"]["alpha"][:, None]) and set(levels.unique().tolist()) <= {-1.0, 0.0, 1.0}
    hist = records(q)["quant_error_hist"]
    assert sum(hist.layers["1"].weights) == 64 * 64


def test_first_and_last_layers_stay_fp32_by_default(digits_task):
    q = effdl.apply(digits_task, BinaryConfig(epochs=0))
    assert q.quantized_modules == ("3",)
    assert torch.equal(q.model.get_submodule("1").weight, digits_task.model.get_submodule("1").weight)


@pytest.mark.parametrize("cfg", [BinaryConfig, TernaryConfig])
def test_ste_training_recovers_accuracy(digits_task, cfg):
    """Measured on the digits MLP, every layer quantized: binary 67.7% -> 92.8% after 3 STE epochs,
    ternary 85.2% -> 95.8%. Asserted: training gains at least 3 points over no training."""
    before = digits_task.evaluate(effdl.apply(digits_task, cfg(epochs=0, keep_first_last=False)))["accuracy"]
    after = digits_task.evaluate(effdl.apply(digits_task, cfg(epochs=3, keep_first_last=False)))["accuracy"]
    assert after >= before + 0.03, (before, after)


def test_refuses_model_without_conv_or_linear(digits_task):
    with pytest.raises(UnsupportedModuleError, match="no Conv/Linear layer"):
        effdl.apply(nn.Sequential(nn.Flatten(), nn.ReLU()), BinaryConfig(epochs=0))


def test_refuses_quantized_models(digits_task):
    w4 = effdl.apply(digits_task, WeightOnlyConfig(bits=4))
    with pytest.raises(ConfigError, match="already quantized"):
        effdl.apply(w4, TernaryConfig(epochs=0))
    b = effdl.apply(digits_task, BinaryConfig(epochs=0))
    assert isinstance(b, ExtremeQuantModel)
    with pytest.raises(ConfigError, match="already quantized"):
        effdl.apply(b, BinaryConfig(epochs=0))
    from effdl.compress.quantize.qat import QATConfig

    with pytest.raises(ConfigError, match="already quantized"):
        effdl.apply(b, QATConfig(bits=4), task=digits_task)


def test_keep_first_last_on_two_layers_leaves_nothing():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with pytest.raises(ConfigError, match="keep_first_last=False"):
        effdl.apply(model, BinaryConfig(epochs=0))


@pytest.mark.parametrize("kw", [{"epochs": -1}, {"threshold": 0.0}, {"bits": 1}])
def test_bad_config(kw):
    with pytest.raises(ConfigError):
        TernaryConfig(**kw)
