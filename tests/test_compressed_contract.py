"""The CompressedModel contract (core/compressed.py): every compressed form declares its runtime kind,
float reference and stored tensors, and runtimes, storage, measure and records select by it.

The expected runtime lists were recorded from the code before the contract (duck typing on
``float_model`` / ``config.mode`` / ``effdl_quantized``), so selecting by runtime kind changes none.
"""
import copy

import pytest
import torch
import torch.nn as nn

import effdl
from effdl.compress.quantize import (
    BinaryConfig, ExtremeQuantModel, FloatFormatConfig, FloatFormatModel, MixedConfig, MixedPrecisionModel,
    PTQConfig, QATConfig, QuantizedModel, TernaryConfig, WeightOnlyConfig, WeightOnlyModel,
)
from effdl.compress.share import ClusterConfig, ClusteredModel, clustered_layers
from effdl.core.compressed import CompressedModel, Int8Model, float_reference, runtime_kind, weight_format
from effdl.core.errors import ConfigError, ModelError
from effdl.core.forms import is_quantized
from effdl.core.records import Record, attach, records
from effdl.deploy.runtimes import runtimes_for
from effdl.deploy.storage import load_compact, model_tensors, save_compact
from effdl.metrics.measure import source_model

FP32 = ["eager", "compile", "ort"]
SPARSE = FP32 + ["eager-sparse"]  # a Linear layer at least half zeros
STATIC = ["pt2e-int8", "ort-int8", "ort-int8-s8s8"]

# name: (recipe steps, class, runtime kind, runtimes_for before the contract, attribute holding the float reference)
FORMS = {
    "ptq-static": ((PTQConfig(num_batches=2),), QuantizedModel, "int8-static", STATIC, "float_model"),
    "ptq-static-mse": ((PTQConfig(num_batches=2, calibration="mse"),), QuantizedModel, "int8-static",
                       ["pt2e-int8"], "float_model"),  # ONNX Runtime has no MSE calibrator
    "ptq-dynamic": ((PTQConfig(num_batches=2, mode="dynamic"),), QuantizedModel, "int8-dynamic",
                    ["torch-int8-dynamic", "ort-int8-dynamic"], "float_model"),
    "weights": ((WeightOnlyConfig(bits=4),), WeightOnlyModel, "float", FP32, "model"),
    "float-bf16": ((FloatFormatConfig(format="bf16"),), FloatFormatModel, "float", FP32 + ["bf16"], "model"),
    "float-fp16": ((FloatFormatConfig(format="fp16"),), FloatFormatModel, "float", FP32, "model"),
    "binary": ((BinaryConfig(),), ExtremeQuantModel, "float", FP32, "model"),
    "ternary": ((TernaryConfig(),), ExtremeQuantModel, "float", FP32, "model"),
    "mixed": ((MixedConfig(budget_bits_per_weight=4.0, keep_first_last=False),), MixedPrecisionModel, "float",
              FP32, "model"),
    "cluster": ((ClusterConfig(bits=3),), ClusteredModel, "float", FP32, "float_model"),
    "prune+cluster": ((effdl.prune.Magnitude(sparsity=0.9), ClusterConfig(bits=3, huffman=True)), ClusteredModel,
                      "float", SPARSE, "float_model"),
    "prune+weights": ((effdl.prune.Magnitude(sparsity=0.9), WeightOnlyConfig(bits=4)), WeightOnlyModel, "float",
                      SPARSE, "model"),
    "qat-w4": ((QATConfig(bits=4, epochs=0.2),), WeightOnlyModel, "float", FP32, "model"),
    "qat-int8": ((QATConfig(bits=8, epochs=0.2, activations=True),), QuantizedModel, "int8-static", STATIC,
                 "float_model"),
}


@pytest.fixture(scope="module")
def forms(digits_task):
    built = {}

    def get(name):
        if name not in built:
            torch.manual_seed(0)
            model = digits_task.model
            for step in FORMS[name][0]:
                model = effdl.apply(model, step, task=digits_task)
            built[name] = model
        return built[name]

    return get


@pytest.mark.parametrize("name", FORMS)
def test_each_form_declares_the_contract(name, forms, digits_task, tmp_path):
    _, cls, kind, runtimes, ref_attr = FORMS[name]
    model = forms(name)
    assert type(model) is cls and isinstance(model, CompressedModel) and is_quantized(model)
    assert runtime_kind(model) == kind and isinstance(model, Int8Model) == (kind != "float")
    assert runtimes_for(model) == runtimes
    # parity (measure_runtime) and FLOP/sparsity counts use exactly the float reference
    ref = float_reference(model)
    assert ref is getattr(model, ref_attr) and source_model(model) is ref
    assert not isinstance(ref, CompressedModel)
    if kind == "float":  # runs its decoded weights: the reference computes the same outputs
        x = digits_task.example_input(8)
        with torch.no_grad():
            assert torch.equal(ref.eval()(x), model.eval()(x))
    # what measure writes and what the compact file holds are the model's storage tensors
    stored = model.storage_tensors()
    assert set(model_tensors(model)) == set(stored)
    save_compact(model_tensors(model), tmp_path / "m.safetensors")
    assert set(load_compact(tmp_path / "m.safetensors")) == set(stored)


