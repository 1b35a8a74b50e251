import pytest
import torch
import torch.nn.functional as F

import effdl
from effdl.core.errors import ConfigError
from effdl.learn import (
    cutmix,
    cutout,
    mixup,
    random_shift,
    smooth_targets,
    soft_cross_entropy,
)
from effdl.learn.augment import box_mask


def test_cutout_zeroes_exactly_the_box():
    x = torch.ones(3, 2, 6, 6)
    centers = torch.tensor([[1, 1], [5, 5], [0, 3]])
    out = cutout(x, 2, centers=centers)
    expected = torch.ones(3, 6, 6)
    expected[0, 0:2, 0:2] = 0  # size 2 starts one before the centre
    expected[1, 4:6, 4:6] = 0
    expected[2, 0:1, 2:4] = 0  # rows [-1, 1) clipped to [0, 1)
    for c in range(2):  # every channel of an input gets the same box
        assert torch.equal(out[:, c], expected)
    # an odd box clipped at the corner: centre (0, 0), side 3 -> rows/cols [-1, 2) -> [0, 2)
    out = cutout(torch.ones(1, 1, 4, 4), 3, centers=torch.tensor([[0, 0]]))
    assert int((out == 0).sum()) == 4 and torch.equal(out[0, 0, :2, :2], torch.zeros(2, 2))


def test_cutout_random_box_and_1d():
    torch.manual_seed(0)
    out = cutout(torch.ones(50, 1, 10, 10), 4)
    zeros = (out == 0).sum(dim=(1, 2, 3))
    assert zeros.max() == 16 and zeros.min() >= 4  # a whole 4x4 box, or a corner-clipped part (>= 2x2)
    sig = cutout(torch.ones(2, 3, 12), 5, centers=torch.tensor([[6], [0]]))
    assert sig[0, :, 4:9].eq(0).all() and int(sig[0].eq(0).sum()) == 15
    assert int(sig[1, 0].eq(0).sum()) == 3  # [-2, 3) clipped to [0, 3)


def test_random_shift_is_a_padded_crop():
    torch.manual_seed(0)
    x = torch.arange(1, 26, dtype=torch.float32).view(1, 1, 5, 5).repeat(20, 1, 1, 1)
    out = random_shift(x, 1)
    padded = F.pad(x[0, 0], [1, 1, 1, 1])
    crops = [padded[i:i + 5, j:j + 5] for i in range(3) for j in range(3)]
    for k in range(20):
        assert any(torch.equal(out[k, 0], c) for c in crops)
    assert len({tuple(out[k, 0].flatten().tolist()) for k in range(20)}) > 1  # offsets vary per input
    assert torch.equal(random_shift(x, 0), x)


def test_mixup_weights_sum_to_one():
    torch.manual_seed(0)
    x = torch.randn(6, 1, 4, 4)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    t = smooth_targets(y, 5)
    xm, tm, lam = mixup(x, t, alpha=0.4)
    assert 0.0 < lam < 1.0
    assert torch.allclose(tm.sum(1), torch.ones(6))
    perm = torch.tensor([1, 0, 3, 2, 5, 4])
    xm, tm, lam = mixup(x, t, alpha=1.0, lam=0.7, perm=perm)
    assert torch.allclose(xm, 0.7 * x + 0.3 * x[perm])
    assert tm[0, 0] == pytest.approx(0.7) and tm[0, 1] == pytest.approx(0.3)
    assert tm[4, 4] == pytest.approx(0.7) and tm[4, 0] == pytest.approx(0.3)
    assert torch.allclose(tm.sum(1), torch.ones(6))


