"""prune.weights: saliencies against hand-computed values, granularities, distributions, schedules
and masks through training (real digits data for anything trained)."""
import copy

import pytest
import torch
import torch.nn as nn

import effdl
from effdl.compress.prune import masks as masklib
from effdl.compress.prune import saliency as sal
from effdl.compress.prune.distribution import build_masks, prunable_layers
from effdl.compress.prune.granularity import Granularity, layer_mask
from effdl.compress.prune.schedule import (
    cubic_sparsity,
    iterative_targets,
    pruning_steps,
    train_gradual,
)
from effdl.compress.prune.weights import WeightPruneConfig, layer_sparsity
from effdl.core.errors import ConfigError


def _lin(rows, bias=False):
    w = torch.tensor(rows, dtype=torch.float32)
    m = nn.Linear(w.shape[1], w.shape[0], bias=bias)
    with torch.no_grad():
        m.weight.copy_(w)
    return m


def _quadratic(model, x, y):
    return 0.5 * (model(x) - y).square().sum(1).mean()


# Quadratic loss 0.5 ||W x - y||^2 averaged over two orthogonal inputs x1 = (1, 0), x2 = (0, 2):
# H[(j,k),(j',k')] = delta_jj' mean_s x_sk x_sk', so diag(H) = [[0.5, 2], [0.5, 2]] and H is diagonal.
W = [[1.0, -2.0], [3.0, -4.0]]
X = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
BATCHES = [(X, torch.zeros(2, 2))]


def _scores(name, **kw):
    model = nn.Sequential(_lin(W))
    return sal.compute(model, ["0"], name, batches=BATCHES, loss_fn=_quadratic, **kw)["0"]


def test_weight_only_saliencies():
    assert _scores("l1").tolist() == [[1, 2], [3, 4]]
    assert _scores("l2").tolist() == [[1, 4], [9, 16]]
    g = torch.Generator().manual_seed(7)
    assert torch.equal(_scores("random", seed=7), torch.rand(2, 2, generator=g))
    assert not torch.equal(_scores("random", seed=7), _scores("random", seed=8))


def test_taylor_hand_computed():
    # batch gradient = mean of per-sample grads (W x - y) x^T = [[0.5, -4], [1.5, -8]]; |g * w|:
    assert torch.allclose(_scores("taylor"), torch.tensor([[0.5, 8.0], [4.5, 32.0]]))


@pytest.mark.parametrize("method", ["exact", "hutchinson", "auto"])
def test_obd_hand_computed(method):
    # 0.5 * H_ii * w^2 with diag(H) = [[0.5, 2], [0.5, 2]]; Hutchinson is exact for a diagonal H.
    expect = torch.tensor([[0.25, 4.0], [2.25, 16.0]])
    assert torch.allclose(_scores("obd", obd_method=method), expect, atol=1e-6)


def test_fisher_hand_computed():
    # per-sample grads [[1, 0], [3, 0]] and [[0, -8], [0, -16]]; mean of squares:
    expect = torch.tensor([[0.5, 32.0], [4.5, 128.0]])
    h = sal.hessian_diag_fisher(nn.Sequential(_lin(W)), ["0"], BATCHES, _quadratic)["0"]
    assert torch.allclose(h, expect)


def test_exact_and_hutchinson_match_autograd_hessian_on_a_nonlinear_net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    batches = [(torch.randn(16, 3), torch.randint(0, 3, (16,)))]
    w = model[0].weight
    x, y = batches[0]

    def loss_of(wv):
        h = torch.tanh(x @ wv.view(4, 3).T + model[0].bias)
        return nn.functional.cross_entropy(model[2](h), y)

    ref = torch.autograd.functional.hessian(loss_of, w.detach().reshape(-1)).diagonal().view(4, 3)
    exact = sal.hessian_diag_exact(model, ["0"], batches)["0"]
    torch.testing.assert_close(exact, ref, rtol=1e-4, atol=1e-6)
    # Hutchinson is unbiased, error ~ sqrt(sum of squared off-diagonals / probes): 300 probes gave
    # a max error of 6% of the largest entry here; 15% leaves room for other seeds' noise.
    hut = sal.hessian_diag_hutchinson(model, ["0"], batches, probes=300)["0"]
    assert (hut - ref).abs().max() < 0.15 * ref.abs().max()


