"""The report's Search section and the candidate table's skipped / reused runtimes: on a Results
built by hand (numbers checked against hand-computed values, and in a real browser), then on a real search."""
import re

import pytest

import effdl
from effdl import Goal
from effdl.automate.search import SearchSettings
from effdl.automate.space import SearchSpace
from effdl.pipeline.results import MeasureSettings, Results
from effdl.report.html import render_html, write_report
from effdl.report.search import _best_so_far, _by_trial
from effdl.report.view import load_view
from test_report import _browser, _cand, _chromium, _rt

SKIP_WHY = "eager was 3.10x slower than ort on the baseline (0.210 vs 0.068 ms): it could not win"


def _hand(**search) -> Results:
    """Baseline c00 and five trial candidates (goal: latency, max drop 1 pt on validation accuracy).

    By hand (validation accuracy, p50 ms):  c00 (.984, 0.210) baseline, no trial
      trial 0  c01 (.980, 0.080) feasible            best feasible p50 so far 0.080
      trial 1  c02 (.978, 0.060) feasible, eager skipped                        0.060
      trial 2  c03 = c01's model again: measurement reused from c01              0.060
      trial 3  c04 failed: left out of the plots
      trial 4  c05 (.950, 0.020) drops 3.4 pt: infeasible                        0.060
      latency frontier: c05, c02, c01, c00; chosen c02 (fastest within 1 pt).
    """
    F = lambda lat: {"latency": lat, "size": lat}  # noqa: E731
    c01_recipe = [{"technique": "quantize.ptq", "bits": 8}]
    cands = [
        _cand("c00", "baseline", [], "eager", 0.984, 0.210, 247_900, 229_000, 61706, 416520,
              {"eager": _rt(0.210)}, F(True)),
        _cand("c01", "int8", c01_recipe, "ort-int8", 0.980, 0.080, 70_000, 60_000, 61706, 416520,
              {"ort-int8": _rt(0.080, sqnr_db=35.0)}, F(True)) | {"trial": 0, "params": {"quantize": "quantize.ptq"}},
        _cand("c02", "prune 83%", [{"technique": "prune.magnitude", "sparsity": 0.83}], "ort", 0.978, 0.060,
              50_000, 30_000, 10_500, 70_000, {"ort": _rt(0.060)}, F(True))
        | {"trial": 1, "params": {"prune": "prune.magnitude", "prune.sparsity": 0.8312},
           "runtimes_skipped": {"eager": SKIP_WHY}},
        _cand("c03", "int8", c01_recipe, "ort-int8", 0.980, 0.080, 70_000, 60_000, 61706, 416520,
              {"ort-int8": _rt(0.080, sqnr_db=35.0)}, F(False))
        | {"trial": 2, "params": {"quantize": "quantize.ptq"}, "reused_from": "c01"},
        {"id": "c04", "label": "prune 99%", "recipe": [{"technique": "prune.magnitude", "sparsity": 0.99}],
         "status": "failed", "reason": "accuracy collapsed during fine-tuning", "trial": 3,
         "params": {"prune": "prune.magnitude", "prune.sparsity": 0.99}},
        _cand("c05", "prune 60% channels", [{"technique": "prune.channels", "ratio": 0.6}], "ort", 0.950, 0.020,
              20_000, 18_000, 25_000, 150_000, {"ort": _rt(0.020)}, F(True))
        | {"trial": 4, "params": {"prune": "prune.channels", "prune.ratio": 0.6}},
    ]
    summary = {"sampler": "tpe", "study": "effdl-search", "storage": "sqlite:///runs/x/study.db",
               "objectives": ["latency_ms_p50"], "constraint": "validation accuracy drop <= 0.01",
               "pruner": "median", "trials": 5, "complete": 4, "pruned": 0, "failed": 1,
               "hypervolume": [0.5, 0.72, 0.72, 0.9],
               "hypervolume_axes": ["accuracy drop / max_drop", "latency_ms_p50 / baseline"],
               "hypervolume_reference": [2.0, 1.0],
               "importances": {"prune.sparsity": 0.7, "prune": 0.3}, "seconds": 42.0, "stopped_by": "trials"}
    return Results.model_validate({
        "goal": {"metric": "accuracy", "higher_is_better": True, "max_drop": 0.01, "target": "latency",
                 "batch_size": 1},
        "baseline": "c00", "chosen": "c02", "chosen_reason": "fastest candidate within 1.0 point of the baseline",
        "frontier": {"latency": ["c05", "c02", "c01", "c00"], "size": ["c05", "c02", "c01", "c00"]},
        "candidates": cands, "search": summary | search,
    })


