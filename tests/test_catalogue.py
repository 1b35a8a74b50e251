"""The catalogue of bad inputs every part must survive (REFERENCE.md, 22 rows), one test per row.

Each test goes through the public API (and the command line where the case is reachable from it)
and asserts either a typed EffdlError whose message names the problem and a fix, or the exact
correct result. Rows with deeper tests elsewhere are re-checked compactly here, on tiny models:
1 test_structured; 2 test_structured; 3 test_prune, test_prune_weights, test_lowrank_svd,
test_share_cluster; 4-6 test_bn_fold, test_ptq_depthwise; 7-8 test_prune_weights, test_structured;
9 test_quant_scheme; 11 test_quant_calibration, test_ptq_ext; 12-14 test_cli; 16 test_cli,
test_runtimes; 18 test_lowrank_svd, test_share_cluster, test_ptq_ext; 19 test_search;
20 test_resume_kill, test_fault_injection; 21 test_results.
"""
import copy
import hashlib
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

import effdl
from effdl.core.errors import (
    ArtifactError, ConfigError, DataError, ModelError, UnsafeArtifactError, UnsupportedModuleError,
)
from effdl.core.registry import get
from effdl.core.records import records
from effdl.core.tasks import ImageClassification
from test_cli import ENV, _assert_clean_error, effdl as cli

DIGITS = (1, 8, 8)


def cfg(name, **kw):
    """The registered config of technique ``name``."""
    return get(name).config(**kw)


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()


