"""The report's Search section and the candidate table's skipped / reused runtimes, from a real search."""
import re

import pytest

import effdl
from effdl import Goal
from effdl.automate.search import SearchSettings
from effdl.automate.space import SearchSpace
from effdl.pipeline.results import MeasureSettings
from effdl.report.html import render_html

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


def test_a_fixed_grid_has_no_search_section(searched):
    _, res = searched
    assert '<section id="search">' not in render_html(res.model_copy(update={"search": None}))
