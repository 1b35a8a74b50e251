"""lowrank.svd: parity with the rank-r reconstruction, rank rules (ratio, energy, sensitivity under a
parameter budget), skipped layers, fine-tuning on real digits data, pickle-free reload, bad inputs."""
import copy

import pytest
import torch
from torch import nn

import effdl
from effdl.compress import lowrank
from effdl.compress.lowrank.svd import energy_rank
from effdl.core.errors import ConfigError, UnsupportedModuleError
from effdl.core.io import load_weights, save_tensors, write_json
from effdl.core.records import records


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 10)).eval()


def _reconstructed(model, ranks):
    """Reference: the same model with each W replaced by U_r S_r V_r^T (computed here independently)."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for name, r in ranks.items():
            w = ref.get_submodule(name).weight
            u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
            w.copy_((u[:, :r] * s[:r]) @ vh[:r])
    return ref


def test_parity_with_rank_r_reconstruction_and_param_counts():
    model = _mlp()
    out = effdl.apply(model, lowrank.SVD(rank=3, keep_last=False))
    x = torch.randn(16, 20)
    ref = _reconstructed(model, {"0": 3, "2": 3})
    torch.testing.assert_close(out(x), ref(x), rtol=1e-4, atol=1e-5)
    assert isinstance(out[0], lowrank.Factorized) and [l.weight.shape for l in out[0]] == [(3, 20), (30, 3)]
    rec = records(out)["lowrank.svd"]
    # Linear(20->30) at rank 3: 3*20 + 30*3 + 30 (bias) = 180; Linear(30->10): 3*30 + 10*3 + 10 = 130
    assert rec.layers["0"].params_after == 180 and rec.layers["2"].params_after == 130
    assert (rec.params_before, rec.params_after) == (630 + 310, 180 + 130)
    assert sum(p.numel() for p in out.parameters()) == 310
    assert isinstance(model[0], nn.Linear)  # the input model is untouched


def test_layers_that_would_not_shrink_are_skipped_and_listed():
    # rank 8: 8 < 20*30/50 = 12 pays for Linear(20->30); 8 >= 30*10/40 = 7.5 does not for Linear(30->10)
    model = _mlp()
    out = effdl.apply(model, lowrank.SVD(rank=8, keep_last=False))
    rec = records(out)["lowrank.svd"]
    assert list(rec.layers) == ["0"] and "needs rank < 7.5" in rec.skipped["2"]
    assert isinstance(out[2], nn.Linear) and torch.equal(out[2].weight, model[2].weight)
    out12 = effdl.apply(model, lowrank.SVD(rank=12, layers=("0",)))
    assert "needs rank < 12.0" in records(out12)["lowrank.svd"].skipped["0"]


def test_ratio_and_exclude():
    out = effdl.apply(_mlp(), lowrank.SVD(rank="ratio", ratio=0.25, exclude=("2",)))
    rec = records(out)["lowrank.svd"].layers
    assert list(rec) == ["0"] and rec["0"].rank == 5  # round(0.25 * min(30, 20))


def test_energy_rank_hand_computed():
    s = torch.tensor([3.0, 2.0, 1.0])  # energies 9, 4, 1 of 14: cumulative 0.643, 0.929, 1.0
    assert energy_rank(s, 0.6) == 1
    assert energy_rank(s, 0.9) == 2
    assert energy_rank(s, 0.95) == 3
    # a 40x40 layer with singular values 10, 5, 1, 0.1 (x36): 0.95 of the energy needs rank 2
    torch.manual_seed(1)
    q1, _ = torch.linalg.qr(torch.randn(40, 40))
    q2, _ = torch.linalg.qr(torch.randn(40, 40))
    sv = torch.tensor([10.0, 5.0, 1.0] + [0.1] * 37)
    lin = nn.Linear(40, 40)
    with torch.no_grad():
        lin.weight.copy_(q1 @ torch.diag(sv) @ q2.T)
    out = effdl.apply(nn.Sequential(lin), lowrank.SVD(rank="energy", energy=0.95))
    info = records(out)["lowrank.svd"].layers["0"]
    assert info.rank == 2 and info.energy_kept == pytest.approx(125 / (126 + 0.37), abs=1e-4)


def test_sensitivity_meets_the_parameter_budget(digits_task):
    cfg = lowrank.SVD(rank="sensitivity", budget=0.4, sensitivity_ratios=(0.1, 0.2, 0.3, 0.5))
    out = effdl.apply(digits_task, cfg)
    rec = records(out)["lowrank.svd"]
    before = sum(m.weight.numel() for m in digits_task.model.modules() if isinstance(m, nn.Linear))
    after = sum(m.weight.numel() for m in out.modules() if isinstance(m, nn.Linear))
    assert after <= 0.4 * before
    for name, info in rec.layers.items():
        assert info.rank in {p.rank for p in rec.sensitivity[name]}
    # the curves are measured drops: truncating harder never helps much more than noise
    first = next(iter(rec.sensitivity.values()))
    assert first[0].drop >= first[-1].drop - 0.02
    base = digits_task.evaluate(digits_task.model, "val")["accuracy"]
    assert digits_task.evaluate(out, "val")["accuracy"] >= base - 0.15


def test_finetune_recovers_accuracy(digits_task):
    # rank 4 everywhere costs ~60 points on digits; two epochs of fine-tuning win back 30+ of them
    raw = effdl.apply(digits_task, lowrank.SVD(rank=4))
    tuned = effdl.apply(digits_task, lowrank.SVD(rank=4, finetune_epochs=2, lr=3e-3))
    acc_raw = digits_task.evaluate(raw, "val")["accuracy"]
    acc_tuned = digits_task.evaluate(tuned, "val")["accuracy"]
    assert acc_tuned > acc_raw + 0.2, (acc_raw, acc_tuned)
    with pytest.raises(ConfigError, match="needs training"):
        effdl.apply(digits_task.model, lowrank.SVD(rank=2, finetune_epochs=1))
    with pytest.raises(ConfigError, match="needs calibration"):  # the sensitivity analysis evaluates on val
        effdl.apply(digits_task.model, lowrank.SVD(rank="sensitivity"))


def test_reload_without_pickle(tmp_path):
    model = _mlp()
    out = effdl.apply(model, lowrank.SVD(rank=4, layers=("0",)))
    save_tensors(out.state_dict(), tmp_path / "model.safetensors")
    write_json(tmp_path / "structure.json", lowrank.structure_of(out))
    import json

    fresh = lowrank.rebuild(_mlp(seed=5), json.loads((tmp_path / "structure.json").read_text()))
    fresh.load_state_dict(load_weights(tmp_path / "model.safetensors"))
    x = torch.randn(8, 20)
    assert torch.equal(fresh(x), out(x))


@pytest.mark.parametrize("bad, match", [
    ({"rank": 0}, "greater than or equal to 1"),
    ({"rank": -3}, "greater than or equal to 1"),
    ({"ratio": 0.0}, "greater than 0"),
    ({"energy": 1.5}, "less than or equal to 1"),
    ({"budget": 1.0}, "less than 1"),
    ({"rank": "sensitive"}, "rank"),
])
def test_bad_configs(bad, match):
    with pytest.raises(ConfigError, match=match):
        lowrank.SVD(**bad)


def test_rank_above_full_rank_names_the_max():
    with pytest.raises(ConfigError, match=r"rank 25 exceeds the full rank of layer '0' \(max 20\)"):
        effdl.apply(_mlp(), lowrank.SVD(rank=25))


def test_unsupported_layer_and_empty_scope():
    with pytest.raises(UnsupportedModuleError, match=r"'1' is a ReLU"):
        effdl.apply(_mlp(), lowrank.SVD(rank=2, layers=("1",)))
    with pytest.raises(ConfigError, match="matches no module"):
        effdl.apply(_mlp(), lowrank.SVD(rank=2, layers=("fc9",)))


def test_config_round_trip():
    from effdl.core.registry import config_from_dict

    cfg = lowrank.SVD(rank="sensitivity", budget=0.3, layers=("0",))
    assert config_from_dict(cfg.to_dict()) == cfg
    assert config_from_dict(lowrank.SVD(rank=7).to_dict()).rank == 7


def test_classifier_kept_dense_by_default():
    # a rank-3 classifier could tell at most 3 + 1 classes apart: by default the last layer stays dense
    model = _mlp()
    out = effdl.apply(model, lowrank.SVD(rank=3))
    rec = records(out)["lowrank.svd"]
    assert list(rec.layers) == ["0"] and "classifier" in rec.skipped["2"]
    assert out[2] is not model[2] and torch.equal(out[2].weight, model[2].weight)
    # naming it explicitly decomposes it
    named = effdl.apply(model, lowrank.SVD(rank=3, layers=("2",)))
    assert list(records(named)["lowrank.svd"].layers) == ["2"]


def test_a_layer_used_twice_is_factorized_once_and_stays_shared():
    torch.manual_seed(0)
    fc = nn.Linear(20, 20)
    model = nn.Sequential(fc, nn.ReLU(), fc, nn.ReLU(), nn.Linear(20, 10)).eval()
    out = effdl.apply(model, lowrank.SVD(rank=3))
    assert isinstance(out[0], lowrank.Factorized) and out[0] is out[2]
    x = torch.randn(8, 20)
    ref = _reconstructed(model, {"0": 3})  # deepcopy keeps the sharing: one reconstruction, used twice
    assert ref[0] is ref[2]
    torch.testing.assert_close(out(x), ref(x), rtol=1e-4, atol=1e-5)
    # counted once: the factor pair (3*20 + 20*3 + 20) and the classifier (20*10 + 10)
    assert sum(p.numel() for p in out.parameters()) == 140 + 210


class _TiedLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 20)
        self.mid = nn.Linear(20, 20)
        self.head = nn.Linear(20, 10, bias=False)
        self.head.weight = self.emb.weight  # the usual input/output embedding tie

    def forward(self, ids):
        return self.head(torch.relu(self.mid(self.emb(ids).mean(1))))


def test_a_weight_tied_to_an_embedding_is_left_dense_and_tied():
    torch.manual_seed(0)
    out = effdl.apply(_TiedLM().eval(), lowrank.SVD(rank=3, keep_last=False))
    rec = records(out)["lowrank.svd"]
    assert list(rec.layers) == ["mid"]
    assert "tied to 'emb' (Embedding)" in rec.skipped["head"]
    assert out.head.weight is out.emb.weight


def test_applying_svd_twice_leaves_the_first_factorization_alone():
    model = _mlp()
    once = effdl.apply(model, lowrank.SVD(rank=3, keep_last=False))
    twice = effdl.apply(once, lowrank.SVD(rank=2, keep_last=False))
    x = torch.randn(16, 20)
    torch.testing.assert_close(twice(x), once(x), rtol=0, atol=0)
    assert [l.weight.shape for l in twice[0]] == [(3, 20), (30, 3)]
    rec = records(twice)["lowrank.svd"]
    assert not rec.layers and all("earlier low-rank" in why for why in rec.skipped.values())
    assert set(rec.skipped) == {"0.0", "0.1", "2.0", "2.1"}
    with pytest.raises(UnsupportedModuleError, match="factor of an earlier low-rank decomposition"):
        effdl.apply(once, lowrank.SVD(rank=2, layers=("0.0",)))
