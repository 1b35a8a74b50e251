"""prune.channels / prune.layers: saliency numerics, surgery parity, shapes, rebuild, ONNX, bad inputs."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from effdl.compress.prune import (
    structured,
    surgery,
)
from effdl.compress.prune.activation_saliency import (
    activation_scores,
    taylor_scores,
    weight_scores,
)
from effdl.compress.prune.structured import (
    ChannelPruneConfig,
    LayerPruneConfig,
    rebuild,
    structure_of,
)
from effdl.core.errors import ConfigError, UnsupportedModuleError
from effdl.core.io import load_weights, save_tensors, write_json
from effdl.core.registry import apply, get
from effdl.core.tasks import ImageClassification
from effdl.data import load_data
from effdl.zoo import build

MNIST = (1, 28, 28)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # 2-thread torch ops slow down many-fold when another process holds the other core (REFERENCE.md)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def mnist():
    return load_data("mnist")


def _x(splits, n=16):
    return torch.stack([splits.val[i][0] for i in range(n)]).float()


def _linear(weight, bias=None):
    w = torch.tensor(weight, dtype=torch.float32)
    m = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    with torch.no_grad():
        m.weight.copy_(w)
        if bias is not None:
            m.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    return m


# -- saliency numerics on hand-computable layers ---------------------------------------------------
def test_l1_l2_scores_hand_computed():
    m = _linear([[1.0, -2.0], [3.0, 0.0], [0.5, 0.5]])
    assert weight_scores(m, "l1").tolist() == [3.0, 3.0, 1.0]
    torch.testing.assert_close(weight_scores(m, "l2"), torch.tensor([math.sqrt(5), 3.0, math.sqrt(0.5)]))


def test_taylor_hand_computed_gradient():
    # z = W x, L = CE(z, y). dL/dW = (softmax(z) - onehot(y)) x^T; score_i = |sum_j g_ij w_ij|.
    W = [[1.0, 2.0], [-1.0, 0.5]]
    m = _linear(W)
    x, y = torch.tensor([[1.0, -1.0]]), torch.tensor([0])
    z = [1 * 1 + 2 * -1, -1 * 1 + 0.5 * -1]  # [-1, -1.5]
    e = [math.exp(v) for v in z]
    p = [v / sum(e) for v in e]
    g = [[(p[0] - 1) * 1, (p[0] - 1) * -1], [p[1] * 1, p[1] * -1]]
    expect = [abs(g[i][0] * W[i][0] + g[i][1] * W[i][1]) for i in range(2)]
    got = taylor_scores(nn.Sequential(m), [m], [(x, y)])[m]
    torch.testing.assert_close(got, torch.tensor(expect), rtol=1e-6, atol=1e-7)
    # two batches: gradients are summed before multiplying by the weight
    got2 = taylor_scores(nn.Sequential(m), [m], [(x, y), (x, y)])[m]
    torch.testing.assert_close(got2, 2 * torch.tensor(expect), rtol=1e-6, atol=1e-7)


def test_mean_activation_and_apoz_on_known_relu_outputs():
    lin = _linear([[1.0], [-1.0]], bias=[0.0, 0.0])
    model = nn.Sequential(lin, nn.ReLU())
    x = torch.tensor([[1.0], [2.0], [-1.0], [3.0]])  # ReLU outputs: unit0 [1,2,0,3], unit1 [0,0,1,0]
    mean = activation_scores(model, [lin], [x], "mean_activation")[lin]
    apoz = activation_scores(model, [lin], [x], "apoz")[lin]
    torch.testing.assert_close(mean, torch.tensor([1.5, 0.25]))
    torch.testing.assert_close(apoz, torch.tensor([0.75, 0.25]))  # 1 - APoZ: 1/4 and 3/4 zeros


def test_activation_is_taken_after_batchnorm_and_relu():
    conv = nn.Conv1d(1, 1, 1, bias=False)
    bn = nn.BatchNorm1d(1).eval()
    with torch.no_grad():
        conv.weight.fill_(1.0)
        bn.bias.fill_(-2.0)  # BN(x) = x/sqrt(1+eps) - 2: only values > 2 survive the ReLU
    model = nn.Sequential(conv, bn, nn.ReLU())
    x = torch.tensor([[[1.0, 3.0, 5.0, 0.0]]])
    apoz = activation_scores(model, [conv], [x], "apoz")[conv]
    torch.testing.assert_close(apoz, torch.tensor([0.5]))


# -- shapes after surgery (hand-computed) ----------------------------------------------------------
def _dims(model, cls, attr):
    return [getattr(m, attr) for m in model.modules() if isinstance(m, cls)]


def test_lenet5_channel_counts():
    model = build("lenet5", input_shape=MNIST, num_classes=10)
    out = apply(model, ChannelPruneConfig(ratio=0.5, input_shape=MNIST))
    # conv1 (first conv) and the classifier are protected; 16 -> 8 channels, 120 -> 60, 84 -> 42
    assert _dims(out, nn.Conv2d, "out_channels") == [6, 8]
    assert _dims(out, nn.Linear, "in_features") == [8 * 5 * 5, 60, 42]
    assert _dims(out, nn.Linear, "out_features") == [60, 42, 10]
    assert _dims(model, nn.Conv2d, "out_channels") == [6, 16]  # the input model is untouched
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in out.modules())
    assert not out.training


def test_tiny_resnet_block_counts_and_round_to():
    model = build("resnet8", input_shape=(1, 8, 8), num_classes=10)
    out = apply(model, ChannelPruneConfig(ratio=0.5, input_shape=(1, 8, 8)))
    # stage 1 shares the stem's (protected) channels: only its inner conv shrinks 16 -> 8;
    # stages 2, 3 shrink whole residual groups (conv2, projection shortcut, BN) 32 -> 16, 64 -> 32
    assert _dims(out, nn.Conv2d, "out_channels") == [16, 8, 16, 16, 16, 16, 32, 32, 32]
    assert _dims(out, nn.BatchNorm2d, "num_features") == [16, 8, 16, 16, 16, 16, 32, 32, 32]
    assert out.fc.in_features == 32
    r = apply(model, ChannelPruneConfig(ratio=0.3, round_to=8, input_shape=(1, 8, 8)))
    assert all(c % 8 == 0 for c in _dims(r, nn.Conv2d, "out_channels"))


def test_protect_first_off_prunes_the_stem_group():
    model = build("resnet8", input_shape=(1, 8, 8), num_classes=10)
    out = apply(model, ChannelPruneConfig(ratio=0.5, protect_first=False, input_shape=(1, 8, 8)))
    assert _dims(out, nn.Conv2d, "out_channels") == [8, 8, 8, 16, 16, 16, 32, 32, 32]


def test_config_round_trip():
    from effdl.core.registry import config_from_dict

    for cfg in (ChannelPruneConfig(ratio=0.3, saliency="apoz", protect=("layers.*",), round_to=4),
                LayerPruneConfig(ratio=0.5, saliency="l1")):
        assert config_from_dict(cfg.to_dict()) == cfg


def test_global_scope_keeps_one_unit_per_group():
    model = build("lenet5", input_shape=MNIST, num_classes=10)
    out = apply(model, ChannelPruneConfig(ratio=0.95, scope="global", input_shape=MNIST))
    assert min(_dims(out, nn.Linear, "out_features")) >= 1 and out(torch.zeros(1, *MNIST)).shape == (1, 10)


# -- surgery parity: removing all-zero units changes nothing ---------------------------------------
def _zero_half_of_every_group(model, example):
    protected = structured.default_protected(model)
    dg = surgery.build_graph(model, example)
    with torch.no_grad():
        for group in surgery.prunable_groups(model, dg, protected):
            n = len(group[0].idxs)
            dead = set(range(0, n, 2))  # every other unit
            for item in group:
                m = item.dep.target.module
                if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)) and surgery.is_out_pruning(dg, item.dep.handler):
                    rows = [i for i, r in zip(item.idxs, item.root_idxs) if r in dead]
                    m.weight[rows] = 0.0
                    if m.bias is not None:
                        m.bias[rows] = 0.0
    return model


@pytest.mark.parametrize("name", ["lenet5", "resnet8", "mobilenetv2"])
def test_surgery_parity_on_zeroed_units(mnist, name):
    torch.manual_seed(0)
    model = build(name, input_shape=MNIST, num_classes=10).eval()
    x = _x(mnist, 16)
    _zero_half_of_every_group(model, x[:2])
    pruned = apply(model, ChannelPruneConfig(ratio=0.5, input_shape=MNIST))
    assert sum(p.numel() for p in pruned.parameters()) < 0.6 * sum(p.numel() for p in model.parameters())
    for b in (1, 16):
        torch.testing.assert_close(pruned(x[:b]), model(x[:b]), rtol=1e-3, atol=1e-5)


def test_depthwise_pairs_stay_consistent(mnist):
    model = build("mobilenetv2", input_shape=MNIST, num_classes=10)
    out = apply(model, ChannelPruneConfig(ratio=0.5, input_shape=MNIST))
    dws = [m for m in out.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert dws and all(m.groups == m.in_channels == m.out_channels and m.weight.shape[1] == 1 for m in dws)
    before = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    # the first depthwise conv (expansion 1) shares the protected stem's channels; the rest halve
    assert [m.out_channels for m in dws] == before[:1] + [c - round(c / 2) for c in before[1:]]
    assert out(_x(mnist, 2)).shape == (2, 10)


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.g = nn.Conv2d(8, 12, 3, padding=1, groups=2)
        self.b = nn.Conv2d(12, 8, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.b(torch.relu(self.g(torch.relu(self.a(self.conv(x)))))).mean((2, 3)))


def test_grouped_conv_keeps_groups_equal_and_parity():
    torch.manual_seed(0)
    model = Grouped().eval()
    with torch.no_grad():  # zero the same local positions in each conv group: exactly what 50% removes
        for layer, dead in ((model.a, [0, 1, 4, 5]), (model.g, [0, 1, 3, 6, 7, 9]), (model.b, [0, 1, 2, 3])):
            layer.weight[dead] = 0.0
            layer.bias[dead] = 0.0
    out = apply(model, ChannelPruneConfig(ratio=0.5, input_shape=(1, 8, 8)))
    assert (out.g.in_channels, out.g.out_channels, out.g.groups, tuple(out.g.weight.shape[:2])) == (4, 6, 2, (6, 2))
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(out(x), model(x), rtol=1e-3, atol=1e-5)


# -- persistence without pickle --------------------------------------------------------------------
def test_rebuild_and_reload_exact(tmp_path, mnist):
    for name, cfg in (("resnet8", ChannelPruneConfig(ratio=0.4, input_shape=MNIST)),
                      ("resnet20", LayerPruneConfig(num_blocks=2, saliency="l1", input_shape=MNIST)),
                      ("mobilenetv2", ChannelPruneConfig(ratio=0.5, input_shape=MNIST))):
        pruned = apply(build(name, input_shape=MNIST, num_classes=10), cfg)
        save_tensors(pruned.state_dict(), tmp_path / "w.safetensors")
        write_json(tmp_path / "structure.json", structure_of(pruned))
        import json

        fresh = rebuild(build(name, input_shape=MNIST, num_classes=10),
                        json.loads((tmp_path / "structure.json").read_text()))
        fresh.load_state_dict(load_weights(tmp_path / "w.safetensors"), strict=True)
        x = _x(mnist, 8)
        assert torch.equal(fresh.eval()(x), pruned(x))


def test_pruned_model_lowers_to_onnx_with_parity(tmp_path, mnist):
    from effdl.deploy.parity import check_parity, parity_inputs
    from effdl.deploy.runtimes import lower

    model = build("lenet5", input_shape=MNIST, num_classes=10)
    task = ImageClassification(model, mnist.train, mnist.val, mnist.test, num_classes=10)
    pruned = apply(task, ChannelPruneConfig(ratio=0.5, saliency="apoz", batches=2))
    low = lower(pruned, "ort", task=task, workdir=tmp_path, batch_sizes=(1, 32))
    assert check_parity(pruned, low, parity_inputs(task, (1, 32), n=64)).ok


def test_taylor_finetune_on_real_data(mnist):
    from effdl.zoo import trained

    model = trained("lenet5", "mnist")
    task = ImageClassification(model, mnist.train, mnist.val, mnist.test, num_classes=10)
    base = task.evaluate(model, "val")["accuracy"]
    pruned = apply(task, ChannelPruneConfig(ratio=0.5, saliency="taylor", finetune_epochs=1, batches=2))
    assert task.evaluate(pruned, "val")["accuracy"] >= base - 0.03  # 1 epoch recovers to within 3 points


# -- prune.layers ----------------------------------------------------------------------------------
def test_layer_pruning_picks_the_block_that_does_nothing(mnist):
    from effdl.zoo import trained

    model = trained("resnet20", "mnist")
    task = ImageClassification(model, mnist.train, mnist.val, mnist.test, num_classes=10)
    blocks = structured.residual_blocks(model, _x(mnist, 2))
    # blocks that change shape (stride 2, projection shortcut) are not removable
    assert blocks == [f"layers.{i}" for i in (0, 1, 2, 4, 5, 7, 8)]
    with torch.no_grad():  # block 4's residual branch now outputs 0: the block is relu(x) = x
        model.layers[4].bn2.weight.zero_()
        model.layers[4].bn2.bias.zero_()
    out = apply(task, LayerPruneConfig(num_blocks=1, batches=1))
    val = list(task.batches("val", 128))[:1]
    impacts = structured.block_impacts(model, blocks, val)
    with torch.no_grad():
        own = float(F.cross_entropy(model(val[0][0]), val[0][1]))
    assert impacts["layers.4"] == pytest.approx(own, rel=1e-5)  # removing a do-nothing block changes nothing
    chosen = [n for n in blocks if isinstance(out.get_submodule(n), nn.Identity)]
    assert chosen == [min(impacts, key=impacts.get)] and impacts[chosen[0]] <= own + 1e-6


def test_layer_pruning_refuses_model_without_blocks():
    with pytest.raises(ConfigError, match="no removable block"):
        apply(build("lenet5", input_shape=MNIST, num_classes=10), LayerPruneConfig(num_blocks=1, saliency="l1", input_shape=MNIST))
    with pytest.raises(ConfigError, match="exactly one"):
        LayerPruneConfig(num_blocks=1, ratio=0.5)


# -- bad inputs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5])
def test_bad_ratio(ratio):
    with pytest.raises(ConfigError, match="ratio"):
        ChannelPruneConfig(ratio=ratio)


def test_ratio_zero_is_bit_identical():
    model = build("resnet8", input_shape=(1, 8, 8), num_classes=10)
    out = apply(model, ChannelPruneConfig(ratio=0.0, input_shape=(1, 8, 8)))
    ref = model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in out.state_dict().items()) and out.state_dict().keys() == ref.keys()


def test_needs_follow_the_config():
    tech = get("prune.channels")
    assert tech.needs_for(ChannelPruneConfig()) == "nothing"
    assert tech.needs_for(ChannelPruneConfig(saliency="apoz")) == "training"
    assert tech.needs_for(ChannelPruneConfig(finetune_epochs=1)) == "training"


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.conv(x)
        x = self.a(x) if x.mean() > -1e9 else self.b(x)  # data-dependent: tracing sees one branch
        return self.fc(x.mean((2, 3)))


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.mid = nn.Conv2d(8, 8, 3, padding=1)
        self.scale = ChannelScale(8)
        self.mid2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.mid2(self.scale(self.mid(self.conv(x)))).mean((2, 3)))


class ChannelScale(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(1, c, 1, 1))

    def forward(self, x):
        return x * self.gain


def test_untraceable_branch_is_named():
    with pytest.raises(UnsupportedModuleError, match=r"'b'.*protect"):
        apply(Branchy(), ChannelPruneConfig(ratio=0.5, input_shape=(1, 8, 8)))


def test_custom_module_is_named_and_protecting_it_works():
    with pytest.raises(UnsupportedModuleError, match=r"'scale'.*protect=\['scale'\]"):
        apply(Scaled(), ChannelPruneConfig(ratio=0.5, input_shape=(1, 8, 8)))
    model = Scaled().eval()
    out = apply(model, ChannelPruneConfig(ratio=0.5, protect=("scale",), input_shape=(1, 8, 8)))
    x = torch.randn(2, 1, 8, 8)
    assert out(x).shape == (2, 10)
    assert out.mid.out_channels == 8  # the group feeding the protected custom module is kept whole
    assert out.mid2.out_channels == 4


class RootGain(nn.Module):
    """A free nn.Parameter on the model itself, outside any layer."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)
        self.gain = nn.Parameter(torch.ones(1, 8, 1, 1))

    def forward(self, x):
        return self.fc((self.conv(x) * self.gain).mean((2, 3)))


