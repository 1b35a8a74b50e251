"""Model zoo: shapes, hand-computed parameter counts, knobs, exportability, load_model with weights."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from effdl.core.errors import ArtifactError, ModelError, UnsafeArtifactError
from effdl.core.io import save_tensors
from effdl.data import Splits
from effdl.zoo import ZOO, build, load_model


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# The bundled data shapes (MNIST, digits, MNIST-1D) and a small multi-channel one.
SHAPES = [(1, 28, 28), (1, 8, 8), (1, 40), (3, 12, 12)]


@pytest.mark.parametrize("name", sorted(ZOO))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_shape_every_model(name, shape):
    torch.manual_seed(0)
    model = build(name, input_shape=shape, num_classes=7)
    out = model(torch.randn(3, *shape))  # train mode: BatchNorm sees a real batch
    assert out.shape == (3, 7) and torch.isfinite(out).all()
    model.eval()
    assert model(torch.randn(1, *shape)).shape == (1, 7)


def test_lenet_300_100_parameter_count():
    # 784*300+300 + 300*100+100 + 100*10+10 = 235,500 + 30,100 + 1,010
    for name in ("mlp", "lenet300_100"):
        assert n_params(build(name, input_shape=(1, 28, 28), num_classes=10)) == 266_610


def test_lenet5_parameter_count_on_28x28():
    # conv1 1*6*25+6 = 156; conv2 6*16*25+16 = 2,416; fc 400*120+120 = 48,120;
    # 120*84+84 = 10,164; 84*10+10 = 850. Total 61,706 (28x28 padded by 2 -> 16x5x5 = 400).
    model = build("lenet5", input_shape=(1, 28, 28), num_classes=10)
    assert n_params(model) == 61_706
    assert [m.in_features for m in model if isinstance(m, nn.Linear)][0] == 400


def test_resnet20_option_a_parameter_count_on_cifar_shape():
    # He et al. 2016 report 0.27M for ResNet-20. By hand: stem conv 432 + BN 32; stage 1: three
    # blocks of 2*(16*16*9) + 64 = 4,672 -> 14,016; stage 2: 16*32*9 + 32*32*9 + 128 = 13,952 plus
    # two blocks of 2*9,216 + 128 -> 51,072; stage 3: 32*64*9 + 64*64*9 + 256 = 55,552 plus two
    # blocks of 2*36,864 + 256 -> 203,520; fc 64*10+10 = 650. Total 269,722.
    model = build("resnet20", input_shape=(3, 32, 32), num_classes=10, shortcut="A")
    assert n_params(model) == 269_722
    # Option B adds 1x1 projections + BN: (16*32 + 64) + (32*64 + 128) = 2,752.
    assert n_params(build("resnet20", input_shape=(3, 32, 32), num_classes=10)) == 269_722 + 2_752


def test_mnist1d_cnn_parameter_count():
    # conv 1*25*5+25 = 150; 2 x (25*25*5+25) = 6,300; length 40 -> 19 -> 9 -> 4, so the head is
    # 25*4*10+10 = 1,010. Total 7,460.
    assert n_params(build("mnist1d_cnn", input_shape=(1, 40), num_classes=10)) == 7_460


def test_resnet_depth_knob_and_aliases_agree():
    shape = (1, 28, 28)
    assert n_params(build("resnet", input_shape=shape, num_classes=10, depth=8)) == n_params(
        build("resnet8", input_shape=shape, num_classes=10))
    assert n_params(build("resnet", input_shape=shape, num_classes=10)) == n_params(
        build("resnet20", input_shape=shape, num_classes=10))
    assert n_params(build("resnet", input_shape=shape, num_classes=10, depth=32)) > n_params(
        build("resnet20", input_shape=shape, num_classes=10))


def test_mlp_width_knob_exact():
    # hidden (150, 50): 784*150+150 + 150*50+50 + 50*10+10 = 117,750 + 7,550 + 510
    assert n_params(build("mlp", input_shape=(1, 28, 28), num_classes=10, width=0.5)) == 125_810
    assert n_params(build("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(32,))) == 64 * 32 + 32 + 330


@pytest.mark.parametrize("name", ["lenet5", "resnet8", "mobilenetv2", "mnist1d_cnn"])
def test_width_knob_scales_parameters(name):
    counts = [n_params(build(name, input_shape=(1, 28, 28), num_classes=10, width=w)) for w in (0.5, 1.0, 2.0)]
    assert counts[0] < counts[1] < counts[2]


def test_listing_has_descriptions_and_defaults_that_build():
    for name, (factory, description, knobs) in ZOO.items():
        assert callable(factory) and description
        default = build(name, input_shape=(1, 8, 8), num_classes=10)
        explicit = build(name, input_shape=(1, 8, 8), num_classes=10, **knobs)
        assert n_params(default) == n_params(explicit)


def test_same_seed_same_initial_weights():
    torch.manual_seed(3)
    a = build("resnet8", input_shape=(1, 8, 8), num_classes=10).state_dict()
    torch.manual_seed(3)
    b = build("resnet8", input_shape=(1, 8, 8), num_classes=10).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["mlp", "lenet5", "resnet8", "mobilenetv2", "mnist1d_cnn"])
def test_models_export_without_python_control_flow(name):
    # torch.export is what PT2E quantization and the dynamo ONNX exporter build on: a forward with
    # data-dependent Python control flow fails here.
    shape = (1, 40) if name == "mnist1d_cnn" else (1, 28, 28)
    model = build(name, input_shape=shape, num_classes=10, **({"shortcut": "A"} if name == "resnet8" else {})).eval()
    x = torch.randn(4, *shape)
    exported = torch.export.export(model, (x,))
    torch.testing.assert_close(exported.module()(x), model(x))


def test_unknown_model_and_knob_suggest():
    with pytest.raises(ModelError, match="Did you mean 'lenet5'"):
        build("lenet", input_shape=(1, 28, 28), num_classes=10)
    with pytest.raises(ModelError, match="no knob 'widht'.*Did you mean 'width'"):
        build("resnet20", input_shape=(1, 28, 28), num_classes=10, widht=2)
    with pytest.raises(ModelError, match="no knob 'depth'"):  # fixed by the name
        build("resnet20", input_shape=(1, 28, 28), num_classes=10, depth=8)


@pytest.mark.parametrize("name, knobs, message", [
    ("resnet", {"depth": 21}, "6n\\+2"),
    ("resnet", {"shortcut": "C"}, "shortcut"),
    ("mlp", {"width": 0}, "width"),
    ("lenet5", {"width": float("nan")}, "width"),
    ("mlp", {"hidden": (300, 0)}, "hidden"),
    ("mobilenetv2", {"expansion": 0}, "expansion"),
])
def test_bad_knob_values_raise_model_error(name, knobs, message):
    with pytest.raises(ModelError, match=message):
        build(name, input_shape=(1, 28, 28), num_classes=10, **knobs)


@pytest.mark.parametrize("shape, classes", [((784,), 10), ((1, 1, 28, 28), 10), ((1, 28, 28), 1), ("1x28", 10)])
def test_bad_shapes_and_class_counts_raise_model_error(shape, classes):
    with pytest.raises(ModelError):
        build("lenet5", input_shape=shape, num_classes=classes)


def _splits(shape=(1, 8, 8), classes=10) -> Splits:
    from torch.utils.data import TensorDataset

    ds = TensorDataset(torch.randn(20, *shape), torch.arange(20) % classes)
    return Splits("tiny", ds, ds, ds, classes, shape, "random tensors for loading tests")


def test_load_model_zoo_with_weights(tmp_path):
    torch.manual_seed(0)
    source = build("lenet5", input_shape=(1, 8, 8), num_classes=10)
    path = save_tensors(source.state_dict(), tmp_path / "w.safetensors")
    model = load_model("zoo:lenet5", _splits(), weights=str(path))
    assert not model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in source.state_dict().items())
    with pytest.raises(ArtifactError, match="do not match"):
        load_model("zoo:mlp", _splits(), weights=str(path))


def test_load_model_from_factory_file(tmp_path):
    file = tmp_path / "net.py"
    file.write_text("import torch.nn as nn\n\ndef net():\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))\n"
                    "\ndef bad():\n    return 3\n")
    torch.manual_seed(1)
    source = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    path = save_tensors(source.state_dict(), tmp_path / "net.safetensors")
    model = load_model(f"{file}:net", _splits(), weights=str(path))
    assert torch.equal(model[1].weight, source[1].weight)
    with pytest.raises(ModelError, match="nn.Module"):
        load_model(f"{file}:bad", _splits())
    with pytest.raises(ModelError, match="no callable"):
        load_model(f"{file}:missing", _splits())


def test_load_model_refuses_pickle_and_bad_specs(tmp_path):
    pickled = tmp_path / "w.pt"
    torch.save(build("mlp", input_shape=(1, 8, 8), num_classes=10).state_dict(), pickled)
    with pytest.raises(UnsafeArtifactError):
        load_model("zoo:mlp", _splits(), weights=str(pickled))
    assert load_model("zoo:mlp", _splits(), weights=str(pickled), allow_pickle=True) is not None
    with pytest.raises(ModelError, match="Did you mean 'zoo:lenet5'"):
        load_model("lenet5", _splits())
    with pytest.raises(ModelError, match="Did you mean 'resnet20'"):
        load_model("zoo:resnet2O", _splits())
