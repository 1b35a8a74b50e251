"""share.cluster: k-means against hand-computed centroids, zeros kept, Han's summed centroid
gradients, fine-tuning on real digits data, and the refused inputs."""
import copy

import pytest
import torch
import torch.nn as nn

import effdl
from effdl.compress.share import Cluster, ClusteredModel, clustered_layers, kmeans_1d
from effdl.core.errors import ConfigError, UnsupportedModuleError
from effdl.core.registry import config_from_dict


def _linear(rows):
    w = torch.tensor(rows, dtype=torch.float32)
    m = nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        m.weight.copy_(w)
    return nn.Sequential(m)


def test_kmeans_linear_init_hand_computed():
    c, a = kmeans_1d(torch.tensor([1.0, 2, 3, 10, 11, 12]), 2, "linear")
    assert c.tolist() == [2.0, 11.0] and a.tolist() == [0, 0, 0, 1, 1, 1]


def test_one_lloyd_step_from_each_init():
    v = torch.tensor([0.0, 1, 2, 3, 100])
    # linear: centroids 0 and 100 -> {0,1,2,3} {100} -> means 1.5, 100
    assert kmeans_1d(v, 2, "linear", iters=1)[0].tolist() == [1.5, 100.0]
    # density: quantiles 1/4, 3/4 = 1, 3 -> boundary 2 -> {0,1,2} {3,100} -> means 1, 51.5
    assert kmeans_1d(v, 2, "density", iters=1)[0].tolist() == [1.0, 51.5]
    # converged, both end at the same partition
    assert kmeans_1d(v, 2, "density")[0].tolist() == [1.5, 100.0]


@pytest.mark.parametrize("seed", range(4))
def test_random_init_converges_on_separated_data(seed):
    c, _ = kmeans_1d(torch.tensor([1.0, 2, 3, 10, 11, 12]), 2, "random", seed=seed)
    assert c.tolist() == [2.0, 11.0]


def test_cluster_keeps_zeros_and_shares_values():
    model = _linear([[0.0, 1, 2, 3], [10, 0, 11, 12]])
    out = effdl.apply(model, Cluster(bits=1))
    w = out.float_model[0].weight
    assert w.tolist() == [[0.0, 2, 2, 2], [11, 0, 11, 11]]
    assert torch.equal(w.view(torch.int32) == 0, torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0]]).bool())  # +0.0
    assert torch.equal(out.float_model[0].parametrizations.weight.original, w)  # dense copy kept true
    assert model[0].weight[0, 1].item() == 1.0  # apply copied the model
    assert [n for n, _, _ in clustered_layers(out)] == ["0"]
    # an explicit wrapper: the float model keeps its class
    assert type(out) is ClusteredModel and type(out.float_model) is nn.Sequential


def test_centroid_gradient_is_the_sum_of_its_weights_gradients():
    out = effdl.apply(_linear([[1.0, 2], [10, 11]]), Cluster(bits=1))  # clusters {1,2} -> 1.5, {10,11} -> 10.5
    p = out.float_model[0].parametrizations.weight[0]
    assert p.codebook.tolist() == [1.5, 10.5]
    g = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    (out.float_model[0].weight * g).sum().backward()
    assert p.codebook.grad.tolist() == [3.0, 7.0]  # Han et al.: gradients summed per cluster


def test_conv_bits_and_scope_select_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    out = effdl.apply(model, Cluster(bits=2, conv_bits=3))
    books = {n: p.codebook.numel() for n, _, p in clustered_layers(out)}
    assert books == {"0": 8, "2": 4}
    assert out(torch.randn(2, 1, 6, 6)).shape == (2, 3)
    only = effdl.apply(model, Cluster(bits=2, layers=("2",)))
    assert [n for n, _, _ in clustered_layers(only)] == ["2"]
    excl = effdl.apply(model, Cluster(bits=2, exclude=("2",)))
    assert [n for n, _, _ in clustered_layers(excl)] == ["0"]