def digits_mlp(seed=0):
    """A small digits-shaped MLP (not trained: these rows are about inputs, not accuracy)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                         nn.Linear(16, 10)).eval()


def task_for(model, digits, train=None):
    return ImageClassification(model, digits.train if train is None else train, digits.val, digits.test,
                               num_classes=digits.num_classes)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical (so -0.0 vs +0.0 and NaN payloads count as changes)."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.detach().contiguous().view(torch.uint8), b.detach().contiguous().view(torch.uint8))


def write_factory(tmp_path, body: str, name="m.py") -> str:
    f = tmp_path / name
    f.write_text("import torch\nimport torch.nn as nn\n" + textwrap.dedent(body))
    return f"{f}:make"


def write_recipe(tmp_path, steps: str, name="r.yaml") -> Path:
    recipe = tmp_path / name
    recipe.write_text("steps:\n" + textwrap.indent(textwrap.dedent(steps), "  "))
    return recipe


def assert_nothing_written(out: Path):
    """The output directory does not exist and no staging folder or temp file is left beside it."""
    assert not out.exists()
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


@pytest.fixture(scope="module")
def trained(digits):
    """A small MLP trained on digits for a few epochs (seconds): a real baseline for optimize."""
    from effdl.zoo import build

    torch.manual_seed(0)
    model = build("mlp", input_shape=DIGITS, num_classes=10, hidden=(32, 16))
    task = task_for(model, digits)
    task.train(model, epochs=8, lr=3e-3)
    return task


# -- 1 ---------------------------------------------------------------------------------------------------
class Gain(nn.Module):
    """A custom layer: its own parameter, a type no technique knows."""

    def __init__(self, c):
        super().__init__()
        self.g = nn.Parameter(torch.linspace(0.5, 1.5, c))

    def forward(self, x):
        return x * self.g


class WithCustom(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.act, self.fc2, self.fc3 = nn.Linear(8, 16), Gain(16), nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(self.act(self.fc1(x)))))


CUSTOM_FACTORY = """
class Gain(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.g = nn.Parameter(torch.ones(c))

    def forward(self, x):
        return x * self.g

def make():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), Gain(16), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 10))
"""


def test_catalogue_01_custom_layer_type(tmp_path):
    model = WithCustom().eval()
    # channel pruning cannot follow channels through an unknown layer: named, with the fix
    with pytest.raises(UnsupportedModuleError, match=r"'act' \(Gain\) holds its own parameters") as info:
        effdl.apply(model, cfg("prune.channels", ratio=0.5, input_shape=(8,)))
    assert "protect=['act']" in str(info.value)
    # the fix works: the group feeding the custom layer stays whole, the rest is pruned
    out = effdl.apply(model, cfg("prune.channels", ratio=0.5, protect=("act",), input_shape=(8,)))
    assert (out.fc1.out_features, out.fc2.out_features, out.fc3.out_features) == (16, 8, 4)
    assert same_bits(out.act.g, model.act.g) and out(torch.randn(3, 8)).shape == (3, 4)
    # weight-only quantization converts the Linear layers and leaves the custom layer's float parameter as is
    q = effdl.apply(model, cfg("quantize.weights", bits=4))
    assert set(q.parts) == {"fc1", "fc2", "fc3"}
    assert same_bits(q.model.act.g, model.act.g) and same_bits(q.storage_tensors()["act.g"], model.act.g)
    assert all(len(torch.unique(row)) <= 16 for row in q.model.fc2.weight)  # 4-bit codes, one scale per channel
    # and on the command line: exit 2, one line, nothing written
    out_dir = tmp_path / "out"
    r = cli("apply", str(write_recipe(tmp_path, "- {technique: prune.channels, ratio: 0.5}\n")),
            "--model", write_factory(tmp_path, CUSTOM_FACTORY), "--data", "digits", "--out", str(out_dir))
    _assert_clean_error(r, "module '2' (Gain) holds its own parameters", "protect=['2']")
    assert_nothing_written(out_dir)


# -- 2 ---------------------------------------------------------------------------------------------------
class LayerScale(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((c,), 0.1))

    def forward(self, x):
        return x * self.gamma


class FreeParams(nn.Module):
    """A positional embedding held on the model itself and a layer scale (a module of one parameter)."""

    def __init__(self, root_param=True):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.ls, self.fc2, self.head = nn.Linear(8, 16), LayerScale(16), nn.Linear(16, 16), nn.Linear(16, 4)
        self.pos = nn.Parameter(torch.randn(8)) if root_param else None

    def forward(self, x):
        x = x + self.pos if self.pos is not None else x
        return self.head(torch.relu(self.fc2(self.ls(self.fc1(x)))))


def test_catalogue_02_free_parameter():
    model = FreeParams().eval()
    with pytest.raises(UnsupportedModuleError, match=r"holds parameters of its own outside any layer \(pos\)") as info:
        effdl.apply(model, cfg("prune.channels", ratio=0.5, protect_first=False, input_shape=(8,)))
    assert "move them into a submodule" in str(info.value) and "prune.magnitude" in str(info.value)
    with pytest.raises(UnsupportedModuleError, match=r"'ls' \(LayerScale\).*protect=\['ls'\]"):
        effdl.apply(FreeParams(root_param=False).eval(), cfg("prune.channels", ratio=0.5, input_shape=(8,)))
    # the named fix: unstructured pruning prunes exactly half of each layer and leaves both free parameters alone
    out = effdl.apply(model, cfg("prune.magnitude", sparsity=0.5, scope="layer"))
    assert same_bits(out.pos, model.pos) and same_bits(out.ls.gamma, model.ls.gamma)
    assert [float((m.weight == 0).float().mean()) for m in (out.fc1, out.fc2, out.head)] == [0.5, 0.5, 0.5]
    # weight-only quantization and SVD keep them in FP32, bit for bit, and store them as they are
    q = effdl.apply(model, cfg("quantize.weights", bits=8))
    st = q.storage_tensors()
    assert same_bits(st["pos"], model.pos) and same_bits(st["ls.gamma"], model.ls.gamma)
    x = torch.randn(5, 8)
    with torch.no_grad():
        assert (q(x) - model(x)).abs().max() < 0.02  # 8-bit weights, free parameters exact
    s = effdl.apply(model, cfg("lowrank.svd", rank=2))
    assert same_bits(s.pos, model.pos) and list(records(s)["lowrank.svd"].layers) == ["fc1", "fc2"]


# -- 3 ---------------------------------------------------------------------------------------------------
def tied_model():
    torch.manual_seed(0)
    a, b = nn.Linear(8, 8, bias=False), nn.Linear(8, 8, bias=False)
    b.weight = a.weight  # two modules, one Parameter (like tied input/output embeddings)
    return nn.Sequential(a, nn.ReLU(), b, nn.ReLU(), nn.Linear(8, 4)).eval()


def test_catalogue_03_shared_or_tied_weights():
    model = tied_model()
    # pruned once, still one Parameter, exactly half of it zero (32 of 64)
    p = effdl.apply(model, cfg("prune.magnitude", sparsity=0.5, scope="layer"))
    assert p[0].weight is p[2].weight and isinstance(p[0].weight, nn.Parameter)
    assert int((p[0].weight == 0).sum()) == 32
    # quantized once, stored once, still tied
    q = effdl.apply(model, cfg("quantize.weights", bits=4))
    assert q.model[0].weight is q.model[2].weight and set(q.parts) == {"0", "4"}
    assert not [k for k in q.storage_tensors() if k.startswith("2.")]
    # SVD would untie them: both left dense, still tied, and the record says why
    s = effdl.apply(model, cfg("lowrank.svd", rank=2, keep_last=False))
    assert s[0].weight is s[2].weight
    skipped = records(s)["lowrank.svd"].skipped
    assert "tied to '2' (Linear)" in skipped["0"] and "tied to '0' (Linear)" in skipped["2"]
    # a technique that cannot keep the tie refuses by name, with the fix
    with pytest.raises(UnsupportedModuleError, match=r"layer '0' shares its weight.*tied weights.*exclude it"):
        effdl.apply(model, cfg("share.cluster", bits=2))
    with pytest.raises(UnsupportedModuleError, match="tied"):
        effdl.apply(model, cfg("prune.channels", ratio=0.5, input_shape=(8,)))


# -- 4 ---------------------------------------------------------------------------------------------------
def conv_bn(bn=None, bias=True, groups=1):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=bias), bn if bn is not None else nn.BatchNorm2d(4),
                         nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, groups=groups), nn.ReLU(), nn.Flatten(),
                         nn.Linear(256, 10))


def randomise_stats(bn):
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return bn


def test_catalogue_04_bn_folding_in_train_mode(digits):
    from effdl.compress.quantize.bn_fold import fold_batchnorm

    model = conv_bn()
    randomise_stats(model[1])
    model.train()
    with pytest.raises(ConfigError, match=r"train mode.*call model.eval\(\) first"):
        fold_batchnorm(model)
    # quantize.ptq is post-training: it quantizes the eval-mode function (running statistics), folded,
    # on its own copy, and leaves the caller's model in train mode
    x = torch.stack([digits.test[i][0] for i in range(16)])
    q = effdl.apply(task_for(model, digits), cfg("quantize.ptq", num_batches=1, batch_size=16))
    assert model.training and model[1].training
    evaluated = copy.deepcopy(model).eval()
    assert isinstance(q.float_model[1], nn.Identity)
    for name, t in fold_batchnorm(evaluated).state_dict().items():  # exactly the eval-mode fold
        assert same_bits(q.float_model.state_dict()[name], t), name
    with torch.no_grad():
        torch.testing.assert_close(q.float_model(x), evaluated(x), rtol=1e-4, atol=1e-5)


# -- 5 ---------------------------------------------------------------------------------------------------
def test_catalogue_05_bn_without_affine_or_stats_conv_without_bias(digits):
    from effdl.compress.quantize.bn_fold import fold_batchnorm

    # conv without bias + BN without affine + running_var ~ 0: folds exactly (eps keeps it finite)
    model = conv_bn(bn=nn.BatchNorm2d(4, affine=False), bias=False).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.1, 0.1)
        model[1].running_var.copy_(torch.tensor([1e-12, 0.0, 1.0, 2.0]))
    folded = fold_batchnorm(model)
    assert isinstance(folded[1], nn.Identity) and folded[0].bias is not None
    x = torch.randn(4, *DIGITS)
    with torch.no_grad():
        ref = model(x)
        assert bool(torch.isfinite(ref).all())
        torch.testing.assert_close(folded(x), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    q = effdl.apply(task_for(model, digits), cfg("quantize.ptq", num_batches=1, batch_size=16))
    assert isinstance(q.float_model[1], nn.Identity)
    # BN without running statistics normalises with the batch's: it cannot be folded, named with the fix
    no_stats = conv_bn(bn=nn.BatchNorm2d(4, track_running_stats=False)).eval()
    with pytest.raises(UnsupportedModuleError, match=r"BatchNorm '1' has no running statistics.*Fix: keep fold_bn=False"):
        effdl.apply(task_for(no_stats, digits), cfg("quantize.ptq", num_batches=1, batch_size=16))


# -- 6 ---------------------------------------------------------------------------------------------------
def depthwise(c=8):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                         nn.Conv2d(c, c, 3, padding=1, groups=c), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10)).eval()


def test_catalogue_06_depthwise_and_grouped_conv(digits):
    from effdl.compress.quantize.bn_fold import fold_batchnorm

    model = depthwise()
    randomise_stats(model[1])
    # the depthwise conv's channels are the first conv's, which protect_first keeps: nothing left, said so
    with pytest.raises(ConfigError, match=r"no prunable channel group.*protected: '0', '7'.*set protect_first=False"):
        effdl.apply(model, cfg("prune.channels", ratio=0.5, input_shape=DIGITS))
    out = effdl.apply(model, cfg("prune.channels", ratio=0.5, protect_first=False, input_shape=DIGITS))
    dw = out[3]
    assert (out[0].out_channels, dw.in_channels, dw.out_channels, dw.groups, tuple(dw.weight.shape)) == (4, 4, 4, 4, (4, 1, 3, 3))
    assert out(torch.randn(2, *DIGITS)).shape == (2, 10)
    # a BN after a depthwise conv folds per output channel, exactly
    dwbn = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), randomise_stats(nn.BatchNorm2d(4))).eval()
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(fold_batchnorm(dwbn)(x), dwbn(x), rtol=1e-4, atol=1e-5)
    # per-channel 4-bit weights: one scale per depthwise filter, at most 16 values in each
    q = effdl.apply(model, cfg("quantize.weights", bits=4, granularity="channel"))
    assert q.parts["3"]["scale"].numel() == 8
    assert all(len(torch.unique(f)) <= 16 for f in q.model[3].weight)
    # static INT8 runs the depthwise conv in int8
    p = effdl.apply(task_for(model, digits), cfg("quantize.ptq", num_batches=1, batch_size=16))
    assert "3" in p.quantized_modules
    # lowrank.tucker does not decompose grouped convs: skipped, with the reason recorded
    t = effdl.apply(model, cfg("lowrank.tucker"))
    assert "groups=8" in records(t)["lowrank.tucker"].skipped["3"]


# -- 7 ---------------------------------------------------------------------------------------------------
def test_catalogue_07_pruning_that_would_empty_a_layer():
    model = mlp()
    with torch.no_grad():
        model[2].weight.mul_(1e-4)  # every weight of '2' is below every other layer's
    biggest = int(model[2].weight.abs().argmax())
    with pytest.warns(UserWarning, match="global pruning would empty '2'; keeping its largest weight"):
        out = effdl.apply(model, cfg("prune.magnitude", sparsity=0.6))
    kept = out[2].weight.flatten().nonzero().flatten().tolist()
    assert kept == [biggest]
    # structured pruning at 90% keeps at least one unit per layer; 100% is refused
    ch = effdl.apply(mlp(), cfg("prune.channels", ratio=0.9, input_shape=(8,)))
    assert [m.out_features for m in ch if isinstance(m, nn.Linear)] == [16, 2, 4]
    with pytest.raises(ConfigError, match=r"ratio 1.0 would remove every unit.*use a ratio < 1"):
        cfg("prune.channels", ratio=1.0)
    # a per-layer ratio above 1 - 1/n is lowered so a layer of n weights keeps one
    tiny = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 2))
    out = effdl.apply(tiny, cfg("prune.weights", sparsity=0.99, distribution="uniform"))
    assert int((out[0].weight != 0).sum()) == 1 and int((out[2].weight != 0).sum()) == 1


# -- 8 ---------------------------------------------------------------------------------------------------
def test_catalogue_08_sparsity_out_of_range_and_zero(tmp_path):
    model = mlp()
    with torch.no_grad():
        model[0].weight[0, 0] = -0.0  # a negative zero must survive a no-op bit for bit
    for name, kw in (("prune.magnitude", {"sparsity": 0.0}), ("prune.weights", {"sparsity": 0.0}),
                     ("prune.channels", {"ratio": 0.0, "input_shape": (8,)})):
        out = effdl.apply(model, cfg(name, **kw))
        ref = model.state_dict()
        assert out.state_dict().keys() == ref.keys(), name
        assert all(same_bits(v, ref[k]) for k, v in out.state_dict().items()), name
    for value, words in ((1.0, "less than 1 (got 1.0)"), (1.5, "less than 1 (got 1.5)"),
                         (-0.1, "greater than or equal to 0 (got -0.1)"), (float("nan"), "less than 1 (got nan)")):
        for name in ("prune.magnitude", "prune.weights"):
            with pytest.raises(ConfigError, match=r"\.sparsity: Input should be") as info:
                cfg(name, sparsity=value)
            assert words in str(info.value)
    with pytest.raises(ConfigError, match=r"SparseTrainingConfig.sparsity: Input should be less than 1 \(got 1.0\)"):
        cfg("prune.sparse_training", sparsity=1.0)
    out_dir = tmp_path / "out"
    r = cli("apply", str(write_recipe(tmp_path, "- {technique: prune.magnitude, sparsity: 1.5}\n")),
            "--model", "zoo:mlp", "--data", "digits", "--out", str(out_dir))
    _assert_clean_error(r, "MagnitudeConfig.sparsity: Input should be less than 1 (got 1.5)")
    assert_nothing_written(out_dir)


# -- 9 ---------------------------------------------------------------------------------------------------
def test_catalogue_09_bit_widths(tmp_path):
    from effdl.compress.quantize.scheme import QScheme

    for bits, words in ((0, "bits=0 is not a uniform integer grid"), (1, "bits=1 is not a uniform integer grid"),
                        (17, "bits=17 is wider than 16"), (2.5, "whole number of bits (2..16), not float")):
        for make in (lambda b: cfg("quantize.weights", bits=b), lambda b: cfg("quantize.weights", bits=b, mode="affine"),
                     lambda b: QScheme(bits=b, mode="affine"), lambda b: cfg("quantize.qat", bits=b),
                     lambda b: cfg("quantize.mixed", choices=(b, 8), budget_bits_per_weight=6.0)):
            with pytest.raises(ConfigError) as info:
                make(bits)
            assert words in str(info.value)
    # each message carries its fix
    with pytest.raises(ConfigError, match=r"quantize.binary\); use bits >= 2"):
        cfg("quantize.weights", bits=1, mode="affine")
    with pytest.raises(ConfigError, match=r"keep the tensor in float \(fp32, or fp16/bf16 via quantize.float\)"):
        cfg("quantize.weights", bits=17)
    with pytest.raises(ConfigError, match="e.g. bits=4"):
        cfg("quantize.weights", bits=2.5)
    with pytest.raises(ConfigError, match="supports bits=8 only.*Use bits=8"):
        cfg("quantize.ptq", bits=4)
    # the narrowest valid affine grid works: 2 bits, at most 4 values per output channel, and the model
    # runs exactly the weights its stored codes decode to
    from effdl.compress.quantize.weight_only import dequantize_weight

    config = cfg("quantize.weights", bits=2, mode="affine", granularity="channel")
    q = effdl.apply(mlp(), config)
    assert all(len(torch.unique(row)) <= 4 for row in q.model[2].weight)
    assert same_bits(dequantize_weight(q.parts["2"], q.model[2].weight.shape, config), q.model[2].weight.detach())
    out_dir = tmp_path / "out"
    r = cli("apply", str(write_recipe(tmp_path, "- {technique: quantize.weights, bits: 17}\n")),
            "--model", "zoo:mlp", "--data", "digits", "--out", str(out_dir))
    _assert_clean_error(r, "bits=17 is wider than 16", "quantize.float")
    assert_nothing_written(out_dir)


# -- 10 --------------------------------------------------------------------------------------------------
def test_catalogue_10_nan_inf_weights(tmp_path, digits):
    from safetensors.torch import save_file

    model = digits_mlp()
    with torch.no_grad():
        model[3].weight[0, 0] = float("nan")
        model[5].weight[1, 2] = float("inf")
    for name, kw, named in (
        ("prune.magnitude", {}, "layers '3', '5' have NaN/Inf weights"),
        ("prune.weights", {}, "layers '3', '5' have NaN/Inf weights"),
        ("prune.channels", {"input_shape": DIGITS}, "parameters '3.weight', '5.weight' have NaN/Inf values"),
        ("lowrank.svd", {"keep_last": False}, "NaN/Inf in the weights of module(s) '3', '5'"),
        ("lowrank.tt", {"keep_last": False}, "NaN/Inf in the weights of module(s) '3', '5'"),
        ("quantize.weights", {}, "NaN/Inf in the weights of module(s) '3', '5'"),
        ("quantize.float", {}, "NaN/Inf in the weights of module(s) '3', '5'"),
        ("share.cluster", {}, "layers '3', '5' have NaN/Inf weights"),
    ):
        with pytest.raises(ConfigError) as info:
            effdl.apply(model, cfg(name, **kw))
        assert named in str(info.value), name
        assert "retrain, or lower the learning rate" in str(info.value), name
    with pytest.raises(ConfigError, match=r"quantize.ptq: NaN/Inf in the weights of module\(s\) '3', '5'.*Fix the checkpoint"):
        effdl.apply(task_for(model, digits), cfg("quantize.ptq"))
    # measuring such a model is a recorded failure naming the modules, not a crash
    m = effdl.measure(task_for(model, digits), batch_sizes=(1,))
    assert m["status"] == "failed" and "outputs are NaN/Inf" in m["reason"]
    assert m["reason"].endswith("the weights of module(s) '3', '5' hold NaN/Inf: fix the checkpoint (retrain, or "
                                "lower the learning rate)")
    # the command line: NaN weights loaded from a file
    spec = write_factory(tmp_path, """
        def make():
            return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 10))
    """)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "nan.safetensors"))
    out_dir = tmp_path / "out"
    r = cli("apply", str(write_recipe(tmp_path, "- {technique: prune.magnitude, sparsity: 0.5}\n")), "--model", spec,
            "--data", "digits", "--weights", str(tmp_path / "nan.safetensors"), "--out", str(out_dir))
    _assert_clean_error(r, "layers '3', '5' have NaN/Inf weights", "fix the model before pruning")
    assert_nothing_written(out_dir)


# -- 11 --------------------------------------------------------------------------------------------------
class _Calibration:
    """The task with its calibration batches replaced (what a user's own Task could return)."""

    def __init__(self, task, batches):
        self.task, self.batches = task, batches

    def calibration_batches(self, n, batch_size=32):
        return self.batches

    def __getattr__(self, name):
        return getattr(self.task, name)


def test_catalogue_11_degenerate_calibration_data(digits):
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10)).eval()
    x = torch.stack([digits.test[i][0] for i in range(32)])
    n = len(digits.train)
    for fill, shown in ((0.0, "(0)"), (0.5, "(0.5)")):  # all-zero and constant train splits
        const = TensorDataset(torch.full((n, *DIGITS), fill), torch.zeros(n, dtype=torch.long))
        with pytest.warns(RuntimeWarning, match=rf"calibration saw a constant value {re.escape(shown)}.*Use calibration "
                          "data that varies"):
            q = effdl.apply(task_for(model, digits, train=const), cfg("quantize.ptq", num_batches=1))
        with torch.no_grad():
            assert bool(torch.isfinite(q(x)).all()) and q(x).shape == (32, 10)
    # one sample: calibrated on it, and the result runs at any batch size
    one = TensorDataset(digits.train[0][0][None], torch.tensor([int(digits.train[0][1])]))
    q = effdl.apply(task_for(model, digits, train=one), cfg("quantize.ptq"))
    assert [tuple(b.shape) for b in q.calibration] == [(1, *DIGITS)]
    with torch.no_grad():
        assert q(x[:1]).shape == (1, 10) and q(x).shape == (32, 10)
        assert (q(x) - model(x)).abs().max() < 0.5 * model(x).abs().max()
    # no samples at all: a DataError naming the fix, never an IndexError
    task = task_for(model, digits)
    with pytest.raises(DataError, match=r"calibration_batches gave no batch: give it real inputs"):
        effdl.apply(model, cfg("quantize.ptq"), task=_Calibration(task, []))
    with pytest.raises(DataError, match=r"calibration batch 0 is empty \(0 samples\)"):
        effdl.apply(model, cfg("quantize.ptq"), task=_Calibration(task, [x[:0]]))
    with pytest.raises(DataError, match=r"the train split is empty: pass a non-empty torch Dataset"):
        task_for(model, digits, train=TensorDataset(torch.zeros(0, *DIGITS), torch.zeros(0, dtype=torch.long)))


