"""Runtimes: eager / torch.compile / ONNX Runtime lowerings agree with the source model.

Real data (scikit-learn digits via effdl.data); a small LeNet-5-like CNN and an MLP defined here
(test_ptq and test_parity reuse them). torch.compile is slow on 2 cores: it compiles exactly the
two models below, once each, through module-scoped fixtures.
"""
from __future__ import annotations

import math
from pathlib import Path

import onnx
import pytest
import torch
import torch.nn as nn

from effdl.core.errors import ConfigError, UnsupportedModuleError
from effdl.core.tasks import ImageClassification
from effdl.deploy.parity import check_parity, parity_inputs
from effdl.deploy.runtimes import RUNTIMES, Lowered, lower, runtimes_for

RTOL, ATOL = 1e-3, 1e-5  # REFERENCE.md: lossless rewrites across runtimes


class SmallCNN(nn.Module):
    """LeNet-5-like for 8x8 digits: conv-BN-ReLU-pool, conv-ReLU-pool, two Linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 2 * 2, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def small_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def trained_task(factory, digits, epochs: float = 15) -> ImageClassification:
    """``factory()`` trained on digits; seeded before the weights are drawn and trained on one
    thread, so the model is the same whatever ran before (multi-threaded conv backward sums in a
    varying order)."""
    torch.manual_seed(0)
    model = factory()
    task = ImageClassification(model, digits.train, digits.val, digits.test, num_classes=digits.num_classes)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        task.train(model, epochs=epochs, lr=3e-3)
    finally:
        torch.set_num_threads(before)
    return task


@pytest.fixture(scope="module")
def tasks(digits):
    torch.manual_seed(0)
    return {"cnn": trained_task(SmallCNN, digits, epochs=3), "mlp": trained_task(small_mlp, digits, epochs=3)}


@pytest.fixture(scope="module")
def lowered(tasks, tmp_path_factory):
    """Every float lowering of both models, built once (compile is the slow part)."""
    out = {}
    for name, task in tasks.items():
        wd = tmp_path_factory.mktemp(f"rt-{name}")
        for rt in ("eager", "compile", "ort"):
            out[name, rt] = lower(task.model, rt, task=task, workdir=wd, threads=2, batch_sizes=(1, 32))
    return out


@pytest.mark.parametrize("model_name", ["cnn", "mlp"])
@pytest.mark.parametrize("runtime", ["eager", "compile", "ort"])
def test_float_lowerings_are_lossless_at_batch_1_and_32(tasks, lowered, model_name, runtime):
    task, low = tasks[model_name], lowered[model_name, runtime]
    assert (low.runtime, low.precision, low.lossless) == (runtime, "fp32", True)
    inputs = parity_inputs(task, batch_sizes=(1, 32))
    res = check_parity(task.model, low, inputs, rtol=RTOL, atol=ATOL)
    assert res.ok, res.reason
    assert res.batch_sizes == [1, 32] and res.n_samples >= 256
    # the observed errors themselves, elementwise: |y - x| <= atol + rtol |x|
    for x in (inputs[0], inputs[-1]):
        with torch.inference_mode():
            ref, got = task.model(x), low.predict(x)
        assert got.dtype == torch.float32 and isinstance(got, torch.Tensor)
        torch.testing.assert_close(got, ref, rtol=RTOL, atol=ATOL)
    assert res.max_abs_err < 1e-4 and res.top1_agreement == 1.0
    assert low.info["threads"] == 2 and torch.get_num_threads() == 2


def test_compile_records_compile_time_and_freezing_is_scoped(lowered):
    from torch._inductor import config as inductor_config

    info = lowered["cnn", "compile"].info
    assert info["freezing"] is True and info["dynamic"] is False and info["compile_s"] > 0
    assert info["compiled_batch_sizes"] == [1, 32]
    assert inductor_config.freezing is False  # the global patch was restored


def test_ort_artifact_is_a_dynamic_batch_onnx_file(lowered, tasks):
    low = lowered["mlp", "ort"]
    assert low.artifact is not None and low.artifact.suffix == ".onnx" and low.artifact.is_file()
    proto = onnx.load(str(low.artifact))
    assert proto.opset_import[0].version >= 17
    dim0 = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value  # symbolic batch dimension
    assert not [p for p in low.artifact.parent.iterdir() if p.name.endswith(".tmp")]  # atomic write
    assert low.info["provider"] == "CPUExecutionProvider" and low.info["inter_op_threads"] == 1
    # a batch size it was not exported at runs too
    x = tasks["mlp"].example_input(5)
    torch.testing.assert_close(low.predict(x), tasks["mlp"].model(x).detach(), rtol=RTOL, atol=ATOL)


def test_runtimes_for_float_and_quantized(tasks):
    from effdl.compress.quantize.ptq import PTQConfig
    from effdl.core.registry import apply

    assert runtimes_for(tasks["mlp"].model) == ["eager", "compile", "ort"]
    q = apply(tasks["mlp"], PTQConfig(num_batches=2))
    assert runtimes_for(q) == ["pt2e-int8", "ort-int8", "ort-int8-s8s8"]
    # the sparse eager path is tried only where some Linear layer is at least half zeros
    from effdl.compress.prune import MagnitudeConfig

    sparse = apply(tasks["mlp"].model, MagnitudeConfig(sparsity=0.9))
    assert runtimes_for(sparse) == ["eager", "compile", "ort", "eager-sparse"]
    with pytest.raises(ConfigError, match="quantized model"):
        lower(q, "eager", task=tasks["mlp"], workdir=".", threads=2)
    with pytest.raises(ConfigError, match="quantize.ptq"):
        lower(tasks["mlp"].model, "pt2e-int8", task=tasks["mlp"], workdir=".", threads=2)
    assert set(RUNTIMES) >= {"eager", "compile", "ort", "pt2e-int8", "ort-int8"}


@pytest.mark.parametrize("name,hint", [("compiled", "compile"), ("ort_int8", "ort-int8"), ("eagre", "eager")])
def test_unknown_runtime_suggests_the_closest(tasks, tmp_path, name, hint):
    with pytest.raises(ConfigError, match=f"unknown runtime '{name}'. Did you mean '{hint}'"):
        lower(tasks["mlp"].model, name, task=tasks["mlp"], workdir=tmp_path)


@pytest.mark.parametrize("kw,match", [({"threads": 0}, "threads"), ({"threads": 1.5}, "threads"),
                                      ({"batch_sizes": ()}, "batch_sizes"), ({"batch_sizes": (0, 4)}, "batch_sizes")])
def test_bad_threads_or_batch_sizes(tasks, tmp_path, kw, match):
    with pytest.raises(ConfigError, match=match):
        lower(tasks["mlp"].model, "eager", task=tasks["mlp"], workdir=tmp_path, **kw)


def test_eager_puts_a_train_mode_model_in_eval(digits, tmp_path):
    model = SmallCNN().train()  # BN in train mode would use batch statistics
    task = ImageClassification(model, digits.train, digits.val, num_classes=10)
    model.train()
    low = lower(model, "eager", task=task, workdir=tmp_path)
    assert low.info["was_training"] is True and not model.training
    x = task.example_input(1)
    assert math.isfinite(float(low.predict(x).sum()))


def test_lowered_rejects_unknown_precision():
    with pytest.raises(ConfigError, match="precision"):
        Lowered("x", "int4", False, lambda x: x)


def test_reduced_precision_model_is_refused_with_the_fix(tasks, tmp_path):
    import copy

    model = copy.deepcopy(tasks["mlp"].model).to(torch.bfloat16)
    with pytest.raises(UnsupportedModuleError, match=r"bfloat16 tensors: call model.float\(\)"):
        lower(model, "eager", task=tasks["mlp"], workdir=tmp_path)


class _Huge(nn.Module):
    """A 2.4 GB buffer that costs no memory (an expanded view): the size check must fire first."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = small_mlp()
        self.register_buffer("table", torch.zeros(1).expand(600_000_000), persistent=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def test_onnx_over_2gb_is_refused_before_any_file_is_written(tasks, tmp_path):
    from effdl.core.errors import ArtifactError

    with pytest.raises(ArtifactError, match="2 GB single-file ONNX limit"):
        lower(_Huge(), "ort", task=tasks["mlp"], workdir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_ort_int8_lowerings_take_a_relative_workdir_and_leave_the_cwd_clean(digits_task, tmp_path, monkeypatch):
    # ORT's pre-processing runs in a temporary working directory; a relative workdir must still resolve
    from effdl import apply
    from effdl.compress.quantize import PTQConfig
    from effdl.deploy.runtimes import lower

    monkeypatch.chdir(tmp_path)
    q = apply(digits_task, PTQConfig(mode="dynamic"))
    low = lower(q, "ort-int8-dynamic", task=digits_task, workdir=Path("rel/wd"), threads=1, batch_sizes=(1, 4))
    assert not low.artifact.is_absolute() and (tmp_path / low.artifact).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rel"]  # nothing dumped in the cwd


def test_compiled_runtime_serves_unseen_shapes_with_one_dynamic_compile():
    """Timed shapes are compiled static up front; a text task's other evaluation shapes (lengths)
    go through one dynamic-shape compile, with the eager model's outputs."""
    from effdl.deploy.torch_runtime import _Compiled

    torch.manual_seed(0)
    emb = nn.Embedding(50, 16)
    model = nn.Sequential(emb, nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 4)).eval()
    up_front = torch.randint(0, 50, (1, 32))
    compiled = _Compiled(model, [up_front], threads=1)
    for length in (16, 48, 24, 32):
        x = torch.randint(0, 50, (3, length))
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)
    assert compiled.shapes == {((1, 32), torch.int64)}  # no static compile per new shape
    assert compiled.dynamic is not None and not compiled.dynamic_failed