def test_a_free_parameter_on_the_root_gets_a_fix_that_works():
    with pytest.raises(UnsupportedModuleError, match=r"holds parameters of its own outside any layer \(gain\)") as info:
        apply(RootGain(), ChannelPruneConfig(ratio=0.5, protect_first=False, input_shape=(1, 8, 8)))
    assert "protect=['']" not in str(info.value) and "move them into a submodule" in str(info.value)
    # the fix it names: prune.magnitude needs no dependency analysis
    out = apply(RootGain(), get("prune.magnitude").config(sparsity=0.5))
    assert out(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_tied_weights_are_refused():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))
    model[2].weight = model[0].weight
    with pytest.raises(UnsupportedModuleError, match="tied"):
        apply(model, ChannelPruneConfig(ratio=0.5, input_shape=(4,)))


def test_pruning_twice_prunes_the_remaining_units_again():
    model = build("lenet5", input_shape=MNIST, num_classes=10)
    cfg = ChannelPruneConfig(ratio=0.5, input_shape=MNIST)
    twice = apply(apply(model, cfg), cfg)
    assert _dims(twice, nn.Linear, "out_features") == [30, 21, 10]


def test_protect_pattern_matching_nothing():
    with pytest.raises(ConfigError, match="matches no module"):
        apply(build("lenet5", input_shape=MNIST, num_classes=10),
              ChannelPruneConfig(ratio=0.5, protect=("backbone.*",), input_shape=MNIST))


def test_no_input_shape_without_task():
    with pytest.raises(ConfigError, match="input_shape"):
        apply(build("lenet5", input_shape=MNIST, num_classes=10), ChannelPruneConfig(ratio=0.5))