# -- 12 --------------------------------------------------------------------------------------------------
def test_catalogue_12_corrupted_or_truncated_checkpoint(tmp_path, digits):
    from effdl.core.io import MANIFEST, save_tensors, sha256_file
    from effdl.deploy.storage import load_compact, save_compact
    from effdl.zoo import build, load_model

    model = build("mlp", input_shape=DIGITS, num_classes=10, hidden=(32, 16))
    w = save_tensors(model.state_dict(), tmp_path / "w.safetensors")
    blob = w.read_bytes()
    (tmp_path / MANIFEST).write_text(json.dumps({"steps": [], "sha256": {w.name: sha256_file(w)}}))
    # with the sha256 effdl recorded beside it, the hash is checked before anything parses the file
    flipped = bytearray(blob)
    flipped[-3] ^= 0x01  # one bit of one weight: safetensors alone would load it silently
    for bad in (bytes(flipped), blob[: len(blob) // 2]):
        w.write_bytes(bad)
        with pytest.raises(ArtifactError, match=r"does not match the sha256 recorded in recipe.json.*Re-export it"):
            load_model("zoo:mlp", digits, weights=str(w))
    # without a manifest, a truncated file is still refused by name, never half-loaded
    (tmp_path / MANIFEST).unlink()
    with pytest.warns(UserWarning, match="integrity is not checked"):
        with pytest.raises(ArtifactError, match=r"is corrupt or truncated.*re-export it with safetensors"):
            load_model("zoo:mlp", digits, weights=str(w))
    c = tmp_path / "c.safetensors"
    save_compact(dict(model.state_dict()), c)
    c.write_bytes(c.read_bytes()[:300])
    with pytest.raises(ArtifactError, match=r"c.safetensors' is corrupt or truncated .*: re-save it"):
        load_compact(c)
    # the command line, on the truncated file with its manifest
    w.write_bytes(blob[: len(blob) // 2])
    (tmp_path / MANIFEST).write_text(json.dumps({"steps": [], "sha256": {w.name: hashlib.sha256(blob).hexdigest()}}))
    r = cli("measure", "--model", "zoo:mlp", "--data", "digits", "--weights", str(w))
    _assert_clean_error(r, "does not match the sha256 recorded in recipe.json", "Re-export it")


# -- 13 --------------------------------------------------------------------------------------------------
class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_catalogue_13_malicious_pickle(tmp_path, digits):
    from effdl.zoo import load_model

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"state_dict": _Evil(str(marker))}))
    with pytest.raises(UnsafeArtifactError, match=r"pickle-based checkpoint.*convert it to .safetensors.*--allow-pickle"):
        load_model("zoo:mlp", digits, weights=str(evil))
    assert not marker.exists()
    # even when allowed, the load is weights-only: the payload is refused and never runs, and the message
    # does not pass on torch's advice to retry with weights_only=False
    with pytest.raises(ArtifactError, match=r"cannot read .* as a weights-only checkpoint \(UnpicklingError: .*"
                       r"which effdl never unpickles\. Fix: save a plain state dict of tensors") as info:
        load_model("zoo:mlp", digits, weights=str(evil), allow_pickle=True)
    assert "weights_only" not in str(info.value)
    assert not marker.exists()
    r = cli("measure", "--model", "zoo:mlp", "--data", "digits", "--weights", str(evil))
    _assert_clean_error(r, "pickle", "--allow-pickle")
    assert not marker.exists()


# -- 14 --------------------------------------------------------------------------------------------------
class TokenModel(nn.Module):
    """Wants integer token ids, gets float pixels."""

    def __init__(self):
        super().__init__()
        self.emb, self.fc = nn.Embedding(17, 4), nn.Linear(4 * 64, 10)

    def forward(self, x):
        return self.fc(self.emb(x.flatten(1)).flatten(1))


class FixedBatch(nn.Module):
    """Written for batches of exactly 2."""

    def __init__(self, expand=False):
        super().__init__()
        self.fc, self.expand = nn.Linear(64, 10), expand

    def forward(self, x):
        return self.fc(x.flatten(1)).expand(2, 10) if self.expand else self.fc(x.reshape(2, 64))


def test_catalogue_14_wrong_input_shape_dtype_dynamic_axes(tmp_path, digits):
    import onnxruntime as ort

    from effdl.deploy.onnx_export import export_onnx

    with pytest.raises(ModelError, match=r"forward fails on the data's input shape \(2, 1, 8, 8\).*Fix: build the model"):
        task_for(nn.Linear(10, 10), digits)
    with pytest.raises(ModelError, match=r"\(torch.float32\).*indices.*Fix: build the model for this input"):
        task_for(TokenModel(), digits)
    with pytest.raises(ModelError, match=r"outputs shape \(2, 7\) but the data has 10 classes"):
        task_for(nn.Sequential(nn.Flatten(), nn.Linear(64, 7)), digits)
    # a batch axis that is not dynamic (a hard-coded batch size) is named when the task is built
    with pytest.raises(ModelError, match=r"runs on a batch of 2 but not on a batch of 1 \(RuntimeError: shape '\[2, 64\]'"
                       r".*hard-coded batch size\?.*Fix: make forward work for any batch size"):
        task_for(FixedBatch(), digits)
    with pytest.raises(ModelError, match=r"not on a batch of 1 \(it returns shape \(2, 10\) for one sample\)"):
        task_for(FixedBatch(expand=True), digits)
    model = digits_mlp()
    task = task_for(model, digits)
    with pytest.raises(DataError, match=r"shape \(64,\), expected \(1, 8, 8\).*make the calibration data match"):
        effdl.apply(model, cfg("quantize.ptq"), task=_Calibration(task, [torch.rand(8, 64)]))
    # dynamic axes: a size-1 example on a dynamic axis is refused; the batch axis stays dynamic in the export
    with pytest.raises(UnsupportedModuleError, match=r"dynamic axes \[1\] have size 1.*length >= 2"):
        export_onnx(model, torch.randn(2, *DIGITS), tmp_path / "bad.onnx", {0: "batch", 1: "channels"})
    assert not (tmp_path / "bad.onnx").exists()
    path = export_onnx(model, task.example_input(1), tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b in (1, 7):
        x = task.example_input(b)
        got = torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])
        with torch.no_grad():
            torch.testing.assert_close(got, model(x), rtol=1e-4, atol=1e-5)
    r = cli("measure", "--model", write_factory(tmp_path, """
        class FixedBatch(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(64, 10)

            def forward(self, x):
                return self.fc(x.reshape(2, 64))

        def make():
            return FixedBatch()
    """), "--data", "digits")
    _assert_clean_error(r, "runs on a batch of 2 but not on a batch of 1", "Fix: make forward work for any batch size")


