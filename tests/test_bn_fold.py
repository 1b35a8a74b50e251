"""BatchNorm folding: lossless on the zoo's ResNet-20 and MobileNetV2 (plain, depthwise and grouped
convs), hand-checked arithmetic, and the refusals (train mode, no running statistics)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from effdl.compress.quantize.bn_fold import conv_bn_pairs, fold_batchnorm
from effdl.core.errors import ConfigError, UnsupportedModuleError
from effdl.zoo import build


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine terms (fresh BNs are the identity and would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


def n_bn(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize("name,input_shape", [("resnet20", (1, 28, 28)), ("mobilenetv2", (1, 28, 28)),
                                              ("mobilenetv2", (1, 64))])
def test_folding_zoo_models_is_lossless_and_removes_every_bn(name, input_shape):
    torch.manual_seed(0)
    model = randomise_bn(build(name, input_shape=input_shape, num_classes=10))
    before = n_bn(model)
    folded = fold_batchnorm(model)
    assert before > 0 and n_bn(folded) == 0 and n_bn(model) == before  # the input model is untouched
    assert len(conv_bn_pairs(model)) == before
    x = torch.randn(6, *input_shape)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x))  # torch.testing's float32 defaults
    names = {n for n, _ in model.named_modules()}
    assert {n for n, _ in folded.named_modules()} == names  # module names kept (BN -> Identity)


def test_depthwise_and_grouped_convs_fold_per_output_channel():
    torch.manual_seed(0)
    model = randomise_bn(nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1, groups=2, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8)))
    folded = fold_batchnorm(model)
    x = torch.randn(3, 4, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x))
    # hand check for channel 5 of the depthwise conv: w * g / sqrt(var + eps), bias -mean * g / sqrt(var + eps) + beta
    bn, conv = model[4], model[3]
    k = bn.weight[5] / torch.sqrt(bn.running_var[5] + bn.eps)
    torch.testing.assert_close(folded[3].weight[5], conv.weight[5] * k)
    torch.testing.assert_close(folded[3].bias[5], bn.bias[5] - bn.running_mean[5] * k)
    assert model[0].bias is None and folded[0].bias is not None  # a conv without bias gets one


def test_bn_without_affine_and_zero_variance_fold_with_eps():
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.BatchNorm1d(3, affine=False)).eval()
    with torch.no_grad():
        model[1].running_var.copy_(torch.tensor([0.0, 1.0, 4.0]))  # var 0: 1 / sqrt(eps), finite
        model[1].running_mean.copy_(torch.tensor([0.1, -0.2, 0.3]))
    folded = fold_batchnorm(model)
    x = torch.randn(4, 2, 10)
    with torch.no_grad():
        out, ref = folded(x), model(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)  # 1/sqrt(1e-5) ~ 316x magnifies rounding


def test_linear_then_batchnorm1d_folds():
    torch.manual_seed(0)
    model = randomise_bn(nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)))
    folded = fold_batchnorm(model)
    x = torch.randn(7, 5)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x))
    assert isinstance(folded[1], nn.Identity)


class Branching(nn.Module):
    """conv1's output feeds both the BN and a skip: folding would change the skip, so it is left."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 2, 1)
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x):
        y = self.conv1(x)
        return self.bn(y) + y


def test_bn_whose_conv_output_has_other_users_is_left_alone():
    model = randomise_bn(Branching())
    assert conv_bn_pairs(model) == []
    folded = fold_batchnorm(model)
    x = torch.randn(2, 2, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x))
    assert isinstance(folded.bn, nn.BatchNorm2d)


def test_train_mode_is_refused():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).train()
    with pytest.raises(ConfigError, match=r"train mode.*call model.eval\(\) first"):
        fold_batchnorm(model)


def test_bn_without_running_stats_is_refused_by_name():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False)).eval()
    with pytest.raises(UnsupportedModuleError, match=r"'1' has no running statistics.*fold_bn=False"):
        fold_batchnorm(model)