def _section(page: str) -> str:
    section = page[page.index('<section id="search">'):]
    return section[:section.index("</section>")]


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html))


def test_hand_built_search_section_states_the_study(tmp_path):
    page = write_report(_hand(), tmp_path)["html"].read_text()
    section = _section(page)
    text = _text(section)
    assert ("tpe sampler: minimise latency_ms_p50 subject to validation accuracy drop &lt;= 0.01, pruner median. "
            "5 trials in 42 s (4 complete, 0 pruned, 1 failed); the trial budget was reached.") in text
    assert "effdl-search" in text and "sqlite:///runs/x/study.db" in text
    # c00 (no trial) and c04 (failed) are not trial measurements; c03 says whose measurement it is
    assert "4 measured candidates came from trials; 1 of them reuses an earlier candidate's measurement" in text
    assert "c03 from c01" in text
    assert ("final 0.9, over the axes accuracy drop / max_drop; latency_ms_p50 / baseline (each minimised) "
            "with the reference point (2, 1)") in text
    for div in ("search-trials", "search-best", "search-hypervolume", "search-importances"):
        assert f'id="{div}"' in section
    assert "reference (2, 1)" in section  # the hypervolume plot's title names its axes and reference point
    assert page.index('<section id="search">') < page.index("<h2>Candidates</h2>")


def test_hand_built_figures_hold_the_hand_computed_numbers():
    view = load_view(_hand())
    (trials,) = _by_trial(view).data
    assert list(trials.x) == [0.080, 0.060, 0.080, 0.020]  # c01, c02, c03, c05 (c04 failed)
    assert list(trials.marker.color) == [0, 1, 2, 4]  # coloured by trial number
    assert list(trials.marker.line.width) == [2, 2, 0, 2]  # ringed: on the latency frontier
    assert "measurement reused from c01" in trials.hovertext[2]
    assert "prune.sparsity = 0.8312" in trials.hovertext[1]
    best = _best_so_far(view, view.results.search)
    assert len(best.data) == 1  # a constrained single-objective search: the footprint only
    assert list(best.data[0].x) == [0, 1, 2, 4] and list(best.data[0].y) == [0.080, 0.060, 0.060, 0.060]
    assert "within the allowed drop" in best.layout.title.text
    assert list(trials.marker.symbol) == ["circle", "circle", "diamond", "circle"]  # ◆ c03: reused


def test_a_pareto_search_also_plots_the_best_quality_so_far():
    res = _hand(objectives=["quality", "latency_ms_p50", "size_bytes"], constraint=None, pruner=None,
                importances={}, stopped_by="timeout")
    view = load_view(res)
    best = _best_so_far(view, res.search)
    footprint, quality = best.data
    assert quality.yaxis == "y2" and list(quality.y) == [0.980, 0.980, 0.980, 0.980]
    assert list(footprint.y) == [0.080, 0.060, 0.060, 0.060]
    section = _section(render_html(res))
    text = _text(section)
    assert "maximise quality and minimise latency_ms_p50, size_bytes (Pareto set), no pruner" in text
    assert "the time limit was reached" in text
    assert 'id="search-importances"' not in section and "no parameter importances" in text