# -- 15 --------------------------------------------------------------------------------------------------
def test_catalogue_15_model_left_in_train_mode_while_measuring(trained, digits):
    from effdl.metrics.measure import fixed_batch

    torch.manual_seed(0)
    # a trained digits MLP with a BatchNorm and a Dropout after it, left in train mode
    model = nn.Sequential(*copy.deepcopy(list(trained.model)), nn.BatchNorm1d(10), nn.Dropout(0.5))
    with torch.no_grad():
        model[-2].running_mean.uniform_(-0.1, 0.1)
        model[-2].running_var.uniform_(0.5, 2.0)
    model.train()
    model[1].eval()  # a submodule the caller set apart keeps its own flag too
    flags = [m.training for m in model.modules()]
    task = task_for(model, digits)
    assert [m.training for m in model.modules()] == flags  # building the task left the flags alone
    got = effdl.measure(task, batch_sizes=(1, 8))
    # measured in eval mode (no dropout, running statistics; batch 1 through a train-mode BatchNorm
    # would fail), so the numbers are the eval model's, exactly (evaluated in the same batches of 8)
    want = task.evaluate(fixed_batch(copy.deepcopy(model).eval(), 8), "test")
    assert got["status"] == "ok" and got["reason"] is None
    assert got["quality"] == want and want["accuracy"] > 0.8
    assert [m.training for m in model.modules()] == flags  # and the caller's model is left as it was


