import pytest
import torch

import effdl
from effdl.compress.prune.lottery import LotteryConfig, find_ticket, lottery_history
from effdl.core.errors import ConfigError
from effdl.core.tasks import ImageClassification
from effdl.zoo import build


@pytest.fixture(scope="module")
def task(digits):
    torch.manual_seed(0)
    model = build("mlp", input_shape=digits.input_shape, num_classes=digits.num_classes, hidden=(64, 32))
    return ImageClassification(model, digits.train, digits.val, digits.test, num_classes=digits.num_classes)


def _weights(net):
    return {n: net.get_submodule(n).weight.detach().clone() for n in ("1", "3", "5")}


def test_rewind_to_init_bitwise_and_remaining_fraction(task):
    theta0 = {k: v.clone() for k, v in task.model.state_dict().items()}
    seen = []

    def on_rewind(r, kind, net, masks):
        seen.append(r)
        sd = net.state_dict()
        for n, mask in masks.items():
            w, w0 = sd[f"{n}.weight"], theta0[f"{n}.weight"]
            assert torch.equal(w[mask], w0[mask])  # survivors are exactly theta_0 (bitwise)
            assert (w[~mask] == 0).all() and not torch.signbit(w[~mask]).any()  # pruned: +0.0
            assert torch.equal(sd[f"{n}.bias"], theta0[f"{n}.bias"])
            # (1 - rate)^r of the layer remains, within 1 weight
            assert abs(int(mask.sum()) - mask.numel() * 0.8 ** r) <= 1

    cfg = LotteryConfig(rate=0.2, rounds=3, epochs=1, lr=3e-3, init="given")
    model, hist = find_ticket(_copy(task.model), task, cfg, on_rewind=on_rewind)
    assert seen == [0, 1, 2, 3]
    rem = [row["weights_remaining"] for row in hist["rounds"]]
    assert rem == pytest.approx([1.0, 0.8, 0.64, 0.512], abs=2 / 6464)
    assert hist["rounds"][3]["remaining_per_layer"] == {"1": round(4096 * 0.512), "3": round(2048 * 0.512),
                                                        "5": round(320 * 0.512)}
    assert all(0.0 <= row["ticket"]["test_accuracy"] <= 1.0 for row in hist["rounds"])
    # the final model is the last round's trained ticket: exactly that sparsity
    assert sum(int((w == 0).sum()) for w in _weights(model).values()) == 6464 - sum(hist["rounds"][3]["remaining_per_layer"].values())


def _copy(model):
    import copy

    return copy.deepcopy(model)


def test_rewind_early_step_k(task):
    snaps = {}

    def on_rewind(r, kind, net, masks):
        snaps[r] = ({k: v.clone() for k, v in net.state_dict().items()}, {n: m.clone() for n, m in masks.items()})

    cfg = LotteryConfig(rate=0.5, rounds=1, epochs=1, lr=3e-3, rewind="early", rewind_step=3, init="given")
    _, hist = find_ticket(_copy(task.model), task, cfg, on_rewind=on_rewind)
    assert hist["rewound_to"] == "step 3"
    # replay the first 3 steps of round 0 with the same trainer: survivors equal those weights
    from effdl.compress.prune.sparse_training import masked_train

    ref = _copy(task.model)
    k_weights = {}

    def grab(step, net):
        if step == 2:
            k_weights.update({k: v.clone() for k, v in net.state_dict().items()})

    masked_train(ref, task, {n: torch.ones_like(ref.get_submodule(n).weight, dtype=torch.bool) for n in ("1", "3", "5")},
                 epochs=1, lr=3e-3, seed=0, on_step=grab)
    sd, masks = snaps[1]
    for n, mask in masks.items():
        assert torch.equal(sd[f"{n}.weight"][mask], k_weights[f"{n}.weight"][mask])
        assert not torch.equal(sd[f"{n}.weight"][mask], task.model.state_dict()[f"{n}.weight"][mask])


def test_random_reinit_control_differs_and_history_attached(task):
    theta0 = task.model.state_dict()
    controls = []

    def on_rewind(r, kind, net, masks):
        if kind == "control":
            controls.append(r)
            for n, mask in masks.items():
                w = net.state_dict()[f"{n}.weight"]
                assert (w[~mask] == 0).all()
                assert not torch.equal(w[mask], theta0[f"{n}.weight"][mask])

    cfg = LotteryConfig(rate=0.3, rounds=2, epochs=1, lr=3e-3, control="random_reinit", init="given", scope="global")
    _, hist = find_ticket(_copy(task.model), task, cfg, on_rewind=on_rewind)
    assert controls == [1, 2]
    assert "control" in hist["rounds"][2] and "control" not in hist["rounds"][0]
    # global scope: the total remaining is (1 - rate)^r of all weights, within 1
    assert abs(hist["rounds"][2]["weights_remaining"] * 6464 - 6464 * 0.49) <= 1

    out = effdl.apply(task, LotteryConfig(rate=0.2, rounds=1, epochs=0.5, lr=3e-3))
    h = lottery_history(out)
    assert [row.round for row in h.rounds] == [0, 1]
    assert "_effdl_lottery_history" not in str(list(out.state_dict()))
    with pytest.raises(ConfigError, match="no lottery history"):
        lottery_history(task.model)


@pytest.mark.parametrize("bad", [{"rate": 0.0}, {"rate": 1.0}, {"rate": 1.5}, {"rounds": 0}, {"epochs": 0},
                                 {"rewind": "late"}, {"control": "shuffle"}])
def test_bad_config(bad):
    with pytest.raises(ConfigError):
        LotteryConfig(**bad)


def test_bad_rewind_combinations(task):
    with pytest.raises(ConfigError, match="rewind_step"):
        find_ticket(_copy(task.model), task, LotteryConfig(rewind="early", rewind_step=0, epochs=0.1))
    with pytest.raises(ConfigError, match="rewind_step"):
        find_ticket(_copy(task.model), task, LotteryConfig(rewind="init", rewind_step=5, epochs=0.1))
    with pytest.raises(ConfigError, match="before the end"):
        find_ticket(_copy(task.model), task, LotteryConfig(rewind="early", rewind_step=10_000, epochs=0.1))
