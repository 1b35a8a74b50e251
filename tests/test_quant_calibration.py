import pytest
import torch

from effdl.compress.quantize.calibration import (
    MSE,
    Entropy,
    MinMax,
    MovingAverageMinMax,
    Percentile,
)
from effdl.compress.quantize.scheme import SCALE_FLOOR, QScheme
from effdl.core.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def outliers():
    """100k standard-normal values with three huge outliers (max |x| = 50)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100_000, generator=g)
    x[:3] = torch.tensor([50.0, -45.0, 48.0])
    return x


@pytest.fixture(scope="module")
def uniform():
    g = torch.Generator().manual_seed(1)
    return torch.rand(100_000, generator=g) * 2 - 1


def _fit(est, x, batches=4):
    for chunk in x.chunk(batches):
        est.observe(chunk)
    return est.range()


def test_minmax_symmetric_and_asymmetric():
    batches = [torch.tensor([0.0, 0.5]), torch.tensor([0.2, 1.0])]  # post-ReLU style
    a, s = MinMax(), MinMax(symmetric=True)
    for b in batches:
        a.observe(b)
        s.observe(b)
    assert a.range() == (0.0, 1.0)
    assert s.range() == (-1.0, 1.0)
    scale, zp = a.qparams(QScheme(bits=8, mode="affine", signed=False))
    assert float(scale) == pytest.approx(1 / 255) and int(zp) == 0


def test_moving_average_hand_computed():
    est = MovingAverageMinMax(momentum=0.5)
    est.observe(torch.tensor([0.0, 1.0]))  # first batch sets the range
    est.observe(torch.tensor([-1.0, 3.0]))  # 0.5 * old + 0.5 * new
    assert est.range() == (-0.5, 2.0)


def test_clipping_estimators_land_far_below_the_outliers(outliers):
    # reference: torch.quantile of the same sample (exact); the histogram has 2048 bins over
    # [0, 50] (0.024 wide), so the tolerance is 0.03. Both land near 3.3, far below max |x| = 50
    ref = float(torch.quantile(outliers.abs(), 0.999))
    lo, hi = _fit(Percentile(percentile=99.9, symmetric=True), outliers)
    assert hi == pytest.approx(ref, abs=0.03) and lo == -hi and hi < 4
    lo, hi = _fit(Percentile(percentile=99.9), outliers)
    assert lo == pytest.approx(float(torch.quantile(outliers, 0.001)), abs=0.03)
    assert hi == pytest.approx(float(torch.quantile(outliers, 0.999)), abs=0.03)
    _, t = _fit(Entropy(symmetric=True), outliers)
    assert 2.5 < t < 0.2 * 50
    # 4-bit: three clipped outliers cost less than coarsening 100k values by a 10x wider step
    _, t = _fit(MSE(bits=4, symmetric=True), outliers)
    assert 1.5 < t < 0.1 * 50


def test_mse_keeps_outliers_when_their_error_dominates(outliers):
    # at 8 bits the step is fine anyway; clipping 3 values at ~50 by half costs ~3 * 25^2, far
    # more than the rounding error saved, so the MSE-optimal clip stays above half the max
    _, t = _fit(MSE(bits=8, symmetric=True), outliers)
    assert t > 25


def test_uniform_data_entropy_and_mse_near_max(uniform):
    amax = float(uniform.abs().max())
    _, t = _fit(Entropy(symmetric=True), uniform)
    assert t == pytest.approx(amax, rel=0.02)
    # 4-bit symmetric grid k*s, k = -7..7: the cells cover [-7.5 s, 7.5 s]; MSE-optimal for U(-1, 1)
    # is s = 2/15, i.e. a clip of 7 s = 14/15 (grid step 0.01 of the range)
    _, t = _fit(MSE(bits=4, symmetric=True), uniform)
    assert t == pytest.approx(14 / 15, abs=0.015)
    lo, hi = _fit(Entropy(), uniform)  # asymmetric: observed range clipped at +-t
    assert lo == pytest.approx(-amax, rel=0.02) and hi == pytest.approx(amax, rel=0.02)


def test_percentile_estimator_matches_the_ptq_observer(outliers):
    """One histogram implementation serves both (observers.PercentileObserver uses calibration.hist_add)."""
    from effdl.compress.quantize.observers import PercentileObserver

    obs = PercentileObserver(percentile=99.9)
    est = Percentile(percentile=99.9)
    for chunk in outliers.chunk(4):
        obs(chunk)
        est.observe(chunk)
    lo, hi = obs.observed_range()
    assert (float(lo), float(hi)) == pytest.approx(est.range(), abs=1e-5)


@pytest.mark.parametrize("make", [MinMax, MovingAverageMinMax, Percentile, Entropy, MSE])
@pytest.mark.parametrize("data", [torch.full((10,), 3.0), torch.zeros(10), torch.tensor([0.7])])
def test_degenerate_data_warns_with_the_name_and_floors_the_scale(make, data):
    est = make(name="features.3")
    est.observe(data)
    scheme = QScheme(bits=8, mode="affine", signed=False)
    with pytest.warns(RuntimeWarning, match="calibration of 'features.3' saw a constant value"):
        scale, zp = est.qparams(scheme)
    assert torch.isfinite(scale) and float(scale) >= SCALE_FLOOR
    assert 0 <= int(zp) <= 255


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_inf_is_a_data_error_naming_the_tensor(bad):
    est = Percentile(name="conv1")
    with pytest.raises(DataError, match="'conv1' contains NaN/Inf"):
        est.observe(torch.tensor([0.0, bad]))


def test_bad_settings_and_no_data():
    with pytest.raises(ConfigError, match="percentile must be in \\(50, 100\\]"):
        Percentile(percentile=40)
    with pytest.raises(ConfigError, match="momentum must be in \\[0, 1\\)"):
        MovingAverageMinMax(momentum=1.0)
    with pytest.raises(ConfigError, match="binary"):
        MSE(bits=1)
    with pytest.raises(ConfigError, match="saw no data"):
        MinMax(name="fc").range()
    with pytest.raises(ConfigError, match="granularity='tensor'"):
        est = MinMax()
        est.observe(torch.ones(3))
        est.qparams(QScheme(bits=8, granularity="channel"))


def test_entropy_ignores_the_exact_zeros_of_relu_outputs():
    # 90% exact zeros (ReLU) + uniform (0, 1): zero is exact on the grid, so the spike must not
    # drag the clip to the smallest candidate (1/8 of the range for 256 levels over 2048 bins)
    torch.manual_seed(0)
    x = torch.cat([torch.zeros(90_000), torch.rand(10_000)])
    est = Entropy()
    est.observe(x)
    lo, hi = est.range()
    assert lo == 0.0 and hi > 0.9