def test_exact_refused_on_a_large_layer_and_data_saliency_needs_data():
    model = nn.Sequential(nn.Linear(64, 32))
    with pytest.raises(ConfigError, match="obd_method='fisher'"):
        sal.compute(model, ["0"], "obd", batches=[(torch.randn(2, 64), torch.zeros(2, dtype=torch.long))],
                    obd_method="exact")
    with pytest.raises(ConfigError, match="needs training data"):
        sal.compute(model, ["0"], "taylor")
    with pytest.raises(ConfigError, match="Did you mean 'taylor'"):
        sal.compute(model, ["0"], "tailor")


def test_nm_masks_keep_exactly_n_per_group_along_input():
    torch.manual_seed(0)
    w = torch.randn(6, 16)
    for n, m in ((2, 4), (4, 8)):
        mask = layer_mask("fc", w.abs(), w, 0.0, Granularity("n:m", n, m))
        assert torch.equal(mask.view(6, 16 // m, m).sum(-1), torch.full((6, 16 // m), n))
        kept = torch.where(mask, w.abs(), torch.zeros(())).view(6, -1, m)
        dropped = torch.where(~mask, w.abs(), torch.zeros(())).view(6, -1, m)
        assert bool((kept.topk(n, -1).values.min(-1).values >= dropped.max(-1).values).all())
    conv = torch.randn(3, 8, 2, 2)  # flattened input 8 * 2 * 2 = 32
    mask = layer_mask("conv", conv.abs(), conv, 0.0, Granularity("n:m", 2, 4))
    assert torch.equal(mask.reshape(3, 8, 4).sum(-1), torch.full((3, 8), 2))


def test_nm_bad_inputs():
    with pytest.raises(ConfigError, match="1 <= N < M"):
        Granularity("n:m", 4, 4)
    with pytest.raises(ConfigError, match="1 <= N < M"):
        WeightPruneConfig(granularity="n:m", n=4, m=2)
    with pytest.raises(ConfigError, match="set sparsity=0.75"):
        WeightPruneConfig(granularity="n:m", n=1, m=4, sparsity=0.5)
    w = torch.randn(4, 2, 3, 3)  # 18 inputs per output: not divisible by 4
    with pytest.raises(ConfigError, match=r"input dimension \(18 .*not divisible by M=4"):
        layer_mask("conv", w.abs(), w, 0.0, Granularity("n:m", 2, 4))


def test_block_masks_l1_versus_l2_group_norms():
    # 1x4 blocks: A = [3, 0.001, 0.001, 0.001] (L1 3.003, L2 ~3), B = [1, 1, 1, 1] (L1 4, L2 2).
    w = torch.tensor([[3.0, 1e-3, 1e-3, 1e-3], [1.0, 1.0, 1.0, 1.0]])
    g = Granularity("block", block=(1, 4))
    by_l1 = layer_mask("fc", w.abs(), w, 0.5, g, sal.group_reduce("l1"))
    by_l2 = layer_mask("fc", w.square(), w, 0.5, g, sal.group_reduce("l2"))
    assert by_l1.tolist() == [[False] * 4, [True] * 4]
    assert by_l2.tolist() == [[True] * 4, [False] * 4]
    torch.manual_seed(0)
    w = torch.randn(8, 8)
    mask = layer_mask("fc", w.abs(), w, 0.5, Granularity("block", block=(4, 4)))
    tiles = mask.view(2, 4, 2, 4).permute(0, 2, 1, 3).reshape(4, 16)
    assert all(t.all() or not t.any() for t in tiles) and int(mask.sum()) == 32


def test_layer_smaller_than_block_refused():
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ConfigError, match=r"'2' \(2 x 8 as a matrix\) is smaller than the 4x4 block"):
        effdl.apply(model, WeightPruneConfig(granularity="block", block=(4, 4)))
    out = effdl.apply(model, WeightPruneConfig(granularity="block", block=(4, 4), exclude=("2",)))
    assert layer_sparsity(out)["0"] == pytest.approx(0.5)


def test_global_never_empties_a_layer_with_blocks():
    model = nn.Sequential(_lin([[1e-3] * 4, [2e-3] * 4]), _lin([[10.0] * 8, [20.0] * 8]))
    layers = prunable_layers(model)
    scores = sal.l1(model, ["0", "1"])
    with pytest.warns(UserWarning, match="would empty '0'"):
        masks = build_masks(layers, scores, 0.4, Granularity("block", block=(1, 4)), "global")
    assert masks["0"].tolist() == [[False] * 4, [True] * 4]


def test_uniform_and_erk_distributions_hit_the_target():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 64), nn.Linear(64, 10))
    for dist in ("uniform", "erk"):
        out = effdl.apply(model, WeightPruneConfig(sparsity=0.8, distribution=dist))
        per = layer_sparsity(out)
        sizes = {"0": 72, "2": 18432, "3": 640}
        total = sum(per[n] * s for n, s in sizes.items()) / sum(sizes.values())
        assert total == pytest.approx(0.8, abs=3e-3)
        if dist == "erk":  # ERK keeps the small first conv denser than the big Linear
            assert per["0"] < per["2"]