# -- 16 --------------------------------------------------------------------------------------------------
def test_catalogue_16_half_precision_channels_last_non_contiguous(tmp_path, digits):
    from effdl.metrics.measure import static_footprint

    for dtype, name in ((torch.float16, "float16"), (torch.bfloat16, "bfloat16")):
        with pytest.raises(ModelError, match=rf"holds {name} tensors .*Fix: pass model.float\(\)"):
            task_for(digits_mlp().to(dtype), digits)
        with pytest.raises(UnsupportedModuleError, match=r"share.cluster needs float32: call model.float\(\)"):
            effdl.apply(mlp().to(dtype), cfg("share.cluster"))
    half = effdl.apply(mlp().half(), cfg("prune.magnitude", sparsity=0.5, scope="layer"))
    assert all(m.weight.dtype == torch.float16 and float((m.weight == 0).float().mean()) == 0.5
               for m in half if isinstance(m, nn.Linear))
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 10)).eval()
    channels_last = copy.deepcopy(ref).to(memory_format=torch.channels_last)
    assert not channels_last[2].weight.is_contiguous()
    strided = copy.deepcopy(ref)
    strided[6].weight = nn.Parameter(ref[6].weight.detach().t().contiguous().t())  # same values, transposed strides
    assert not strided[6].weight.is_contiguous()
    for name, kw in (("prune.magnitude", {"sparsity": 0.5}), ("quantize.weights", {"bits": 4}),
                     ("share.cluster", {"bits": 2}), ("lowrank.svd", {"rank": 2, "keep_last": False})):
        want = effdl.apply(ref, cfg(name, **kw)).state_dict()
        for variant in (channels_last, strided):
            got = effdl.apply(variant, cfg(name, **kw)).state_dict()
            assert got.keys() == want.keys(), name
            assert all(same_bits(got[k], want[k]) for k in want), name
    ref_task = task_for(ref, digits)
    want = static_footprint(ref, ref_task, tmp_path / "ref.safetensors")
    for i, variant in enumerate((channels_last, strided)):
        got = static_footprint(variant, task_for(variant, digits), tmp_path / f"{i}.safetensors")
        assert got == want
        assert (tmp_path / f"{i}.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()
    m = effdl.measure(task_for(channels_last, digits), batch_sizes=(1,))
    assert m["status"] == "ok" and m["footprint"]["size_bytes"] == want["size_bytes"]
    # a channels_last conv may round differently in the last bit: the same predictions up to a rare tie
    assert m["quality"]["accuracy"] == pytest.approx(ref_task.evaluate(ref, "test")["accuracy"], abs=0.01)


# -- 17 --------------------------------------------------------------------------------------------------
def test_catalogue_17_scope_pattern_matching_nothing(tmp_path, digits):
    model = digits_mlp()
    for name, kw in (("prune.magnitude", {"exclude": ("classifer",)}), ("prune.weights", {"exclude": ("classifer",)}),
                     ("prune.channels", {"protect": ("classifer",), "input_shape": DIGITS}),
                     ("lowrank.svd", {"layers": ("classifer",)}), ("lowrank.svd", {"exclude": ("classifer",)}),
                     ("lowrank.tt", {"exclude": ("classifer",)}), ("quantize.weights", {"exclude": ("classifer",)}),
                     ("quantize.float", {"exclude": ("classifer",)}), ("share.cluster", {"layers": ("classifer",)})):
        with pytest.raises(ConfigError, match=r"scope pattern 'classifer' matches no module\. Module names: 0, 1, 2"):
            effdl.apply(model, cfg(name, **kw))
    with pytest.raises(ConfigError, match=r"'fc' matches no module\."):
        effdl.apply(task_for(model, digits), cfg("quantize.ptq", exclude=("fc",)))
    out_dir = tmp_path / "out"
    r = cli("apply", str(write_recipe(tmp_path, "- {technique: prune.magnitude, sparsity: 0.5, exclude: ['classifer']}\n")),
            "--model", write_factory(tmp_path, """
                def make():
                    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
            """), "--data", "digits", "--out", str(out_dir))
    _assert_clean_error(r, "scope pattern 'classifer' matches no module", "Module names: 0, 1, 2, 3")
    assert_nothing_written(out_dir)


# -- 18 --------------------------------------------------------------------------------------------------
def test_catalogue_18_same_technique_twice(digits):
    model = mlp()
    x = torch.randn(4, 8)
    for name, kw in (("prune.magnitude", {"sparsity": 0.5}), ("prune.weights", {"sparsity": 0.5, "granularity": "n:m"})):
        once = effdl.apply(model, cfg(name, **kw))
        twice = effdl.apply(once, cfg(name, **kw))
        assert all(same_bits(a, b) for a, b in zip(once.state_dict().values(), twice.state_dict().values())), name
    once = effdl.apply(model, cfg("lowrank.svd", rank=2, keep_last=False))
    twice = effdl.apply(once, cfg("lowrank.svd", rank=2, keep_last=False))
    with torch.no_grad():
        assert torch.equal(twice(x), once(x))
    assert not records(twice)["lowrank.svd"].layers
    # structured pruning twice prunes the remaining units again (the middle layer 16 -> 8 -> 4)
    ch = effdl.apply(effdl.apply(model, cfg("prune.channels", ratio=0.5, input_shape=(8,))),
                     cfg("prune.channels", ratio=0.5, input_shape=(8,)))
    assert [m.out_features for m in ch if isinstance(m, nn.Linear)] == [16, 4, 4]  # first and last protected
    # what cannot be applied twice is refused with the fix
    with pytest.raises(ConfigError, match=r"layer '0' is already clustered: apply share.cluster once per layer"):
        effdl.apply(effdl.apply(model, cfg("share.cluster", bits=2)), cfg("share.cluster", bits=2))
    for name in ("quantize.weights", "quantize.float"):
        with pytest.raises(ConfigError, match=rf"already quantized .*apply {name} to the float model"):
            effdl.apply(effdl.apply(model, cfg(name)), cfg(name))
    task = task_for(digits_mlp(), digits)
    with pytest.raises(ConfigError, match="already quantized"):
        effdl.apply(effdl.apply(task, cfg("quantize.ptq", mode="dynamic")), cfg("quantize.ptq"), task=task)


# -- 19 --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def failing_run(trained, tmp_path_factory):
    """optimize over five candidates: one raising, one out of memory, one with NaN outputs, two good."""
    from effdl.core import registry
    from effdl.pipeline.recipe import Recipe
    from effdl.pipeline.strategies import CandidateSpec

    def raises(model, config, task=None):
        raise RuntimeError("simulated: no kernel for this layer")

    def out_of_memory(model, config, task=None):
        raise torch.OutOfMemoryError("simulated: CUDA out of memory")

    def nan(model, config, task=None):
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float("nan"))
        return model

    out = tmp_path_factory.mktemp("failing")
    with pytest.MonkeyPatch.context() as mp:
        for name, fn in (("quantize.float", raises), ("lowrank.tt", out_of_memory), ("share.cluster", nan)):
            real = registry._BY_NAME[name]
            broken = registry.Technique(real.name, real.config, fn, real.needs, real.summary, real.tasks, real.models,
                                        real.example, real.takes_quantized)
            mp.setitem(registry._BY_NAME, name, broken)
            mp.setitem(registry._BY_TYPE, real.config, broken)
        specs = [CandidateSpec("c00", "baseline", Recipe(())),
                 CandidateSpec("c01", "raises", Recipe((cfg("quantize.float"),))),
                 CandidateSpec("c02", "out of memory", Recipe((cfg("lowrank.tt"),))),
                 CandidateSpec("c03", "NaN outputs", Recipe((cfg("share.cluster"),))),
                 CandidateSpec("c04", "prune 50%", Recipe((cfg("prune.magnitude", sparsity=0.5),)))]
        res = effdl.optimize(trained, effdl.Goal(max_drop=0.05, target="size"), out_dir=out, candidates=specs,
                             measure=effdl.MeasureSettings(repeats=3, runtimes=("eager",)))
    return out, res


