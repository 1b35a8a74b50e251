import math

import pytest
import torch
import torch.nn as nn

import effdl
from effdl.core.errors import ConfigError, UnsupportedModuleError
from effdl.learn import nt_xent
from effdl.learn.selfsup import classifier_head, labelled_subset, pretrain
from effdl.zoo import build


def test_nt_xent_hand_computed_2x2():
    """Two pairs of 2-d embeddings. Identical views e1, e2: for each of the 4 anchors the
    similarities to the other 3 are 0, 1 (its positive), 0, so l = -log(e^(1/t) / (e^(1/t) + 2))."""
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert float(nt_xent(z, z, 1.0)) == pytest.approx(math.log(1 + 2 / math.e), rel=1e-6)
    assert float(nt_xent(z, z, 0.5)) == pytest.approx(math.log(1 + 2 / math.e ** 2), rel=1e-6)
    # unnormalised, non-orthogonal views: z1 = [(2, 0), (0, 1)], z2 = [(3, 4), (1, 1)] (normalised inside)
    z1 = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    u = [(1.0, 0.0), (0.0, 1.0), (0.6, 0.8), (1 / math.sqrt(2), 1 / math.sqrt(2))]
    pos = {0: 2, 1: 3, 2: 0, 3: 1}
    tau = 0.5
    total = 0.0
    for i in range(4):
        sims = {k: (u[i][0] * u[k][0] + u[i][1] * u[k][1]) / tau for k in range(4) if k != i}
        total += -math.log(math.exp(sims[pos[i]]) / sum(math.exp(s) for s in sims.values()))
    assert float(nt_xent(z1, z2, tau)) == pytest.approx(total / 4, rel=1e-6)


def test_bad_inputs():
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        nt_xent(torch.ones(2, 2), torch.ones(2, 2), 0.0)
    with pytest.raises(ConfigError, match="temperature"):
        effdl.learn.SimCLR(temperature=0.0)
    with pytest.raises(ConfigError, match="labels"):
        effdl.learn.SimCLR(labels=0)
    with pytest.raises(ConfigError, match="N >= 2"):
        nt_xent(torch.ones(1, 2), torch.ones(1, 2), 0.5)
    with pytest.raises(UnsupportedModuleError, match="needs a model ending in an nn.Linear"):
        classifier_head(nn.Sequential(nn.Conv2d(1, 2, 3)))


def test_labelled_subset_is_class_balanced(digits_task):
    sub = labelled_subset(digits_task, 20, seed=0)
    ys = sorted(int(sub.splits["train"][i][1]) for i in range(len(sub.splits["train"])))
    assert ys == sorted(list(range(10)) * 2)
    assert sub.splits["val"] is digits_task.splits["val"]
    with pytest.raises(ConfigError, match="use at most"):
        labelled_subset(digits_task, 10**6)


def test_pretraining_lowers_the_contrastive_loss(digits_task):
    torch.manual_seed(0)
    model = build("lenet5", input_shape=digits_task.input_shape, num_classes=10, width=0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = effdl.learn.SimCLR(epochs=4, lr=3e-3, batch_size=128, cutout=2, finetune_steps=0)
    _, losses = pretrain(model, digits_task, cfg)
    k = 5
    assert sum(losses[-k:]) / k < sum(losses[:k]) / k - 0.2
    assert set(model.state_dict()) == set(before)  # the projection head is not left on the model
    assert not classifier_head(model)._forward_pre_hooks


def test_registered_simclr_with_few_labels(digits_task):
    torch.manual_seed(0)
    model = build("lenet5", input_shape=digits_task.input_shape, num_classes=10, width=0.5)
    cfg = effdl.learn.SimCLR(epochs=2, lr=3e-3, batch_size=128, cutout=2, labels=50, finetune_steps=60,
                             finetune_lr=3e-3)
    out = effdl.apply(model, cfg, task=digits_task)
    assert out is not model
    assert digits_task.evaluate(out)["accuracy"] > 0.4  # 50 labels, chance is 0.1


def test_linear_probe_trains_only_the_classifier(digits_task):
    from effdl.learn.selfsup import finetune

    torch.manual_seed(0)
    model = build("lenet5", input_shape=digits_task.input_shape, num_classes=10, width=0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    finetune(model, digits_task, effdl.learn.SimCLR(labels=20, finetune="linear", finetune_steps=5, finetune_lr=1e-2))
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"11.weight", "11.bias"}  # the last Linear only
    assert all(p.requires_grad for p in model.parameters())  # frozen parameters are released again
