import math

import pytest
import torch
import torch.nn as nn

import effdl
from effdl.core.errors import ConfigError
from effdl.learn import attention_loss, attention_map, hint_distill, make_adapter
from effdl.zoo import build


def test_adapter_shapes():
    conv = make_adapter((2, 3, 8, 8), (2, 6, 8, 8))
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1)
    assert conv(torch.zeros(2, 3, 8, 8)).shape == (2, 6, 8, 8)
    conv1d = make_adapter((2, 4, 10), (2, 8, 10))
    assert isinstance(conv1d, nn.Conv1d) and conv1d(torch.zeros(2, 4, 10)).shape == (2, 8, 10)
    lin = make_adapter((5, 16), (5, 64))
    assert isinstance(lin, nn.Linear) and lin(torch.zeros(5, 16)).shape == (5, 64)
    tok = make_adapter((2, 7, 16), (2, 7, 32), channel_dim=-1)  # tokens: (N, L, D)
    assert isinstance(tok, nn.Linear) and tok(torch.zeros(2, 7, 16)).shape == (2, 7, 32)
    assert isinstance(make_adapter((2, 6, 4, 4), (2, 6, 4, 4)), nn.Identity)
    with pytest.raises(ConfigError, match="same resolution"):
        make_adapter((2, 3, 8, 8), (2, 6, 4, 4))
    with pytest.raises(ConfigError, match="different ranks"):
        make_adapter((2, 3, 8, 8), (2, 6))


def test_attention_map_hand_computed():
    a = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]],
                       [[1.0, 2.0], [0.0, 0.0]]]])  # (1, 2 channels, 2, 2)
    # mean over channels of a^2: [[1, 2], [0, 0.5]]; L2 norm sqrt(5.25)
    expected = torch.tensor([[1.0, 2.0, 0.0, 0.5]]) / math.sqrt(5.25)
    assert torch.allclose(attention_map(a), expected, atol=1e-7)
    # a second map: one channel [[0, 0], [0, 3]] -> [0, 0, 0, 9] / 9 = e4
    b = torch.tensor([[[[0.0, 0.0], [0.0, 3.0]]]])
    diff = expected - torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    assert float(attention_loss(a, b)) == pytest.approx(float(diff.norm()), abs=1e-6)
    # token sequences (N, L, D): the map is over the L tokens
    tokens = torch.tensor([[[3.0, 4.0], [0.0, 0.0], [1.0, 1.0]]])  # mean squares: 12.5, 0, 1
    assert torch.allclose(attention_map(tokens, channel_dim=-1),
                          torch.tensor([[12.5, 0.0, 1.0]]) / math.sqrt(12.5 ** 2 + 1), atol=1e-7)
    with pytest.raises(ConfigError, match="use loss='mse'"):
        attention_map(torch.zeros(2, 8))


def _first_last(history, k=10):
    return sum(history[:k]) / k, sum(history[-k:]) / k


def test_fitnets_hint_loss_decreases(digits_task):
    """MLP student (16, 8) hinted from the task's MLP (64, 32): adapters Linear(16, 64), Linear(8, 32)."""
    torch.manual_seed(0)
    student = build("mlp", input_shape=digits_task.input_shape, num_classes=10, hidden=(16, 8))
    cfg = effdl.learn.Hint(student_layers=["2", "4"], teacher_layers=["2", "4"], epochs=10, lr=1e-2)
    out, hist = hint_distill(student, digits_task, cfg)
    first, last = _first_last(hist)
    assert last < 0.5 * first
    assert digits_task.evaluate(out)["accuracy"] > 0.8
    assert not any(isinstance(m, nn.ModuleList) for m in out.modules())  # adapters are not kept
    assert not out._forward_hooks and not out[2]._forward_hooks  # hooks removed


def test_attention_transfer_conv(digits_task):
    """LeNet-5 width 0.5 student, LeNet-5 teacher: conv maps 3 vs 6 channels at 8x8, 8 vs 16 at 4x4."""
    torch.manual_seed(0)
    teacher = build("lenet5", input_shape=digits_task.input_shape, num_classes=10)
    digits_task.with_model(teacher).train(teacher, epochs=1, lr=3e-3)
    student = build("lenet5", input_shape=digits_task.input_shape, num_classes=10, width=0.5)
    cfg = effdl.learn.Hint(student_layers=["1", "4"], teacher_layers=["1", "4"], loss="attention", beta=10.0,
                           epochs=2, lr=3e-3)
    _, hist = hint_distill(student, digits_task, cfg, teacher=teacher)
    first, last = _first_last(hist)
    assert last < first
    # FitNets on the same conv layers goes through 1x1 conv adapters
    cfg = effdl.learn.Hint(student_layers=["1"], teacher_layers=["1"], epochs=0.25)
    _, hist = hint_distill(student, digits_task, cfg, teacher=teacher)
    assert len(hist) > 0 and all(math.isfinite(h) for h in hist)


def test_registered_and_does_not_mutate(digits_task):
    student = build("mlp", input_shape=digits_task.input_shape, num_classes=10, hidden=(16,))
    before = {k: v.clone() for k, v in student.state_dict().items()}
    out = effdl.apply(student, effdl.learn.Hint(student_layers=["1"], teacher_layers=["1"], epochs=0.5),
                      task=digits_task)
    assert out is not student
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())
    assert set(out.state_dict()) == set(before)


def test_bad_layers(digits_task):
    student = build("mlp", input_shape=digits_task.input_shape, num_classes=10, hidden=(16,))
    with pytest.raises(ConfigError, match="unknown student layer 'fc1'"):
        effdl.apply(student, effdl.learn.Hint(student_layers=["fc1"], teacher_layers=["1"]), task=digits_task)
    with pytest.raises(ConfigError, match="unknown teacher layer '9'"):
        effdl.apply(student, effdl.learn.Hint(student_layers=["1"], teacher_layers=["9"]), task=digits_task)
    assert not student[1]._forward_hooks  # the student's hook was removed after the teacher's failed
    with pytest.raises(ConfigError, match="list them in pairs"):
        effdl.learn.Hint(student_layers=["1", "3"], teacher_layers=["1"])
    with pytest.raises(ConfigError, match="use loss='mse'"):
        effdl.apply(student, effdl.learn.Hint(student_layers=["1"], teacher_layers=["1"], loss="attention"),
                    task=digits_task)
    with pytest.raises(ConfigError, match="single teacher"):
        effdl.learn.Hint(student_layers=["1"], teacher_layers=["1"], teacher=["task", "task"])
    with pytest.raises(ConfigError, match="temperature"):
        effdl.learn.Hint(student_layers=["1"], teacher_layers=["1"], temperature=0)