def test_catalogue_19_candidate_raises_nan_or_out_of_memory(failing_run):
    out, res = failing_run
    by_id = {c.id: c for c in res.candidates}
    assert list(by_id) == ["c00", "c01", "c02", "c03", "c04"]  # every candidate recorded, in order
    assert by_id["c01"].status == "failed"
    assert by_id["c01"].reason == "building the candidate failed: RuntimeError: simulated: no kernel for this layer"
    assert by_id["c02"].status == "failed"
    assert by_id["c02"].reason == "building the candidate failed: OutOfMemoryError: simulated: CUDA out of memory"
    assert by_id["c03"].status == "failed" and "outputs are NaN/Inf" in by_id["c03"].reason
    assert "the weights of module(s) '1', '3', '5' hold NaN/Inf" in by_id["c03"].reason
    # the study went on: the candidates after the failures were measured and one was chosen
    assert by_id["c00"].ok and by_id["c04"].ok and res.chosen == "c04"
    assert by_id["c04"].footprint.nonzero_params < 0.55 * by_id["c04"].footprint.params
    saved = effdl.Results.load(out / "results.json")
    assert [c.status for c in saved.candidates] == ["ok", "failed", "failed", "failed", "ok"]
    assert (out / "model" / "model.safetensors").is_file()