def test_int8_spec_is_the_quantized_model(forms):
    q = forms("ptq-static")
    spec = q.int8_spec()
    assert spec.torch_int8 is q.reference and spec.quantized_modules == q.quantized_modules
    assert (spec.calibration_method, spec.per_channel, spec.settings) == ("minmax", True, q.config.to_dict())
    assert len(spec.calibration) == 2 and spec.input_ranges == {}
    assert forms("qat-int8").int8_spec().input_ranges  # QAT's trained ranges reach the ORT runtimes


def test_weight_format_says_when_weights_are_exact(digits_task, forms):
    assert weight_format(forms("float-bf16")) == "bf16" and weight_format(forms("float-fp16")) == "fp16"
    assert weight_format(forms("weights")) is None and weight_format(digits_task.model) is None
    scaled = effdl.apply(digits_task, FloatFormatConfig(format="fp8_e4m3"))
    unscaled = effdl.apply(digits_task, FloatFormatConfig(format="fp8_e4m3", scaled=False))
    assert weight_format(scaled) is None and weight_format(unscaled) == "fp8_e4m3"  # fp8 * float32 scale: not fp8


def test_a_plain_model_is_its_own_reference(digits_task):
    model = digits_task.model
    assert not isinstance(model, CompressedModel) and not is_quantized(model)
    assert runtime_kind(model) == "float" and float_reference(model) is model and source_model(model) is model
    assert runtimes_for(model) == FP32
    assert set(model_tensors(model)) == set(model.state_dict())


class EarlierStep(Record):
    key = "test.earlier_step"
    kept: bool


def test_cluster_wraps_instead_of_rewriting_the_class(digits_task):
    model = copy.deepcopy(digits_task.model)
    cls = type(model)
    attach(model, EarlierStep(kept=True))  # a record of a step before clustering
    out = effdl.apply(model, ClusterConfig(bits=3, layers=("1",)), inplace=True)
    assert type(model) is cls and type(out) is ClusteredModel and out.float_model is model
    assert [n for n, _, _ in clustered_layers(out)] == ["1"]  # named as in the float model
    rec = records(out)
    assert rec["test.earlier_step"] == EarlierStep(kept=True) and set(rec["share.cluster"].layers) == {"1"}
    # a second step on other layers extends the same form (per-layer bits)
    both = effdl.apply(out, ClusterConfig(bits=2, layers=("3",)))
    assert type(both) is ClusteredModel and type(both.float_model) is cls
    assert {n: p.codebook.numel() for n, _, p in clustered_layers(both)} == {"1": 8, "3": 4}
    assert set(records(both)["share.cluster"].layers) == {"1", "3"}


def test_a_clustered_model_trains_but_refuses_rewrites(digits_task):
    clustered = effdl.apply(digits_task, ClusterConfig(bits=3))
    before = [p.codebook.detach().clone() for _, _, p in clustered_layers(clustered)]
    # training a clustered model trains its centroids (its stored form stays exact)
    tuned = effdl.apply(clustered, effdl.learn.Distill(epochs=0.2, lr=1e-2), task=digits_task)
    assert type(tuned) is ClusteredModel
    assert any(not torch.equal(b, p.codebook) for b, (_, _, p) in zip(before, clustered_layers(tuned)))
    for _, m, p in clustered_layers(tuned):
        assert set(m.weight.detach().unique().tolist()) <= set(p.codebook.tolist()) | {0.0}
    with pytest.raises(ConfigError, match=r"prune.weights must come before quantization.*\(ClusteredModel\)"):
        effdl.apply(clustered, effdl.prune.Magnitude(sparsity=0.5), task=digits_task)
    with pytest.raises(ConfigError, match=r"quantize.weights must come before quantization"):
        effdl.apply(clustered, WeightOnlyConfig(bits=4), task=digits_task)


class _Declared(CompressedModel):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind

    @property
    def runtime_kind(self):
        return self.kind

    def float_reference(self):
        return self

    def storage_tensors(self):
        return {}


@pytest.mark.parametrize("kind", ["int8-static", "fp8"])
def test_a_runtime_kind_must_be_one_the_runtimes_can_honour(kind):
    # an INT8 kind needs an Int8Model (the INT8 runtimes read its int8_spec()); unknown kinds are refused
    with pytest.raises(ModelError, match=f"runtime_kind is '{kind}'.*Int8Model"):
        runtime_kind(_Declared(kind))
    assert runtime_kind(_Declared("float")) == "float" and runtimes_for(_Declared("float")) == FP32


def test_a_method_named_storage_tensors_is_not_the_contract():
    class Lookalike(nn.Module):
        float_model = None

        def storage_tensors(self):
            return {"x": torch.zeros(1)}

    m = Lookalike()
    assert not is_quantized(m) and model_tensors(m) == {} and float_reference(m) is m
