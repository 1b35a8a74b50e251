"""Range estimators: from observed tensors (activations over calibration batches) to a clip range.

Each estimator is a small stateful object: ``observe(x)`` per batch, then ``range()`` -> (lo, hi)
or ``qparams(scheme)`` -> (scale, zero point). ``symmetric=True`` gives (-t, t) from |x|;
otherwise (lo, hi) of x itself. Estimators:

* ``MinMax``: the observed extremes;
* ``MovingAverageMinMax``: per-batch extremes averaged, ``lo <- m * lo + (1 - m) * batch_lo``;
* ``Percentile``: the ``percentile``-th percentile (and 100 - p for the low end) of all values;
* ``Entropy``: TensorRT's KL calibration: the clip minimising KL(P || Q) between the clipped
  reference histogram P and its quantization Q (|x| and 2^(b-1) levels when symmetric; x and 2^b
  levels anchored at its minimum otherwise);
* ``MSE``: the clip (fraction of the observed range, grid search) minimising the expected
  squared quantization error of the histogram under the given integer width.

Histogram-based estimators share one fixed-bin histogram over the running range (the helpers
``hist_add`` / ``hist_percentile``, also used by observers.PercentileObserver). Degenerate data
(constant, all zero, a single value) gets a floored scale and a warning naming the tensor; NaN or
Inf raises DataError.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from ...core.errors import ConfigError, DataError
from .scheme import SCALE_FLOOR, QScheme, qparams_from_range

__all__ = [
    "MSE",
    "Entropy",
    "MinMax",
    "MovingAverageMinMax",
    "Percentile",
    "RangeEstimator",
    "hist_add",
    "hist_percentile",
]


# -- the shared histogram ----------------------------------------------------------------------
def _bin_index(x: torch.Tensor, lo: float, hi: float, bins: int) -> torch.Tensor:
    if hi <= lo:  # a single value seen so far: everything lives in bin 0
        return torch.zeros(x.shape, dtype=torch.long)
    return ((x - lo) * (bins / (hi - lo))).floor().long().clamp_(0, bins - 1)


def hist_add(hist: torch.Tensor, lo: float, hi: float, x: torch.Tensor) -> tuple[float, float]:
    """Add the values of ``x`` to ``hist`` (float64 counts over [lo, hi]) in place; return the new range.

    When ``x`` falls outside the range, the range widens and the old counts move to the bins of
    the wider range by their bin centres (error at most one bin). Start with lo=inf, hi=-inf.
    """
    x = x.detach().reshape(-1).to(torch.float64)
    if x.numel() == 0:
        return lo, hi
    bins = hist.numel()
    new_lo, new_hi = min(lo, float(x.min())), max(hi, float(x.max()))
    if hist.sum() > 0 and (new_lo < lo or new_hi > hi):
        centres = lo + (torch.arange(bins, dtype=torch.float64) + 0.5) * ((hi - lo) / bins)
        moved = torch.zeros_like(hist)
        moved.index_add_(0, _bin_index(centres, new_lo, new_hi, bins), hist)
        hist.copy_(moved)
    hist.index_add_(0, _bin_index(x, new_lo, new_hi, bins), torch.ones_like(x))
    return new_lo, new_hi


def hist_percentile(hist: torch.Tensor, lo: float, hi: float, q: float) -> float:
    """Value below which ``q`` percent of the counted values lie (linear inside its bin)."""
    total = float(hist.sum())
    if total == 0:
        raise ConfigError("the histogram saw no data: run calibration before reading its range")
    if hi <= lo:
        return lo
    bins = hist.numel()
    cdf = torch.cumsum(hist, 0) / total
    target = min(max(q / 100.0, 0.0), 1.0)
    k = int(torch.searchsorted(cdf, torch.tensor([target], dtype=torch.float64)).clamp(max=bins - 1))
    before = float(cdf[k - 1]) if k > 0 else 0.0
    mass = float(cdf[k]) - before
    frac = (target - before) / mass if mass > 0 else 0.0
    return lo + (k + min(max(frac, 0.0), 1.0)) * (hi - lo) / bins


# -- estimators ------------------------------------------------------------------------------------
class RangeEstimator:
    """Base: validation of observed tensors, and (scale, zero point) with the degenerate-range warning."""

    def __init__(self, *, symmetric: bool = False, name: str = "tensor") -> None:
        self.symmetric = bool(symmetric)
        self.name = str(name)
        self.count = 0

    def observe(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise DataError(f"calibration of {self.name!r} needs floating-point tensors, got {type(x).__name__}")
        if x.numel() == 0:
            return
        if not bool(torch.isfinite(x).all()):
            raise DataError(f"calibration data for {self.name!r} contains NaN/Inf: clean the input data "
                            "(or find the layer that overflows) before calibrating")
        x = x.detach().float()
        self._observe(x.abs() if self.symmetric else x)
        self.count += 1

    def _observe(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def _range(self) -> tuple[float, float]:
        raise NotImplementedError

    def range(self) -> tuple[float, float]:
        """(lo, hi) to quantize; (-t, t) when symmetric."""
        if self.count == 0:
            raise ConfigError(f"calibration of {self.name!r} saw no data: call observe() on real batches first")
        lo, hi = self._range()
        return (-hi, hi) if self.symmetric else (lo, hi)

    def qparams(self, scheme: QScheme, eps: float = SCALE_FLOOR) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero point) of ``range()`` under a per-tensor ``scheme``; warns on a degenerate range."""
        if scheme.granularity != "tensor":
            raise ConfigError(f"range estimators give one range per tensor; use a scheme with granularity='tensor', "
                              f"not {scheme.granularity!r}")
        lo, hi = self.range()
        scale, zp = qparams_from_range(lo, hi, scheme, eps)
        if hi - lo <= 0 or float(scale) <= eps * (1 + 1e-6):
            warnings.warn(
                f"calibration of {self.name!r} saw a constant value ({lo:g}); its scale is floored at {float(scale):g}. "
                "Use calibration data that varies (real inputs, more batches)", RuntimeWarning, stacklevel=2)
        return scale, zp


