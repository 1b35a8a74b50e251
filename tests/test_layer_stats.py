"""Input statistics of Linear layers against the same numbers computed by hand from the inputs."""
import pytest
import torch
from torch import nn

from effdl.compress.layer_stats import input_stats
from effdl.core.errors import DataError


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).eval()


def test_stats_equal_the_hand_computed_ones_over_every_row():
    model = _model()
    batches = [torch.randn(4, 2, 6), torch.randn(3, 2, 6)]  # a sequence axis: rows are all leading positions
    stats = input_stats(model, {"0": model[0], "2": model[2]}, batches, keep_rows=5)
    x0 = torch.cat([b.reshape(-1, 6) for b in batches])
    x2 = torch.relu(model[0](x0)).detach()
    for name, x in (("0", x0), ("2", x2)):
        s = stats[name]
        assert s.rows == 14
        torch.testing.assert_close(s.xtx, x.T @ x, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(s.hessian(), 2 * x.T @ x / 14, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(s.col_norm(), x.norm(dim=0), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(s.abs_max, x.abs().amax(0))
        torch.testing.assert_close(s.abs_mean(), x.abs().mean(0), rtol=1e-5, atol=1e-6)
        # the sample holds 5 distinct rows of the inputs
        assert s.sample.shape == (5, x.shape[1])
        assert all(any(torch.equal(r, row) for row in x) for r in s.sample)
    assert not any(m._forward_hooks for m in model)  # hooks removed


def test_the_sample_is_uniform_over_batches():
    """Reservoir sampling: a row of the last batch is as likely to be kept as one of the first."""
    lin = nn.Linear(1, 1)
    batches = [torch.arange(i * 10, (i + 1) * 10, dtype=torch.float32).unsqueeze(1) for i in range(10)]
    kept = torch.zeros(100)
    for seed in range(400):
        s = input_stats(lin, {"l": lin}, batches, hessian=False, keep_rows=10, seed=seed)["l"]
        kept[s.sample.squeeze(1).long()] += 1
    # each of the 100 rows is kept with probability 0.1: 40 of 400 draws, sd ~6
    first, last = kept[:10].mean(), kept[90:].mean()
    assert 30 < first < 50 and 30 < last < 50
    assert s.xtx is None


def test_no_batches_or_an_unused_layer_is_a_clear_error():
    model = _model()
    with pytest.raises(DataError, match="no calibration batches"):
        input_stats(model, {"0": model[0]}, [])
    stray = nn.Linear(6, 6)
    with pytest.raises(DataError, match="saw no input"):
        input_stats(model, {"stray": stray}, [torch.randn(2, 6)])
