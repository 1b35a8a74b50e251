
import pytest
import torch
import torch.nn as nn

import effdl
from effdl.compress.prune import prune_to
from effdl.core.errors import ConfigError


def _lin(values, out=2):
    m = nn.Linear(len(values) // out, out, bias=False)
    with torch.no_grad():
        m.weight.copy_(torch.tensor(values, dtype=torch.float32).view(out, -1))
    return m


def test_global_threshold_hand_computed():
    # |w| over both layers: 1..8; 50% global pruning zeroes 1,2,3,4 wherever they are.
    model = nn.Sequential(_lin([1, -8, 3, 6]), _lin([-2, 5, 4, 7]))
    prune_to(model, 0.5, "global")
    assert model[0].weight.flatten().tolist() == [0, -8, 0, 6]
    assert model[1].weight.flatten().tolist() == [0, 5, 0, 7]


def test_layer_scope_prunes_each_layer_equally():
    model = nn.Sequential(_lin([1, 2, 3, 4]), _lin([10, 20, 30, 40]))
    sp = prune_to(model, 0.5, "layer")
    assert sp == {"0": 0.5, "1": 0.5}
    assert model[1].weight.flatten().tolist() == [0, 0, 30, 40]


def test_global_never_empties_a_layer():
    model = nn.Sequential(_lin([0.001, 0.002, 0.003, 0.004]), _lin([10, 20, 30, 40, 50, 60, 70, 80]))
    with pytest.warns(UserWarning, match="would empty '0'"):
        prune_to(model, 0.5, "global")
    assert int((model[0].weight != 0).sum()) == 1 and model[0].weight.flatten()[3] == 0.004


def test_sparsity_zero_is_bit_identical():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.Linear(8, 4))
    out = effdl.apply(model, effdl.prune.Magnitude(sparsity=0.0))
    for a, b in zip(model.state_dict().values(), out.state_dict().values()):
        assert torch.equal(a, b)


def test_exclude_and_unmatched_scope():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    out = effdl.apply(model, effdl.prune.Magnitude(sparsity=0.5, exclude=("2",)))
    assert int((out[2].weight == 0).sum()) == 0
    assert float((out[0].weight == 0).float().mean()) == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="'classifier' matches no module"):
        effdl.apply(model, effdl.prune.Magnitude(sparsity=0.5, exclude=("classifier",)))


def test_tied_weights_pruned_once_and_stay_tied():
    lin = nn.Linear(8, 8, bias=False)
    model = nn.Sequential(lin, nn.ReLU(), lin)  # the same module twice
    out = effdl.apply(model, effdl.prune.Magnitude(sparsity=0.75))
    assert out[0].weight is out[2].weight
    assert float((out[0].weight == 0).float().mean()) == pytest.approx(0.75)


def test_nan_weights_named():
    model = nn.Sequential(nn.Linear(4, 4))
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(ConfigError, match="'0' has NaN/Inf"):
        effdl.apply(model, effdl.prune.Magnitude(sparsity=0.5))


def test_iterative_reaches_target_and_finetune_keeps_zeros(digits_task):
    cfg = effdl.prune.Magnitude(sparsity=0.8, schedule="iterative", rounds=3, finetune_epochs=1)
    pruned = effdl.apply(digits_task, cfg)
    ws = [m.weight for m in pruned.modules() if isinstance(m, nn.Linear)]
    zeros = sum(int((w == 0).sum()) for w in ws)
    total = sum(w.numel() for w in ws)
    assert zeros / total == pytest.approx(0.8, abs=1.0 / total)
    base = digits_task.evaluate(digits_task.model)["accuracy"]
    acc = digits_task.evaluate(pruned)["accuracy"]
    # Fine-tuned 80%-sparse MLP on digits stays within 3 points of its dense self.
    assert acc >= base - 0.03
