"""report/quant.py: the quantization figures, checked trace by trace on hand-made results."""
import pytest

from effdl.report.quant import (
    act_range_figure,
    error_hist_figure,
    qat_mse_figure,
    quant_section,
    sensitivity_bar_figure,
)
from effdl.pipeline.results import Candidate, Goal, Results
from effdl.report.view import load_view


def _results(records=None, status="ok"):
    base = Candidate(id="c00", label="baseline", status="ok", recipe=[])
    cand = Candidate(id="c01", label="qat int4", status=status, recipe=[{"technique": "quantize.qat"}],
                     records=records or {})
    return Results(goal=Goal(metric="accuracy", higher_is_better=True), baseline="c00", candidates=[base, cand])


HIST = {"fc1": {"edges": [-1.0, 0.0, 1.0, 2.0], "weights": [3, 5, 1], "activations": [0, 2, 7]},
        "fc2": {"edges": [-0.5, 0.5], "weights": [4]}}
RANGES = {"fc1": {"min": -1.0, "max": 6.0, "clip_lo": -0.5, "clip_hi": 4.0},
          "fc2": {"min": 0.0, "max": 2.0, "clip_lo": 0.0, "clip_hi": 2.0}}
SENS = {"measure": "val_drop", "metric": "accuracy", "budget": 440, "cost": 480, "unit": "bits", "layers": {
    "fc1": {"params": 100, "bits": 4, "fixed": False, "sensitivity": {"2": 0.05, "4": 0.01, "8": 0.0}},
    "fc2": {"params": 10, "bits": 8, "fixed": True, "sensitivity": {"2": 0.2, "4": 0.03, "8": 0.001}}}}
MSE = {"fc1": [1e-3, 5e-4, 4e-4], "fc2": [2e-3, 1e-3, 9e-4]}


def test_nothing_recorded_nothing_drawn():
    view = load_view(_results())
    assert all(f(view) is None for f in (error_hist_figure, act_range_figure, sensitivity_bar_figure, qat_mse_figure))
    assert quant_section(view) == ""


def test_failed_candidates_records_are_not_drawn():
    assert error_hist_figure(load_view(_results({"quant_error_hist": HIST}, status="failed"))) is None


def test_error_histograms_at_bin_centres():
    fig = error_hist_figure(load_view(_results({"quant_error_hist": HIST})))
    traces = {t.name: t for t in fig.data}
    assert set(traces) == {"fc1 weights", "fc1 activations", "fc2 weights"}
    assert list(traces["fc1 weights"].x) == [-0.5, 0.5, 1.5]
    assert list(traces["fc1 weights"].y) == [3, 5, 1]
    assert list(traces["fc1 activations"].y) == [0, 2, 7]
    assert list(traces["fc2 weights"].x) == [0.0]


def test_activation_ranges_show_observed_and_clipped():
    fig = act_range_figure(load_view(_results({"act_ranges": RANGES})))
    observed, clip = fig.data
    assert list(observed.x) == ["fc1", "fc2"]
    assert list(observed.base) == [-1.0, 0.0] and list(observed.y) == [7.0, 2.0]
    assert list(clip.base) == [-0.5, 0.0] and list(clip.y) == [4.5, 2.0]


def test_sensitivity_bars_in_points_per_width():
    fig = sensitivity_bar_figure(load_view(_results({"quant_sensitivity": SENS})))
    traces = {t.name: t for t in fig.data}
    assert list(traces) == ["2 bits", "4 bits", "8 bits"]
    assert list(traces["2 bits"].y) == pytest.approx([5.0, 20.0])  # accuracy drop fraction -> points
    assert list(traces["8 bits"].y) == pytest.approx([0.0, 0.1])
    assert list(traces["4 bits"].text) == ["chosen: 4 bits", "chosen: 8 bits"]


def test_hessian_sensitivity_is_drawn_unscaled():
    hess = {"measure": "hessian", "metric": "hessian proxy", "budget": 200, "cost": 200, "unit": "bits",
            "layers": {"fc1": {"params": 100, "bits": 2, "fixed": False, "sensitivity": {"2": 0.3, "4": 0.01},
                               "hessian_trace": 3.0}}}
    fig = sensitivity_bar_figure(load_view(_results({"quant_sensitivity": hess})))
    assert list(fig.data[0].y) == [0.3] and "Hessian" in fig.layout.yaxis.title.text


def test_qat_mse_curves_per_epoch():
    fig = qat_mse_figure(load_view(_results({"qat_mse": MSE})))
    traces = {t.name: t for t in fig.data}
    assert list(traces["fc1"].x) == [0, 1, 2] and list(traces["fc1"].y) == MSE["fc1"]
    assert fig.layout.yaxis.type == "log"


def test_section_holds_every_figure():
    html = quant_section(load_view(_results({"quant_error_hist": HIST, "act_ranges": RANGES,
                                             "quant_sensitivity": SENS, "qat_mse": MSE})))
    assert html.startswith("<section><h2>Quantization</h2>")
    for div in ("plot-quant-error", "plot-act-ranges", "plot-quant-sensitivity", "plot-qat-mse"):
        assert div in html
