import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import effdl
from effdl.core.errors import ConfigError
from effdl.learn import distillation_loss


def test_loss_hand_computed():
    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, 1.0]])
    y = torch.tensor([0])
    T, alpha = 2.0, 0.25
    ps = torch.softmax(s / T, 1)[0]
    pt = torch.softmax(t / T, 1)[0]
    kl = float((pt * (pt / ps).log()).sum())
    ce = -math.log(float(torch.softmax(s, 1)[0, 0]))
    expected = (1 - alpha) * ce + alpha * T * T * kl
    assert float(distillation_loss(s, t, y, T, alpha)) == pytest.approx(expected, rel=1e-6)


def test_alpha_zero_is_cross_entropy():
    torch.manual_seed(0)
    s, t, y = torch.randn(5, 3), torch.randn(5, 3), torch.tensor([0, 1, 2, 0, 1])
    assert float(distillation_loss(s, t, y, 3.0, 0.0)) == pytest.approx(float(F.cross_entropy(s, y)), rel=1e-6)


@pytest.mark.parametrize("bad", [{"temperature": 0.0}, {"temperature": -1.0}, {"alpha": 1.5}])
def test_bad_config(bad):
    with pytest.raises(ConfigError):
        effdl.learn.Distill(**bad)


def test_teacher_student_class_mismatch(digits_task):
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 7))
    with pytest.raises(ConfigError, match="teacher outputs 10 classes but the student 7"):
        effdl.apply(student, effdl.learn.Distill(epochs=1), task=digits_task)


def test_distilled_pruned_student_keeps_sparsity_and_learns(digits_task):
    pruned = effdl.apply(digits_task, effdl.prune.Magnitude(sparsity=0.9))
    zeros_before = [int((m.weight == 0).sum()) for m in pruned.modules() if isinstance(m, nn.Linear)]
    acc_before = digits_task.evaluate(pruned)["accuracy"]
    out = effdl.apply(pruned, effdl.learn.Distill(epochs=3, lr=2e-3), task=digits_task)
    zeros_after = [int((m.weight == 0).sum()) for m in out.modules() if isinstance(m, nn.Linear)]
    assert zeros_after == zeros_before
    assert digits_task.evaluate(out)["accuracy"] > acc_before
