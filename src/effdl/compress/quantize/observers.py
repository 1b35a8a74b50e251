"""Observers that torchao does not ship: percentile ranges, any of calibration.py's range
estimators (entropy, MSE), and one shared weight scale.

Both plug into torchao's PT2E flow (``QuantizationSpec.observer_or_fake_quant_ctr``) and compute
scale/zero-point with the base class's ``_calculate_qparams``, so the scale is floored at ``eps``
exactly like the stock observers (a constant or all-zero tensor never divides by zero).
"""
from __future__ import annotations

import torch
from torchao.quantization.pt2e import PerChannelMinMaxObserver, UniformQuantizationObserverBase

from ...core.errors import ConfigError
from .calibration import RangeEstimator, hist_add, hist_percentile


class PercentileObserver(UniformQuantizationObserverBase):
    """Per-tensor range clipped at percentiles of everything observed.

    Keeps a fixed-size histogram (``bins`` counts over the running [lo, hi] range, maintained by
    calibration.hist_add: when a batch falls outside the range, the old counts move to the bins of
    the widened range by their bin centres, error at most one bin). ``max`` is set at the
    ``percentile``-th percentile and ``min`` at the ``(100 - percentile)``-th, each linearly
    interpolated inside its bin.
    """

    hist: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor

    def __init__(self, percentile: float = 99.99, bins: int = 2048, dtype=torch.quint8,
                 qscheme=torch.per_tensor_affine, eps: float = torch.finfo(torch.float32).eps, **kwargs) -> None:
        if not 50.0 < percentile <= 100.0:
            raise ConfigError(f"PercentileObserver: percentile must be in (50, 100], got {percentile}")
        if bins < 2:
            raise ConfigError(f"PercentileObserver: bins must be >= 2, got {bins}")
        super().__init__(dtype=dtype, qscheme=qscheme, eps=eps, **kwargs)
        self.percentile = float(percentile)
        self.bins = int(bins)
        # float64 counts: exact up to 2**53 observed values per bin
        self.register_buffer("hist", torch.zeros(self.bins, dtype=torch.float64))
        self.register_buffer("lo", torch.tensor(float("inf")))
        self.register_buffer("hi", torch.tensor(float("-inf")))

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        if x_orig.numel() == 0:
            return x_orig
        lo, hi = hist_add(self.hist, float(self.lo), float(self.hi), x_orig)
        self.lo.fill_(lo)
        self.hi.fill_(hi)
        return x_orig

    def percentile_value(self, q: float) -> float:
        """Value below which ``q`` percent of the observed values lie (interpolated in its bin)."""
        if float(self.hist.sum()) == 0:
            raise ConfigError("PercentileObserver saw no data: run calibration before reading its range")
        return hist_percentile(self.hist, float(self.lo), float(self.hi), q)

    def observed_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo = self.percentile_value(100.0 - self.percentile)
        hi = self.percentile_value(self.percentile)
        return torch.tensor(lo, dtype=torch.float32), torch.tensor(max(hi, lo), dtype=torch.float32)

    def calculate_qparams(self):
        if float(self.hist.sum()) == 0:
            # same default the stock observers return when never run
            return torch.tensor([1.0]), torch.tensor([0])
        return self._calculate_qparams(*self.observed_range())

    def extra_repr(self) -> str:
        return f"percentile={self.percentile}, bins={self.bins}, range=[{float(self.lo)}, {float(self.hi)}]"


class EstimatorObserver(UniformQuantizationObserverBase):
    """Per-tensor range from one of calibration.py's estimators (``Entropy``, ``MSE``, ...),
    ``estimator`` being a zero-argument factory of a fresh, asymmetric one.

    The estimator validates what it observes (NaN/Inf raise DataError) and picks the clip; the
    base class turns it into scale/zero-point (0.0 always representable, scale floored at eps).
    """

    def __init__(self, estimator, dtype=torch.quint8, qscheme=torch.per_tensor_affine,
                 eps: float = torch.finfo(torch.float32).eps, **kwargs) -> None:
        super().__init__(dtype=dtype, qscheme=qscheme, eps=eps, **kwargs)
        self.estimator: RangeEstimator = estimator()

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        self.estimator.observe(x_orig)
        return x_orig

    @property
    def lo(self) -> torch.Tensor:  # the observed extremes (inf before any data), as PercentileObserver's
        return torch.tensor(float(self.estimator.lo))

    @property
    def hi(self) -> torch.Tensor:
        return torch.tensor(float(self.estimator.hi))

    def calculate_qparams(self):
        if self.estimator.count == 0:
            return torch.tensor([1.0]), torch.tensor([0])  # never run: the stock observers' default
        lo, hi = self.estimator.range()
        return self._calculate_qparams(torch.tensor(lo, dtype=torch.float32), torch.tensor(max(hi, lo), dtype=torch.float32))

    def extra_repr(self) -> str:
        return f"estimator={type(self.estimator).__name__}"


class PerChannelSharedScaleObserver(PerChannelMinMaxObserver):
    """Per-tensor weight quantization written as per-channel with one scale for every channel.

    (The class name must contain "PerChannel": torchao passes ``ch_axis`` only to such classes.)

    Inductor's x86 int8 kernels only match per-channel weight dequantization, so a genuine
    per-tensor weight spec silently stays in (simulated) float; equal per-channel scales keep the
    per-tensor numerics and still lower to the int8 oneDNN kernels.
    """

    def calculate_qparams(self):
        if self.min_val.numel() == 0:
            return super().calculate_qparams()
        lo = self.min_val.min().expand_as(self.min_val)
        hi = self.max_val.max().expand_as(self.max_val)
        return self._calculate_qparams(lo, hi)