# -- 20 --------------------------------------------------------------------------------------------------
KILLED_SAVE = textwrap.dedent("""
    import sys, time
    import safetensors.torch
    import torch
    from effdl.deploy.storage import save_compact

    real = safetensors.torch.save_file

    def half_then_hang(tensors, path, metadata=None):
        real(tensors, path, metadata=metadata)
        with open(path, "r+b") as f:  # the file as it is half-way through the write
            f.truncate(len(f.read()) // 2)
        print("half", flush=True)
        time.sleep(120)

    safetensors.torch.save_file = half_then_hang
    save_compact({"w": torch.full((1000, 100), 2.0)}, sys.argv[1])
""")


def test_catalogue_20_sigkill_during_save(tmp_path):
    """SIGKILL in the middle of writing the model file: the name only ever shows a whole file. (The
    search/optimize side, killed and resumed, is tests/test_resume_kill.py and test_fault_injection.py.)"""
    from effdl.core.io import sha256_file
    from effdl.deploy.storage import load_compact, save_compact

    path = tmp_path / "model.safetensors"
    save_compact({"w": torch.ones(1000, 100)}, path)  # the previous, complete version
    before = sha256_file(path)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(path)], stdout=subprocess.PIPE, text=True,
                            env=ENV)
    guard = threading.Timer(120, proc.kill)  # never hang the suite if the child dies or stalls before "half"
    guard.start()
    try:
        line = proc.stdout.readline()  # the temporary file is half-written now
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        guard.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
    assert line.strip() == "half" and proc.returncode == -signal.SIGKILL
    assert sha256_file(path) == before and torch.equal(load_compact(path)["w"], torch.ones(1000, 100))
    visible = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert visible == ["model.safetensors"]  # the half-written file is a hidden temporary, never the name
    save_compact({"w": torch.full((1000, 100), 2.0)}, path)  # the next run writes it whole
    assert torch.equal(load_compact(path)["w"], torch.full((1000, 100), 2.0))