class MinMax(RangeEstimator):
    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.lo, self.hi = math.inf, -math.inf

    def _observe(self, x):
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))

    def _range(self):
        return self.lo, self.hi


class MovingAverageMinMax(RangeEstimator):
    """Exponential moving average of per-batch extremes (the first batch sets them)."""

    def __init__(self, momentum: float = 0.9, **kw) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1), got {momentum}; e.g. 0.9 keeps 90% of the old range per batch")
        super().__init__(**kw)
        self.momentum = float(momentum)
        self.lo = self.hi = None

    def _observe(self, x):
        lo, hi = float(x.min()), float(x.max())
        if self.lo is None:
            self.lo, self.hi = lo, hi
        else:
            m = self.momentum
            self.lo, self.hi = m * self.lo + (1 - m) * lo, m * self.hi + (1 - m) * hi

    def _range(self):
        return self.lo, self.hi


class _Histogram(RangeEstimator):
    def __init__(self, bins: int = 2048, **kw) -> None:
        if bins < 2:
            raise ConfigError(f"bins must be >= 2, got {bins}")
        super().__init__(**kw)
        self.hist = torch.zeros(int(bins), dtype=torch.float64)
        self.lo, self.hi = math.inf, -math.inf

    def _observe(self, x):
        self.lo, self.hi = hist_add(self.hist, self.lo, self.hi, x)

    def _counts(self) -> tuple[np.ndarray, float]:
        """(counts, bin width) over [lo, hi]."""
        return self.hist.numpy(), (self.hi - self.lo) / self.hist.numel()


class Percentile(_Histogram):
    def __init__(self, percentile: float = 99.99, **kw) -> None:
        if not 50.0 < percentile <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100], got {percentile}; e.g. 99.9 or 99.99")
        super().__init__(**kw)
        self.percentile = float(percentile)

    def _range(self):
        hi = hist_percentile(self.hist, self.lo, self.hi, self.percentile)
        lo = self.lo if self.symmetric else hist_percentile(self.hist, self.lo, self.hi, 100.0 - self.percentile)
        return lo, max(hi, lo)


