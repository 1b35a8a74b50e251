"""quantize.ptq leaves the report's quantization views: per-layer weight error histograms of the
stored int8 codes, and (static INT8) each layer's calibrated input range with the chosen clip."""
from __future__ import annotations

import pytest


from effdl import apply
from effdl.compress.quantize import PTQConfig
from effdl.compress.quantize.ptq import quantize_weight
from effdl.core.records import records


@pytest.mark.parametrize("calibration", ["minmax", "percentile"])
def test_static_ptq_records_error_histograms_and_clipped_ranges(digits_task, calibration):
    q = apply(digits_task, PTQConfig(calibration=calibration, percentile=99.0, num_batches=2))
    rec = records(q)
    hist, ranges = rec["quant_error_hist"].layers, rec["act_ranges"].layers
    assert set(hist) == set(q.quantized_modules) == set(ranges)
    for name, h in hist.items():
        w = q.float_model.get_submodule(name).weight.detach()
        assert sum(h.weights) == w.numel()  # every stored weight counted once
        _, scale = quantize_weight(w, "channel")
        # rounding to the nearest code: |error| <= scale / 2, and the histogram's range is the largest error
        assert h.edges[-1] <= float(scale.max()) / 2 * (1 + 1e-5)
    for name, r in ranges.items():
        assert r.clip_lo <= 0.0 <= r.clip_hi  # uint8 affine keeps 0.0 representable
        step = (r.clip_hi - r.clip_lo) / 255
        if calibration == "minmax":  # the clip is the observed range (0 included), to one code step
            assert r.clip_lo == pytest.approx(min(r.min, 0.0), abs=step) and r.clip_hi == pytest.approx(r.max, abs=step)
        else:  # the 99th percentile clips the top of every ReLU output
            assert r.clip_hi <= r.max + step
    if calibration == "percentile":
        assert any(r.clip_hi < r.max - 2 * (r.clip_hi - r.clip_lo) / 255 for r in ranges.values())


def test_dynamic_ptq_has_error_histograms_but_no_calibrated_ranges(digits_task):
    q = apply(digits_task, PTQConfig(mode="dynamic"))
    rec = records(q)
    assert set(rec["quant_error_hist"].layers) == set(q.quantized_modules) and "act_ranges" not in rec


def test_the_report_draws_the_ptq_quantization_views(digits_task, tmp_path):
    from effdl.pipeline.optimize import optimize
    from effdl.pipeline.results import Goal, MeasureSettings
    from effdl.pipeline.recipe import Recipe
    from effdl.pipeline.strategies import CandidateSpec

    specs = [CandidateSpec("c00", "baseline", Recipe(()), ("eager",)),
             CandidateSpec("c01", "int8", Recipe((PTQConfig(num_batches=2),)), ("ort-int8",))]
    optimize(digits_task, Goal(), out_dir=tmp_path, candidates=specs, measure=MeasureSettings(repeats=3))
    html = (tmp_path / "report.html").read_text()
    assert "quantization error per layer (c01 int8)" in html
    assert "activation ranges and clipping (c01 int8)" in html
