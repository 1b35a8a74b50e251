"""lowrank.tucker / lowrank.cp / lowrank.spatial_svd: exact reconstruction at full rank, parity of the
decomposed module with the conv of the reconstructed kernel (stride, padding, dilation, padding mode,
non-square kernels), hand-computed parameter counts, reload, bad inputs."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import effdl
from effdl.compress import lowrank
from effdl.compress.lowrank.conv import (
    _spec,
    cp_factors,
    factorized,
    spatial_factors,
    tucker_factors,
)
from effdl.core.errors import ConfigError, UnsupportedModuleError
from effdl.core.io import load_weights, save_tensors
from effdl.core.records import records


def _conv(cin=6, cout=8, k=(3, 5), seed=0, **kw):
    torch.manual_seed(seed)
    return nn.Conv2d(cin, cout, k, **kw).eval()


def _kernel_of(kind, mod):
    """The kernel the chain of convs computes, rebuilt here from its weights."""
    w = [l.weight.detach().double() for l in mod]
    if kind == "tucker":
        return torch.einsum("oa,abyx,bi->oiyx", w[2][:, :, 0, 0], w[1], w[0][:, :, 0, 0])
    if kind == "cp":
        return torch.einsum("or,ri,ry,rx->oiyx", w[3][:, :, 0, 0], w[0][:, :, 0, 0], w[1][:, 0, :, 0], w[2][:, 0, 0, :])
    return torch.einsum("riy,orx->oiyx", w[0][..., 0], w[1][:, :, 0, :])


GEOMETRIES = [
    {"stride": 1, "padding": 0},
    {"stride": (2, 1), "padding": (1, 2), "dilation": (1, 2)},
    {"stride": 1, "padding": (1, 2), "padding_mode": "reflect"},
]


@pytest.mark.parametrize("geo", GEOMETRIES)
@pytest.mark.parametrize("cfg, kind", [
    (lowrank.Tucker(rank=3), "tucker"), (lowrank.CP(rank=5), "cp"), (lowrank.SpatialSVD(rank=4), "spatial_svd")])
def test_parity_with_the_reconstructed_kernel(cfg, kind, geo):
    conv = _conv(**geo)
    out = effdl.apply(nn.Sequential(conv), cfg)[0]
    assert isinstance(out, lowrank.Factorized) and out.spec["kind"] == kind
    k = _kernel_of(kind, out).float()
    x = torch.randn(2, 6, 11, 13)
    pad = conv.padding
    if conv.padding_mode != "zeros":
        xp = F.pad(x, (pad[1], pad[1], pad[0], pad[0]), mode=conv.padding_mode)
        ref = F.conv2d(xp, k, conv.bias, conv.stride, 0, conv.dilation)
    else:
        ref = F.conv2d(x, k, conv.bias, conv.stride, pad, conv.dilation)
    torch.testing.assert_close(out(x), ref, rtol=1e-4, atol=1e-5)
    # and the approximation is an approximation of *this* kernel: closer than the zero kernel
    assert (k - conv.weight).norm() < conv.weight.norm()


def test_full_rank_is_exact():
    conv = _conv(stride=2, padding=1)
    x = torch.randn(2, 6, 10, 10)
    w = conv.weight
    # Tucker-2 at full ranks (C_in, C_out) is the identity up to rounding
    spec = _spec("tucker", conv, ranks=[6, 8])
    mod = factorized(spec, tucker_factors(w, 6, 8, n_iter=0), conv.bias)
    torch.testing.assert_close(_kernel_of("tucker", mod).float(), w.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mod(x), conv(x), rtol=1e-4, atol=1e-5)
    # spatial SVD at full rank min(C_in kh, C_out kw) = 18
    mod = factorized(_spec("spatial_svd", conv, rank=18), spatial_factors(w, 18), conv.bias)
    torch.testing.assert_close(mod(x), conv(x), rtol=1e-4, atol=1e-5)


def test_cp_recovers_a_rank_two_kernel():
    torch.manual_seed(3)
    a, b, c, d = torch.randn(8, 2), torch.randn(6, 2), torch.randn(3, 2), torch.randn(5, 2)
    kernel = torch.einsum("or,ir,yr,xr->oiyx", a, b, c, d)
    conv = _conv()
    with torch.no_grad():
        conv.weight.copy_(kernel)
    mod = factorized(_spec("cp", conv, rank=2), cp_factors(conv.weight, 2), conv.bias)
    rel = (_kernel_of("cp", mod).float() - kernel).norm() / kernel.norm()
    assert rel < 1e-4


def test_parameter_counts_hand_computed():
    conv = _conv(8, 16, 3, padding=1)  # 16*8*9 + 16 = 1168 parameters
    x = nn.Sequential(conv)
    cases = [
        # Tucker ranks (R_in, R_out) = (4, 8): 8*4 + 4*8*9 + 8*16 + 16 = 464
        (lowrank.Tucker(rank="ratio", ratio=0.5), 464, {"ranks": [4, 8]}),
        # CP at ratio 0.5: R = floor(0.5 * 1152 / (8 + 16 + 3 + 3)) = 19 -> 19*(8+3+3+16) + 16 = 586
        (lowrank.CP(rank="ratio", ratio=0.5), 586, {"rank": 19}),
        # spatial SVD rank 4: 4*8*3 + 16*4*3 + 16 = 304
        (lowrank.SpatialSVD(rank=4), 304, {"rank": 4}),
    ]
    for cfg, expect, ranks in cases:
        out = effdl.apply(x, cfg)
        assert sum(p.numel() for p in out.parameters()) == expect, cfg
        info = records(out)[cfg.technique].layers["0"]
        assert info.params_before == 1168 and info.params_after == expect
        assert {k: getattr(info, k) for k in ranks} == ranks


def test_layers_that_would_not_shrink_are_skipped():
    # Tucker at ranks (6, 8) on a 6->8 3x3 conv: 36 + 432 + 64 = 532 >= 432 weights
    out = effdl.apply(nn.Sequential(_conv(k=3)), lowrank.Tucker(rank="ratio", ratio=1.0))
    rec = records(out)["lowrank.tucker"]
    assert rec.layers == {} and "does not reduce parameters (532 >= 432 weights)" in rec.skipped["0"]
    assert isinstance(out[0], nn.Conv2d)


def test_grouped_and_pointwise_convs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 8, 3, groups=4), nn.Conv2d(8, 16, 1), nn.Conv2d(16, 16, 3))
    out = effdl.apply(model, lowrank.CP(rank=4, keep_last=False))
    skipped = records(out)["lowrank.cp"].skipped
    assert "groups=4" in skipped["0"] and "1x1" in skipped["1"] and isinstance(out[2], lowrank.Factorized)
    with pytest.raises(UnsupportedModuleError, match=r"cannot decompose '0' \(Conv2d\): grouped conv \(groups=4\)"):
        effdl.apply(model, lowrank.Tucker(rank=2, layers=("0",)))


def test_reload_without_pickle(tmp_path):
    torch.manual_seed(0)

    def build():
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(),
                             nn.Conv2d(16, 16, 3, padding=1, bias=False)).eval()

    model = build()
    x = torch.randn(2, 3, 12, 12)
    for cfg in (lowrank.Tucker(rank=2, exclude=("0",)), lowrank.CP(rank=6), lowrank.SpatialSVD(rank=3)):
        out = effdl.apply(model, cfg)
        save_tensors(out.state_dict(), tmp_path / "m.safetensors")
        structure = json.loads(json.dumps(lowrank.structure_of(out)))
        fresh = lowrank.rebuild(build(), structure)
        fresh.load_state_dict(load_weights(tmp_path / "m.safetensors"))
        assert torch.equal(fresh(x), out(x)), cfg


def test_bad_inputs():
    model = nn.Sequential(_conv(k=3), nn.BatchNorm2d(8), nn.Conv1d(8, 8, 3))
    with pytest.raises(ConfigError, match="greater than or equal to 1"):
        lowrank.Tucker(rank=0)
    with pytest.raises(ConfigError, match=r"rank 7 exceeds the full rank of layer '0' \(max 6\)"):
        effdl.apply(model, lowrank.Tucker(rank=7))
    with pytest.raises(ConfigError, match=r"rank 19 exceeds the full rank of layer '0' \(max 18\)"):
        effdl.apply(model, lowrank.SpatialSVD(rank=19))
    with pytest.raises(ConfigError, match=r"rank 500 exceeds the full rank of layer '0' \(max 54\)"):
        effdl.apply(model, lowrank.CP(rank=500))  # CP-rank bound: 3*3*6 (all modes but the largest)
    with pytest.raises(UnsupportedModuleError, match=r"'2' is a Conv1d"):
        effdl.apply(model, lowrank.Tucker(rank=2, layers=("2",)))
    with pytest.raises(UnsupportedModuleError, match=r"'1' is a BatchNorm2d"):
        effdl.apply(model, lowrank.CP(rank=2, layers=("1",)))
    with pytest.raises(ConfigError, match="matches no module"):
        effdl.apply(model, lowrank.SpatialSVD(rank=2, layers=("conv9",)))


def test_tucker_ranks_are_clipped_to_what_the_core_can_hold():
    # 1x1 conv 16 -> 32 at ratio 0.25 asks (R_in, R_out) = (4, 8), but the core's output mode has at most
    # R_in * 1 * 1 = 4 independent directions: ranks (4, 4), 16*4 + 4*4 + 4*32 = 208 weights
    torch.manual_seed(0)
    out = effdl.apply(nn.Sequential(nn.Conv2d(16, 32, 1, bias=False)), lowrank.Tucker(rank="ratio", ratio=0.25))
    info = records(out)["lowrank.tucker"].layers["0"]
    assert info.ranks == [4, 4] and info.params_after == 208


def test_a_model_without_convs_is_refused():
    with pytest.raises(ConfigError, match="lowrank.tucker found no Conv2d layer"):
        effdl.apply(nn.Sequential(nn.Linear(4, 4)), lowrank.Tucker())