def test_hand_built_skipped_and_reused_runtimes_are_reported():
    res = _hand()
    page = render_html(res)
    table = page[page.index("<h2>Candidates</h2>"):]
    body = table[table.index("<tbody>"):table.index("</tbody>")]
    rows = {part[len('<tr id="cand-'):][:3]: part for part in re.split(r'(?=<tr id="cand-)', body)[1:]}
    assert set(rows) == {"c00", "c01", "c02", "c03", "c04", "c05"}
    assert "1 tried, 1 ok, 1 skipped" in rows["c02"] and SKIP_WHY in _text(rows["c02"])
    assert "<td>eager</td><td>skipped</td>" in rows["c02"]
    assert "reused from c01" in rows["c03"] and "measurement reused from c01" in rows["c03"]
    for cid in ("c00", "c01", "c02", "c05"):  # measured fresh: nothing says otherwise
        assert "reused" not in rows[cid] and ("skipped" in rows[cid]) == (cid == "c02")
    # the card, when the chosen model's numbers are a reused measurement, says so too
    card = render_html(res.model_copy(update={"chosen": "c03"}))
    card = card[card.index('<section class="card">'):]
    assert "(measurement reused from c01)" in card[:card.index("</section>")]


def test_a_fixed_grid_has_no_search_section():
    page = render_html(_hand().model_copy(update={"search": None}))
    assert '<section id="search">' not in page and 'id="search-' not in page and "<h2>Search</h2>" not in page


def test_search_section_renders_in_headless_chromium(tmp_path):
    exe = _chromium()
    page = write_report(_hand(), tmp_path / "out")["html"]
    dom = _browser(exe, tmp_path / "profile", "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    errors = [line for line in dom.stderr.splitlines() if "CONSOLE" in line and ("Uncaught" in line or "Error" in line)]
    assert not errors, errors
    html = re.sub(r"<script\b.*?</script>", "", dom.stdout, flags=re.S)
    # every plot was initialised by plotly.js and drawn: 2 frontier plots + 4 in the Search section
    assert html.count("js-plotly-plot") == 6
    section = _section(html)
    for div in ("search-trials", "search-best", "search-hypervolume", "search-importances"):
        plot = section[section.index(f'id="{div}"'):]
        assert 'class="main-svg"' in plot[:plot.index("</svg>")]
    assert section.count('<path class="point"') >= 4 + 4  # the trial scatter's 4 markers, the best-so-far line's 4


# --- on a real search ------------------------------------------------------------------------

SPACE = SearchSpace.from_list([
    {"name": "prune", "optional": True, "technique": "prune.magnitude", "sparsity": {"range": [0.2, 0.9]}},
    {"name": "quantize", "optional": True, "technique": "quantize.float", "format": "bf16"},
])


@pytest.fixture(scope="module")
def searched(digits_task, tmp_path_factory):
    out = tmp_path_factory.mktemp("report-search")
    res = effdl.optimize(digits_task, Goal(max_drop=0.05), out_dir=out,
                         measure=MeasureSettings(repeats=3, runtimes=("eager", "ort")),
                         search=SearchSettings(sampler="tpe", trials=6, space=SPACE, seed=1))
    return out, res


@pytest.mark.slow
def test_the_search_section_states_the_numbers_of_the_study(searched):
    out, res = searched
    page = (out / "report.html").read_text()
    s = res.search
    section = page[page.index('<section id="search">'):]
    section = section[:section.index("</section>")]
    text = re.sub(r"<[^>]+>", "", section)
    assert f"{s.trials} trials" in text and f"({s.complete} complete, {s.pruned} pruned, {s.failed} failed)" in text
    assert "tpe sampler" in text and "the trial budget was reached" in text
    for div in ("search-trials", "search-best", "search-hypervolume"):
        assert f'id="{div}"' in section
    assert ("search-importances" in section) == bool(s.importances)


@pytest.mark.slow
def test_skipped_runtimes_and_reused_measurements_are_shown(searched):
    _, res = searched
    skipped = [c for c in res.candidates if c.runtimes_skipped]
    assert skipped, "eager is several times slower than ort on this MLP: the planner skips it after the baseline"
    page = render_html(res)
    for c in skipped:  # each skipped runtime's reason, as recorded
        for why in c.runtimes_skipped.values():
            assert why.split(" (")[0] in page
    # a reused measurement says so (one made by hand: the same numbers under another id)
    twin = res.candidates[1].model_copy(update={"id": "t099", "trial": 99, "reused_from": res.candidates[1].id})
    page = render_html(res.model_copy(update={"candidates": res.candidates + [twin]}))
    assert f"measurement reused from {res.candidates[1].id}" in page