def test_protect_first_last_and_unmatched_scope():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    out = effdl.apply(model, WeightPruneConfig(sparsity=0.5, protect_first_last=True))
    assert layer_sparsity(out) == {"0": 0.0, "2": 0.5, "4": 0.0}
    with pytest.raises(ConfigError, match="'head' matches no module"):
        effdl.apply(model, WeightPruneConfig(sparsity=0.5, exclude=("head",)))


@pytest.mark.parametrize("value", [1.0, -0.1, 1.5])
def test_sparsity_outside_unit_interval_refused(value):
    with pytest.raises(ConfigError, match="sparsity"):
        WeightPruneConfig(sparsity=value)
    with pytest.raises(ConfigError, match=r"in \[0, 1\)"):
        build_masks(prunable_layers(nn.Sequential(nn.Linear(4, 4))), {"0": torch.ones(4, 4)}, value,
                    Granularity(), "global")


def test_tied_weights_pruned_once_and_tie_kept():
    a, b = nn.Linear(8, 8, bias=False), nn.Linear(8, 8, bias=False)
    b.weight = a.weight  # two modules, one Parameter (like tied embeddings)
    model = nn.Sequential(a, nn.ReLU(), b)
    out = effdl.apply(model, WeightPruneConfig(sparsity=0.75, saliency="random"))
    assert out[0].weight is out[2].weight and isinstance(out[0].weight, nn.Parameter)
    assert float((out[0].weight == 0).float().mean()) == 0.75
    assert list(layer_sparsity(out)) == ["0"]


def test_already_sparse_zeros_count_toward_the_target_and_reapply_is_idempotent():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 10, bias=False))
    with torch.no_grad():
        model[0].weight.view(-1)[::2] = 0.0  # 50% zeros, not the smallest magnitudes
    zeros = model[0].weight == 0
    for saliency in ("l1", "random"):
        out = effdl.apply(model, WeightPruneConfig(sparsity=0.6, saliency=saliency))
        assert layer_sparsity(out)["0"] == pytest.approx(0.6) and bool((out[0].weight[zeros] == 0).all())
        again = effdl.apply(out, WeightPruneConfig(sparsity=0.6, saliency=saliency))
        assert torch.equal(again[0].weight, out[0].weight)
    less = effdl.apply(model, WeightPruneConfig(sparsity=0.3))  # below what it has: nothing changes
    assert torch.equal(less[0].weight, model[0].weight)


def test_cubic_schedule_hand_computed():
    # s_f = 0.9, s_i = 0, t0 = 10, n = 4, dt = 5: s = 0.9 (1 - (1 - (t - 10) / 20)^3)
    kw = dict(final=0.9, initial=0.0, start=10, n=4, every=5)
    got = [cubic_sparsity(t, **kw) for t in (5, 10, 15, 20, 25, 30, 100)]
    assert got == pytest.approx([0.0, 0.0, 0.5203125, 0.7875, 0.8859375, 0.9, 0.9])
    assert cubic_sparsity(10, final=0.8, initial=0.2, start=10, n=2, every=1) == pytest.approx(0.2)
    assert pruning_steps(10, 4, 5) == [10, 15, 20, 25, 30]
    assert iterative_targets(0.875, 3) == pytest.approx([0.5, 0.75, 0.875])