# -- 21 --------------------------------------------------------------------------------------------------
def test_catalogue_21_artifact_names_with_dotdot_or_absolute(failing_run, tmp_path):
    import shutil

    from effdl.core.io import safe_child

    for name in ("../escape.safetensors", "a/../../escape", "/etc/passwd"):
        with pytest.raises(UnsafeArtifactError, match="is absolute or contains '..': use a plain relative name"):
            safe_child(tmp_path, name)
    assert safe_child(tmp_path, "candidates/c01/model.safetensors") == tmp_path / "candidates/c01/model.safetensors"
    src, _ = failing_run
    for escape in ("../../outside.safetensors", "/etc/passwd"):
        run = tmp_path / f"run{len(escape)}"
        shutil.copytree(src, run)
        data = json.loads((run / "results.json").read_text())
        data["candidates"][4]["artifacts"]["model"] = escape
        (run / "results.json").write_text(json.dumps(data))
        (run / "report.html").unlink()
        with pytest.raises(ArtifactError, match=r"absolute or contains '\.\.': artifacts live inside the output directory"):
            effdl.Results.load(run / "results.json")
    r = cli("report", str(run))
    _assert_clean_error(r, "absolute or contains '..'", "artifacts live inside the output directory")
    assert not (run / "report.html").exists()


# -- 22 --------------------------------------------------------------------------------------------------
class Huge(nn.Module):
    """A real forward on a small layer plus a table of ``numel`` float32s on the meta device (no memory)."""

    def __init__(self, numel):
        super().__init__()
        self.fc = nn.Linear(64, 10)
        self.table = nn.Parameter(torch.empty(numel, device="meta"))

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_catalogue_22_onnx_over_2gb(tmp_path, digits):
    from effdl.deploy.onnx_export import check_size, export_onnx
    from effdl.deploy.runtimes import lower

    big = Huge(600_000_000).eval()  # 2.24 GiB of float32
    with pytest.raises(ArtifactError, match=r"take 2\.24 GiB, over the 2 GB single-file ONNX limit.*use the eager or compile runtime"):
        check_size(big)
    with pytest.raises(ArtifactError, match="over the 2 GB single-file ONNX limit"):
        export_onnx(big, torch.randn(2, *DIGITS), tmp_path / "big.onnx")
    task = task_for(big, digits)
    with pytest.raises(ArtifactError, match="over the 2 GB single-file ONNX limit"):
        lower(big, "ort", task=task, workdir=tmp_path / "ort", threads=1, batch_sizes=(1, 2))
    assert not list(tmp_path.rglob("*.onnx"))  # refused before any work: nothing written
    check_size(Huge(250_000_000))  # 0.93 GiB: under the limit, no error
    eager = lower(big, "eager", task=task, workdir=tmp_path / "eager", threads=1, batch_sizes=(1, 2))
    assert eager.predict(task.example_input(2)).shape == (2, 10)  # the runtime the message names works
