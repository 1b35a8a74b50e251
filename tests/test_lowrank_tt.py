"""lowrank.tt: automatic mode factorizations, exactness at full TT rank, parity of the TT layer with
its reconstructed matrix, the TT-SVD error against the singular values it drops, hand-computed
parameter counts, reload, bad inputs."""
import json

import pytest
import torch
from torch import nn

import effdl
from effdl.compress import lowrank
from effdl.compress.lowrank.tt import balanced_factors, tt_svd
from effdl.core.errors import ConfigError, UnsupportedModuleError
from effdl.core.io import load_weights, save_tensors
from effdl.core.records import records


def _lin(n_in, n_out, seed=0, bias=True):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, n_out, bias=bias)).eval()


def _tt_module(weight, outs, ins, rank, bias=None):
    ranks = [min(rank, r) for r in lowrank.tt.bond_limits(outs, ins)]
    mod = lowrank.TTLinear({"kind": "tt", "out_modes": list(outs), "in_modes": list(ins), "ranks": ranks,
                            "bias": bias is not None})
    with torch.no_grad():
        for p, c in zip(mod.cores, tt_svd(weight, outs, ins, rank)):
            p.copy_(c)
        if bias is not None:
            mod.bias.copy_(bias)
    return mod


def test_balanced_factors():
    assert balanced_factors(784, 2) == (28, 28)
    assert balanced_factors(300, 2) == (15, 20)
    assert balanced_factors(784, 3) == (7, 8, 14)
    assert balanced_factors(10, 3) == (1, 2, 5)
    assert balanced_factors(13, 2) == (1, 13)


def test_full_tt_rank_is_exact():
    w = torch.randn(24, 30)
    for outs, ins in (((4, 6), (5, 6)), ((2, 3, 4), (2, 3, 5))):
        mod = _tt_module(w, outs, ins, rank=10_000)
        torch.testing.assert_close(mod.weight_matrix(), w, rtol=1e-4, atol=1e-5)


def test_two_core_error_equals_the_dropped_singular_values():
    # With two cores TT-SVD is the truncated SVD of W rearranged to (m1 n1) x (m2 n2) (Van Loan):
    # the Frobenius error is sqrt(sum of the squared singular values past the rank).
    torch.manual_seed(2)
    w = torch.randn(12, 20)
    outs, ins = (3, 4), (4, 5)
    mod = _tt_module(w, outs, ins, rank=3)
    r = w.reshape(3, 4, 4, 5).permute(0, 2, 1, 3).reshape(12, 20)
    s = torch.linalg.svdvals(r.double())
    expect = s[3:].square().sum().sqrt()
    assert (mod.weight_matrix().double() - w.double()).norm().item() == pytest.approx(expect.item(), rel=1e-4)


def test_parity_with_the_reconstructed_matrix_and_param_count():
    model = _lin(12, 6)
    out = effdl.apply(model, lowrank.TT(rank=2, in_modes=(3, 4), out_modes=(2, 3)))
    tt = out[0]
    assert isinstance(tt, lowrank.TTLinear) and tt.spec["ranks"] == [2]
    x = torch.randn(7, 12)
    torch.testing.assert_close(tt(x), x @ tt.weight_matrix().T + tt.bias, rtol=1e-4, atol=1e-5)
    x3 = torch.randn(2, 5, 12)  # leading dimensions pass through
    torch.testing.assert_close(tt(x3), x3 @ tt.weight_matrix().T + tt.bias, rtol=1e-4, atol=1e-5)
    # cores (1, 2, 3, 2) and (2, 3, 4, 1): 12 + 24 weights, + 6 bias = 42 (the Linear had 72 + 6)
    assert sum(p.numel() for p in out.parameters()) == 42
    rec = records(out)["lowrank.tt"].layers["0"]
    assert (rec.params_before, rec.params_after) == (78, 42)


def test_automatic_modes_on_a_lenet300_layer():
    model = _lin(784, 300, bias=False)
    out = effdl.apply(model, lowrank.TT(rank=4, cores=3))
    tt = out[0]
    # 784 = 7 x 8 x 14, 300 = 5 x 6 x 10; bonds min(4, ...) = 4, 4:
    # 1*5*7*4 + 4*6*8*4 + 4*10*14*1 = 140 + 768 + 560 = 1468
    assert tt.spec["in_modes"] == [7, 8, 14] and tt.spec["out_modes"] == [5, 6, 10]
    assert sum(p.numel() for p in tt.parameters()) == 1468
    x = torch.randn(3, 784)
    torch.testing.assert_close(tt(x), x @ tt.weight_matrix().T, rtol=1e-4, atol=1e-5)


def test_skips_layers_where_tt_does_not_shrink():
    # Linear(4 -> 2) at two cores: modes (2, 2) x (1, 2), bond <= min(2, 4) = 2 -> 4 + 8 = 12 >= 8 weights
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(4, 2))
    out = effdl.apply(model, lowrank.TT(rank=2, keep_last=False))
    rec = records(out)["lowrank.tt"]
    assert list(rec.layers) == ["0"] and "12 >= 8 weights" in rec.skipped["2"]


def test_reload_without_pickle(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    out = effdl.apply(model, lowrank.TT(rank=3, layers=("1",)))
    save_tensors(out.state_dict(), tmp_path / "m.safetensors")
    fresh = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    fresh = lowrank.rebuild(fresh, json.loads(json.dumps(lowrank.structure_of(out))))
    fresh.load_state_dict(load_weights(tmp_path / "m.safetensors"))
    x = torch.randn(4, 8, 8)
    assert torch.equal(fresh(x), out(x))


def test_bad_inputs():
    with pytest.raises(ConfigError, match="greater than or equal to 1"):
        lowrank.TT(rank=0)
    with pytest.raises(ConfigError, match=r"TT rank 50 exceeds the full rank of layer '0' \(max 6\)"):
        effdl.apply(_lin(12, 6), lowrank.TT(rank=50, in_modes=(3, 4), out_modes=(2, 3)))  # bond <= min(2*3, 3*4)
    with pytest.raises(ConfigError, match=r"modes \(4, 4\) multiply to 16 but layer '0' has in_features=12"):
        effdl.apply(_lin(12, 6), lowrank.TT(in_modes=(4, 4), out_modes=(2, 3)))
    with pytest.raises(ConfigError, match="same length"):
        effdl.apply(_lin(12, 6), lowrank.TT(in_modes=(3, 4), out_modes=(1, 2, 3)))
    conv = nn.Sequential(nn.Conv2d(1, 2, 3))
    with pytest.raises(UnsupportedModuleError, match=r"lowrank.tt decomposes Linear layers, but '0' is a Conv2d"):
        effdl.apply(conv, lowrank.TT(layers=("0",)))
    with pytest.raises(ConfigError, match="matches no module"):
        effdl.apply(_lin(12, 6), lowrank.TT(layers=("fc",)))


def test_macs_are_counted_through_the_cores():
    from effdl.metrics.flops import count_macs

    # Linear(64 -> 64), modes 8x8 -> 8x8, bond 4: step 1 makes 8*4*8 outputs summing 1*8 terms (2048),
    # step 2 makes 8*8 outputs summing 4*8 terms (2048): 4096 MACs, as many as the dense layer
    out = effdl.apply(_lin(64, 64), lowrank.TT(rank=4))
    assert count_macs(out, torch.randn(1, 64))["macs"] == 4096
