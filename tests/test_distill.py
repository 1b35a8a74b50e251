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


# -- temperature / alpha / teachers -------------------------------------------------------------
def test_loss_function_refuses_bad_temperature_and_alpha():
    s, t, y = torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([0])
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        distillation_loss(s, t, y, 0.0, 0.5)
    with pytest.raises(ConfigError, match="alpha must be in"):
        distillation_loss(s, t, y, 2.0, -0.1)


@pytest.mark.parametrize("alpha", [-0.01, 1.01])
def test_alpha_outside_unit_interval(alpha):
    with pytest.raises(ConfigError, match="alpha"):
        effdl.learn.Distill(alpha=alpha)


def test_ensemble_averages_softened_probabilities():
    from effdl.learn.distill import teacher_log_probs

    t1, t2 = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 4.0]])
    T = 2.0
    # hand: softmax([1, 0, 0]) and softmax([0, 0, 2]), averaged
    e = math.e
    p1 = [e / (e + 2), 1 / (e + 2), 1 / (e + 2)]
    p2 = [1 / (2 + e * e), 1 / (2 + e * e), e * e / (2 + e * e)]
    mean = torch.tensor([[(a + b) / 2 for a, b in zip(p1, p2)]])
    got = teacher_log_probs([t1, t2], T).exp()
    assert torch.allclose(got, mean, atol=1e-6)
    assert float(got.sum()) == pytest.approx(1.0, abs=1e-6)
    # one teacher given twice is that teacher
    assert torch.allclose(teacher_log_probs([t1, t1], T), teacher_log_probs(t1, T), atol=1e-6)


def test_zoo_teacher_config_checks():
    with pytest.raises(ConfigError, match="needs teacher_data"):
        effdl.learn.Distill(teacher="lenet5")
    with pytest.raises(ConfigError, match="unknown teacher 'lenet'.*Did you mean 'lenet5'"):
        effdl.learn.Distill(teacher="lenet", teacher_data="mnist")
    with pytest.raises(ConfigError, match="exactly one zoo teacher"):
        effdl.learn.Distill(teacher_checkpoint="x.safetensors")
    with pytest.raises(ConfigError, match="empty list"):
        effdl.learn.Distill(teacher=[])
    from effdl.core.registry import config_from_dict

    cfg = effdl.learn.Distill(teacher=["task", "lenet5"], teacher_data="digits")
    assert cfg.teacher_names() == ("task", "lenet5")
    assert config_from_dict(json_round_trip(cfg.to_dict())) == cfg


def json_round_trip(d):
    import json

    return json.loads(json.dumps(d))


def test_zoo_teacher_from_checkpoint(tmp_path, digits_task):
    from effdl.core.io import save_tensors
    from effdl.learn.distill import resolve_teachers
    from effdl.zoo import build

    torch.manual_seed(1)
    ref = build("lenet5", input_shape=digits_task.input_shape, num_classes=10)
    save_tensors(ref.state_dict(), tmp_path / "t.safetensors")
    cfg = effdl.learn.Distill(teacher="lenet5", teacher_checkpoint=str(tmp_path / "t.safetensors"), epochs=0.2)
    (teacher,) = resolve_teachers(cfg, digits_task.model, digits_task)
    x = digits_task.example_input(4)
    assert torch.equal(teacher(x), ref(x))
    out = effdl.apply(digits_task, cfg)  # a CNN teaches the MLP: only the label space must agree
    assert isinstance(out, nn.Sequential)


def test_ensemble_of_modules_teaches(digits_task):
    """Two teachers in Python use: the task's MLP and a copy; the student learns from their average."""
    import copy

    from effdl.learn import distill_with
    from effdl.zoo import build

    torch.manual_seed(0)
    student = build("mlp", input_shape=digits_task.input_shape, num_classes=10, hidden=(16,))
    before = digits_task.evaluate(student)["accuracy"]
    out = distill_with(student, digits_task, effdl.learn.Distill(epochs=10, lr=1e-2),
                       teachers=[digits_task.model, copy.deepcopy(digits_task.model)])
    assert out is student
    assert before < 0.3 and digits_task.evaluate(out)["accuracy"] > 0.8
    with pytest.raises(ConfigError, match="teacher outputs 10 classes but the student 7"):
        distill_with(nn.Sequential(nn.Flatten(), nn.Linear(64, 7)), digits_task, effdl.learn.Distill(),
                     teachers=[digits_task.model])


@pytest.mark.parametrize("t", [0.0, -2.0])
def test_temperature_not_positive(t):
    with pytest.raises(ConfigError, match="temperature"):
        effdl.learn.Distill(temperature=t)


class _Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 3)

    def forward(self, x):
        self.seen = x.clone()
        return self.lin(x.flatten(1))


def test_teacher_labels_the_augmented_input_the_student_sees():
    from effdl.learn.distill import logit_loss

    from torch.utils.data import TensorDataset

    torch.manual_seed(0)
    x, y = torch.rand(8, 1, 4, 4) + 1.0, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    teacher, student = _Recorder(), _Recorder()
    task = effdl.Classification(student, TensorDataset(x, y), TensorDataset(x, y), num_classes=3)
    loss = logit_loss(effdl.learn.Distill(shift=1, cutout=2, mixup=0.5), [teacher], task)(student, x, y)
    assert torch.equal(teacher.seen, student.seen)
    assert not torch.equal(student.seen, x)  # the batch was augmented
    assert torch.isfinite(loss)
    plain = logit_loss(effdl.learn.Distill(temperature=2.0, alpha=0.25), [teacher], task)(student, x, y)
    assert torch.equal(student.seen, x)  # no augmentation by default
    with torch.no_grad():
        expected = distillation_loss(student(x), teacher(x), y, 2.0, 0.25)
    assert float(plain.detach()) == pytest.approx(float(expected), rel=1e-6)