class Entropy(_Histogram):
    """TensorRT's entropy (KL) calibration: the clip whose quantized histogram diverges least.

    Symmetric: the histogram of |x| over [0, max|x|], 2^(bits-1) levels (TensorRT's int8). Otherwise
    the histogram of x over [min x, max x] and 2^bits levels anchored at min x (the uint8 grid of
    asymmetric activations), so only the top is clipped; for ReLU outputs (min 0) the two agree up
    to the number of levels. For each candidate edge i (in bins, from the number of levels to all
    bins): P = the first i bins with the counts beyond them folded into bin i-1; Q = those i bins
    merged into ``levels`` chunks, each chunk's mass spread evenly over its non-empty bins. The clip
    is the right edge of the i with the smallest KL(P || Q). The bin holding 0.0 is left out of the
    search (zero is exact on the grid; with it, the spike of ReLU zeros drags the clip to 1/8 of the
    range). (Clipping the bottom too, at +-t from |x|, wrecks inputs with a large mass away from 0,
    such as normalised MNIST backgrounds.)
    """

    def __init__(self, bits: int = 8, bins: int = 2048, **kw) -> None:
        super().__init__(bins=bins, **kw)
        width = QScheme(bits=bits).bits
        self.levels = 2 ** (width - 1) if self.symmetric else 2 ** width
        if bins < self.levels:
            raise ConfigError(f"Entropy needs bins >= {self.levels} quantization levels, got {bins}; raise bins")
        if self.symmetric:
            self.lo = 0.0  # the |x| histogram starts at 0, as TensorRT's

    def threshold(self) -> float:
        counts, width = self._counts()
        if width <= 0:
            return self.hi
        if self.lo <= 0.0 < self.hi:
            # 0.0 is exact on every grid (the zero point): the spike of ReLU zeros must not pull the
            # clip down (chunks of 1 bin, i = levels, reproduce it exactly, so the search lands there)
            counts = counts.copy()
            counts[min(int(-self.lo / width), counts.size - 1)] = 0
        best_i, best_kl = counts.size, math.inf
        for i in range(self.levels, counts.size + 1):
            kl = _kl_of_clip(counts, i, self.levels)
            if kl < best_kl:
                best_i, best_kl = i, kl
        return self.lo + best_i * width

    def _range(self):
        return self.lo, self.threshold()


def _kl_of_clip(counts: np.ndarray, i: int, levels: int) -> float:
    ref = counts[:i]
    p = ref.astype(np.float64)  # copy
    p[i - 1] += counts[i:].sum()
    nonzero = ref > 0
    edges = np.linspace(0, i, levels + 1).round().astype(np.int64)  # strictly increasing: i >= levels
    starts = edges[:-1]
    mass = np.add.reduceat(ref, starts)
    filled = np.add.reduceat(nonzero.astype(np.float64), starts)
    q = np.repeat(mass / np.maximum(filled, 1), np.diff(edges)) * nonzero
    ps, qs = p.sum(), q.sum()
    if ps == 0 or qs == 0:
        return math.inf
    p, q = p / ps, q / qs
    mask = p > 0
    q = np.where(mask & (q == 0), 1e-12, q)  # outliers folded into an empty edge bin: heavy but finite
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


class MSE(_Histogram):
    """Grid search of the clip: the range (a*lo, a*hi) (or (-a*t, a*t)) for a in ``grid`` fractions
    of the observed one, minimising the histogram's expected squared error after quantizing to ``bits``.

    Clipped values cost their full squared distance, so MSE clips far below the maximum only when
    the outliers are few compared with the resolution gained (e.g. 4 bits); at 8 bits a handful of
    huge outliers usually keeps the full range.
    """

    def __init__(self, bits: int = 8, grid: int = 100, **kw) -> None:
        if grid < 1:
            raise ConfigError(f"grid must be >= 1, got {grid}")
        super().__init__(**kw)
        self.bits = QScheme(bits=bits).bits
        self.grid = int(grid)

    def _range(self):
        counts, width = self._counts()
        if width <= 0:
            return self.lo, self.hi
        centres = torch.from_numpy(self.lo + (np.arange(counts.size) + 0.5) * width)
        weights = torch.from_numpy(counts)
        scheme = QScheme(bits=self.bits, mode="symmetric" if self.symmetric else "affine",
                         signed=True)
        best, best_err = (self.lo, self.hi), math.inf
        for a in np.linspace(1.0 / self.grid, 1.0, self.grid):
            lo, hi = (-a * self.hi, a * self.hi) if self.symmetric else (a * self.lo, a * self.hi)
            scale, zp = qparams_from_range(lo, hi, scheme)
            q = (torch.round(centres / scale) + zp).clamp(scheme.qmin, scheme.qmax)
            err = float((weights * (scale * (q - zp) - centres) ** 2).sum())
            if err < best_err:
                best, best_err = (float(lo), float(hi)), err
        return best