def test_fine_tuning_on_digits_keeps_sparsity_and_sharing(digits_task):
    task = digits_task
    pruned = effdl.apply(task, effdl.prune.Magnitude(sparsity=0.7))
    zero = {n: m.weight == 0 for n, m in pruned.named_modules() if isinstance(m, nn.Linear)}
    before = effdl.apply(pruned, Cluster(bits=2))
    tuned = effdl.apply(pruned, Cluster(bits=2, finetune_epochs=3, lr=3e-3), task=task)
    for name, m, p in clustered_layers(tuned):
        w = m.weight
        assert torch.equal(w == 0, zero[name]), name  # pruned weights stay exactly zero
        assert set(w[w != 0].tolist()) <= set(p.codebook.tolist()) and p.codebook.numel() == 4
        assert torch.equal(m.parametrizations.weight.original, w)
    moved = [not torch.equal(p.codebook, q.codebook) for (_, _, p), (_, _, q)
             in zip(clustered_layers(tuned), clustered_layers(before))]
    assert all(moved)
    acc = {k: task.evaluate(m, "val")["accuracy"] for k, m in (("pruned", pruned), ("2bit", before), ("tuned", tuned))}
    # 2-bit sharing costs accuracy on this small MLP; training the centroids recovers most of it
    assert acc["tuned"] > acc["2bit"] and acc["tuned"] >= acc["pruned"] - 0.03, acc


def test_config_round_trip_and_needs():
    cfg = Cluster(bits=5, conv_bits=8, huffman=True, finetune_epochs=1)
    assert config_from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="needs training data"):
        effdl.apply(_linear([[1.0, 2, 3]]), cfg)


@pytest.mark.parametrize("kw", [{"bits": 0}, {"bits": 9}, {"conv_bits": 0}, {"conv_bits": 9}])
def test_bits_out_of_range(kw):
    with pytest.raises(ConfigError, match="bits"):
        Cluster(**kw)


def test_clusters_not_fewer_than_weights():
    with pytest.raises(ConfigError, match=r"3 non-zero weights, not more than its 4 clusters: lower bits"):
        effdl.apply(_linear([[1.0, 2], [0, 3]]), Cluster(bits=2))
    with pytest.raises(ConfigError, match="clusters"):
        kmeans_1d(torch.tensor([1.0, 2.0]), 2)


def test_clustering_twice_is_refused():
    once = effdl.apply(_linear([[1.0, 2, 3, 4, 5]]), Cluster(bits=1))
    with pytest.raises(ConfigError, match="already clustered"):
        effdl.apply(once, Cluster(bits=1))


def test_scope_matching_nothing():
    with pytest.raises(ConfigError, match="'fc9' matches no module"):
        effdl.apply(_linear([[1.0, 2, 3, 4, 5]]), Cluster(bits=1, layers=("fc9",)))
    with pytest.raises(ConfigError, match="'fc9' matches no module"):
        effdl.apply(_linear([[1.0, 2, 3, 4, 5]]), Cluster(bits=1, exclude=("fc9",)))
    with pytest.raises(ConfigError, match="selected no Conv/Linear"):
        effdl.apply(_linear([[1.0, 2, 3, 4, 5]]), Cluster(bits=1, exclude=("0",)))


def test_tied_and_non_float32_weights_refused():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model[1].weight = model[0].weight
    with pytest.raises(UnsupportedModuleError, match="tied weights"):
        effdl.apply(model, Cluster(bits=1))
    with pytest.raises(UnsupportedModuleError, match="call model.float"):
        effdl.apply(nn.Sequential(nn.Linear(4, 4)).double(), Cluster(bits=1))


def test_deepcopy_keeps_the_clustered_model():
    out = effdl.apply(_linear([[1.0, 2, 3, 10, 11, 12]]), Cluster(bits=1))
    twin = copy.deepcopy(out)
    assert torch.equal(twin.float_model[0].weight, out.float_model[0].weight) and type(twin) is ClusteredModel
    assert set(twin.storage_tensors()) == set(out.storage_tensors())
    assert (twin.float_model[0].parametrizations.weight[0].codebook
            is not out.float_model[0].parametrizations.weight[0].codebook)


def test_per_layer_bits_by_disjoint_steps():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    first = effdl.apply(model, Cluster(bits=3, layers=("0",)))
    both = effdl.apply(first, Cluster(bits=1, layers=("2",)))
    assert {n: p.codebook.numel() for n, _, p in clustered_layers(both)} == {"0": 8, "2": 2}
    with pytest.raises(ConfigError, match="'0' is already clustered"):
        effdl.apply(first, Cluster(bits=1))