def test_masks_respected_through_task_train_and_folded_to_plus_zero(digits_task):
    model = copy.deepcopy(digits_task.model)
    layers = prunable_layers(model)
    masks = build_masks(layers, sal.l1(model, [n for n, _ in layers]), 0.7, Granularity(), "global")
    keys = list(model.state_dict())
    masklib.attach(model, masks)
    # keep_sparsity=False: only the parametrization keeps the pruned weights at zero.
    digits_task.train(model, epochs=1, lr=1e-2, keep_sparsity=False)
    for name, m in layers:
        assert bool((m.weight[~masks[name]] == 0).all())
    masklib.fold(model)
    assert list(model.state_dict()) == keys
    for name, m in layers:
        assert isinstance(m.weight, nn.Parameter)
        pruned = m.weight[~masks[name]]
        assert bool((pruned == 0).all()) and not bool(torch.signbit(pruned).any())  # +0.0, never -0.0


def test_gradual_masks_only_grow_and_reach_the_target(digits_task):
    model = copy.deepcopy(digits_task.model)
    layers = prunable_layers(model)
    names = [n for n, _ in layers]
    history = []

    def prune(target):
        masks = build_masks(layers, sal.l1(model, names), target, Granularity(), "global")
        masklib.update(model, masks)
        history.append((target, masklib.masks_of(model)))

    train_gradual(model, digits_task, prune, final=0.9, initial=0.2, start=3, n=4, every=5, total_steps=40, lr=3e-3)
    assert [t for t, _ in history] == pytest.approx([cubic_sparsity(t, final=0.9, initial=0.2, start=3, n=4, every=5)
                                                     for t in (3, 8, 13, 18, 23)])
    for (_, before), (_, after) in zip(history, history[1:]):
        assert all(bool((after[n] <= before[n]).all()) for n in names)  # nothing pruned regrows
    masklib.fold(model)
    total = sum(m.weight.numel() for _, m in layers)
    zeros = sum(int((m.weight == 0).sum()) for _, m in layers)
    assert zeros / total == pytest.approx(0.9, abs=1 / total)


def test_technique_gradual_and_data_saliencies_on_digits(digits_task):
    base = digits_task.evaluate(digits_task.model, "val")["accuracy"]
    cfg = WeightPruneConfig(sparsity=0.8, schedule="gradual", prune_epochs=2, frequency=5, finetune_epochs=1, lr=3e-3)
    out = effdl.apply(digits_task, cfg)
    per = layer_sparsity(out)
    sizes = {n: m.weight.numel() for n, m in prunable_layers(out)}
    assert sum(per[n] * sizes[n] for n in per) / sum(sizes.values()) == pytest.approx(0.8, abs=1e-3)
    # Gradual 80% on the 64-32 digits MLP stays within 3 points of its dense self (measured ~0-1).
    assert digits_task.evaluate(out, "val")["accuracy"] >= base - 0.03
    for saliency in ("taylor", "obd"):
        out = effdl.apply(digits_task, WeightPruneConfig(sparsity=0.5, saliency=saliency, granularity="n:m",
                                                              saliency_batches=1))
        w = out[1].weight  # 64 inputs: 16 groups of 4, exactly 2 non-zeros each
        assert torch.equal((w != 0).view(w.shape[0], -1, 4).sum(-1), torch.full((w.shape[0], 16), 2))
    assert effdl.core.registry.get("prune.weights").needs_for(WeightPruneConfig(saliency="taylor")) == "training"


def test_iterative_schedule_records_its_accuracy_path(digits_task):
    from effdl.core.records import records

    cfg = WeightPruneConfig(sparsity=0.875, schedule="iterative", rounds=3, finetune_epochs=0.5)
    out = effdl.apply(digits_task, cfg)
    path = records(out)["trajectory"]
    assert path.kind == "weights"
    events = [p[3] for p in path.points]
    assert events == ["start", "prune", "finetune"] * 1 + ["prune", "finetune"] * 2
    # 1 - (1 - 0.875)^(r/3) = 0.5, 0.75, 0.875; epochs accumulate 0.5 per fine-tune
    assert [p[1] for p in path.points] == pytest.approx([0, 0.5, 0.5, 0.75, 0.75, 0.875, 0.875])
    assert [p[0] for p in path.points] == pytest.approx([0, 0, 0.5, 0.5, 1.0, 1.0, 1.5])
    assert path.points[0][2] == pytest.approx(digits_task.evaluate(digits_task.model, "val")["accuracy"])
    assert path.points[-1][2] == pytest.approx(digits_task.evaluate(out, "val")["accuracy"])
    # without fine-tuning there is nothing to compare: no record
    assert "trajectory" not in records(effdl.apply(digits_task, WeightPruneConfig(sparsity=0.5)))
