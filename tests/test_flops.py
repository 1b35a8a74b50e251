"""MAC counts against hand-computed values (per sample, bias adds not counted)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from effdl.core.errors import ModelError
from effdl.metrics.flops import count_macs


def lenet_300_100():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))


def test_linear_784_300_per_sample():
    r = count_macs(nn.Linear(784, 300), torch.randn(5, 784))
    assert r["macs"] == 784 * 300 == 235_200
    assert r["flops"] == 2 * 235_200
    assert r["batch_size"] == 5
    assert r["per_layer"][0]["params"] == 784 * 300 + 300


def test_linear_with_leading_dims_counts_every_row():
    # (batch 2, 7 tokens, 16) -> 32: per sample 7 rows of 16*32 MACs
    assert count_macs(nn.Linear(16, 32), torch.randn(2, 7, 16))["macs"] == 7 * 16 * 32


def test_conv_5x5_same_padding_on_28x28():
    r = count_macs(nn.Conv2d(1, 6, 5, padding=2), torch.randn(3, 1, 28, 28))
    assert r["macs"] == 6 * 28 * 28 * 25 == 117_600


def test_depthwise_conv():
    # each of 8 output maps 10x10 reads 1 input channel x 3x3: 8*100*9
    r = count_macs(nn.Conv2d(8, 8, 3, groups=8, padding=1), torch.randn(2, 8, 10, 10))
    assert r["macs"] == 8 * 10 * 10 * 9 == 7200


def test_grouped_conv1d_and_transposed_conv():
    # Conv1d(8->4, k=3, groups=2) on length 20, no padding: 4 * 18 outputs * (8/2)*3
    assert count_macs(nn.Conv1d(8, 4, 3, groups=2), torch.randn(1, 8, 20))["macs"] == 4 * 18 * 4 * 3
    # ConvTranspose2d(4->2, k=3): every input element (4*5*5) scatters into 2*9 outputs
    assert count_macs(nn.ConvTranspose2d(4, 2, 3, stride=2), torch.randn(1, 4, 5, 5))["macs"] == 100 * 18


def test_lenet_300_100_total_and_elementwise():
    r = count_macs(lenet_300_100(), torch.randn(4, 1, 28, 28))
    assert r["macs"] == 235_200 + 30_000 + 1_000 == 266_200
    assert r["elementwise_ops"] == 300 + 100  # two ReLUs
    assert [layer["name"] for layer in r["per_layer"]] == ["1", "3", "5"]
    assert r["uncounted"] == [] and r["uncounted_ops"] == []


def test_macs_sparse_of_half_zeroed_linear_is_exactly_half():
    m = nn.Linear(784, 300)
    with torch.no_grad():
        m.weight[:, ::2] = 0  # 392 of 784 columns
    r = count_macs(m, torch.randn(1, 784))
    assert r["per_layer"][0]["weight_density"] == 0.5
    assert r["macs_sparse"] == 117_600
    assert r["macs"] == 235_200


class Residual(nn.Module):
    """conv-bn, a free layer-scale Parameter, functional add and relu."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.gamma = nn.Parameter(torch.ones(4, 1, 1))

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)) * self.gamma + x)


def test_functional_ops_counted_and_mode_restored():
    m = Residual().train()
    m.bn.eval()  # mixed flags must come back as they were
    stats = m.bn.running_mean.clone()
    r = count_macs(m, torch.randn(3, 4, 8, 8))
    assert r["macs"] == 4 * 64 * 4 * 9
    assert r["elementwise_ops"] == 4 * 64 * 4  # bn, *gamma, +x, relu: one op per output element each
    assert m.training and not m.bn.training and m.conv.training
    assert torch.equal(m.bn.running_mean, stats)


def test_transformer_encoder_counts_attention():
    e, length, ff = 16, 5, 32
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(e, 2, ff, batch_first=True), 2, enable_nested_tensor=False)
    r = count_macs(enc, torch.randn(2, length, e))
    # MHA: q,k,v projections 3*L*E*E + scores and weighted sum 2*L*L*E + out projection L*E*E
    mha = 3 * length * e * e + 2 * length * length * e + length * e * e
    ffn = 2 * length * e * ff
    assert r["macs"] == 2 * (mha + ffn)
    # per layer: softmax (2 heads * L*L) + 2 residual adds + 2 layer norms (L*E each) + relu (L*FF)
    assert r["elementwise_ops"] == 2 * (2 * length * length + 4 * length * e + length * ff)


def test_sdpa_and_matmul_outside_modules():
    class Attn(nn.Module):
        def forward(self, q):
            return F.scaled_dot_product_attention(q, q, q) + q @ q.transpose(-1, -2) @ q

    r = count_macs(Attn(), torch.randn(2, 3, 6, 8))  # 3 heads, 6 tokens, dim 8
    sdpa = 3 * 6 * 6 * (8 + 8)
    mm = 3 * 6 * 6 * 8 + 3 * 6 * 8 * 6
    assert r["macs"] == sdpa + mm


def test_unknown_modules_are_listed_not_guessed():
    class Einsum(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(3, 3))

        def forward(self, x):
            return torch.einsum("ij,bj->bi", self.w, x)

    r = count_macs(nn.Sequential(nn.Linear(3, 3), Einsum()), torch.randn(2, 3))
    assert r["macs"] == 9
    assert r["uncounted"] == ["Einsum"] and r["uncounted_ops"] == ["einsum"]


def test_shared_module_called_twice_and_kwargs_input():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(10, 10)

        def forward(self, x=None):
            return self.fc(self.fc(x))

    r = count_macs(Twice(), {"x": torch.randn(4, 10)})
    assert r["macs"] == 200 and r["per_layer"][0]["calls"] == 2


def test_forward_failure_is_a_model_error_and_hooks_removed():
    m = nn.Linear(4, 2)
    with pytest.raises(ModelError, match="forward raised"):
        count_macs(m, torch.randn(1, 5))
    assert not m._forward_hooks and not m._forward_pre_hooks
    with pytest.raises(ModelError):
        count_macs("not a model", torch.randn(1))


def test_parametrized_weight_uses_the_effective_weight():
    from torch.nn.utils import parametrize

    class HalfMask(nn.Module):
        def forward(self, w):
            mask = torch.ones_like(w)
            mask[:, 1::2] = 0
            return w * mask

    m = nn.Sequential(nn.Linear(8, 6))
    parametrize.register_parametrization(m[0], "weight", HalfMask())
    r = count_macs(m, torch.randn(2, 8))
    assert r["macs"] == 48 and r["macs_sparse"] == 24
    assert r["uncounted"] == [] and r["uncounted_ops"] == []