def test_cutmix_lambda_is_the_kept_area_fraction():
    x = torch.arange(1, 5, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 1, 8, 8).clone()
    t = smooth_targets(torch.tensor([0, 1, 2, 3]), 4)
    perm = torch.tensor([1, 2, 3, 0])
    # lam 0.75: box side round(8 * 0.5) = 4; centred at (4, 4): 16 of 64 pixels replaced
    out, tm, lam = cutmix(x, t, 1.0, lam=0.75, perm=perm, center=torch.tensor([4, 4]))
    kept = (out == x).float().mean(dim=(1, 2, 3))
    assert lam == pytest.approx(0.75) and torch.allclose(kept, torch.full((4,), 0.75))
    assert torch.equal(out[0, 0, 2:6, 2:6], torch.full((4, 4), 2.0))
    # centred on the corner the box is clipped to 2x2: the kept fraction is 60/64, not 0.75
    out, tm, lam = cutmix(x, t, 1.0, lam=0.75, perm=perm, center=torch.tensor([0, 0]))
    assert lam == pytest.approx(60 / 64)
    assert float((out[0] == x[0]).float().mean()) == pytest.approx(lam)
    assert tm[0, 0] == pytest.approx(60 / 64) and tm[0, 1] == pytest.approx(4 / 64)
    # a random draw: the returned lam still equals the kept fraction
    torch.manual_seed(3)
    out, tm, lam = cutmix(x, t, 1.0, perm=perm)
    assert float((out == x).float().mean()) == pytest.approx(lam)
    assert torch.allclose(tm.sum(1), torch.ones(4))


def test_box_mask_counts():
    m = box_mask(torch.tensor([[2, 2, 2]]), [2, 3, 4], (5, 5, 5))
    assert int(m.sum()) == 2 * 3 * 4


def test_label_smoothing_targets():
    t = smooth_targets(torch.tensor([2]), 4, 0.1)
    assert torch.allclose(t, torch.tensor([[0.025, 0.025, 0.925, 0.025]]))
    logits = torch.tensor([[1.0, 2.0, 0.5, -1.0]])
    assert float(soft_cross_entropy(logits, t)) == pytest.approx(
        float(F.cross_entropy(logits, torch.tensor([2]), label_smoothing=0.1)), rel=1e-6)
    assert float(soft_cross_entropy(logits, smooth_targets(torch.tensor([2]), 4))) == pytest.approx(
        float(F.cross_entropy(logits, torch.tensor([2]))), rel=1e-6)


@pytest.mark.parametrize("bad, phrase", [
    ({"mixup": 0.0}, "mixup"), ({"mixup": -1.0}, "mixup"), ({"cutmix": 0.0}, "cutmix"),
    ({"label_smoothing": 1.0}, "label_smoothing"), ({"shift": -1}, "shift"), ({"epochs": 0}, "epochs"),
])
def test_bad_config(bad, phrase):
    with pytest.raises(ConfigError, match=phrase):
        effdl.learn.Augment(**bad)


def test_bad_function_inputs():
    t = smooth_targets(torch.tensor([0, 1]), 2)
    with pytest.raises(ConfigError, match="mixup alpha must be > 0"):
        mixup(torch.zeros(2, 1, 4, 4), t, 0.0)
    with pytest.raises(ConfigError, match="turn it off for flat feature vectors"):
        cutout(torch.zeros(2, 16), 2)
    with pytest.raises(ConfigError, match="label smoothing must be in"):
        smooth_targets(torch.tensor([0]), 2, 1.0)


def test_augmented_training_learns(digits_task):
    from effdl.zoo import build

    torch.manual_seed(0)
    fresh = build("mlp", input_shape=digits_task.input_shape, num_classes=10, hidden=(64,))
    cfg = effdl.learn.Augment(shift=1, cutout=2, mixup=0.2, cutmix=1.0, label_smoothing=0.1, epochs=6, lr=5e-3)
    out = effdl.apply(fresh, cfg, task=digits_task)
    assert out is not fresh
    assert digits_task.evaluate(fresh)["accuracy"] < 0.3
    assert digits_task.evaluate(out)["accuracy"] > 0.8
