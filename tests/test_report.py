"""The HTML report and pareto.csv, checked against hand-computed values and in a real browser."""
from __future__ import annotations

import copy
import csv
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from effdl.core.errors import ArtifactError
from effdl.pipeline.results import Results
from effdl.report.findings import findings
from effdl.report.html import render_html, write_pareto_csv, write_report
from effdl.report.plots import frontier_figure
from effdl.report.view import load_view

BASE_P50, BASE_SIZE = 0.210, 247_900  # LeNet-5 eager FP32 (61,706 params * 4 B + header)


def _cand(cid, label, recipe, runtime, acc, p50, size, gzip, nonzero, macs_sparse, runtimes, front):
    return {
        "id": cid, "label": label, "recipe": recipe, "status": "ok", "reason": None,
        "runtime": runtime, "runtimes": runtimes,
        "quality": {"accuracy": acc, "top5": 0.999, "f1_macro": acc - 0.001},
        "quality_val": {"accuracy": acc, "top5": 0.999, "f1_macro": acc - 0.001},  # plotted and chosen on
        "quality_drop": round(0.984 - acc, 6),
        "footprint": {
            "params": 61706, "nonzero_params": nonzero, "size_bytes": size, "size_bytes_gzip": gzip,
            "size_bytes_dense_fp32": BASE_SIZE, "macs": 416520, "macs_sparse": macs_sparse,
            "flops": 833040, "latency_ms_p50": p50, "latency_ms_p90": round(p50 * 1.2, 4),
            "throughput_per_s": 1000 / p50, "batch_size": 1, "peak_mem_bytes": 1_200_000,
            "energy_uj": 0.9,
        },
        "on_frontier": front["latency"], "frontier": front, "seconds": 3.0,
    }


def _rt(p50, **parity):
    return {"status": "ok", "latency_ms_p50": p50, "latency_ms_p90": p50 * 1.2,
            "parity": {"ok": True, **parity}, "reason": None}


def R(raw: dict) -> Results:
    """The typed Results of a results.json-shaped dict."""
    return Results.model_validate(raw)


@pytest.fixture
def results(raw) -> Results:
    return R(raw)


@pytest.fixture
def raw() -> dict:
    """results.json (schema 2) as a dict: baseline c00, four measured candidates, one failed one (goal: latency, max drop 1 pt).

    Frontier by hand (maximise accuracy, minimise the footprint):
      latency  (p50 ms, acc): c00 (0.210, .984), c01 (0.060, .982), c02 (0.215, .983),
               c03 (0.030, .970), c04 (0.100, .975).
               c03 fastest -> on; c01 better than c03 -> on; c04 slower and worse than c01 -> off;
               c00 best accuracy -> on; c02 slower and worse than c00 -> off.  => [c03, c01, c00]
      size     (bytes, acc): c00 247,900; c01 70,000; c02 80,000; c03 20,000; c04 250,000.
               c03 smallest -> on; c01 -> on; c02 (bigger than c01, .983 > .982) -> on;
               c00 (best accuracy) -> on; c04 bigger than c00 and worse -> off. => [c03, c01, c02, c00]
      chosen: fastest within 1 pt -> c01 (c03 drops 1.4 pt).
    """
    F = lambda lat, size: {"latency": lat, "size": size}  # noqa: E731
    eager = {"eager": _rt(BASE_P50)}
    cands = [
        _cand("c00", "baseline", [], "eager", 0.984, BASE_P50, BASE_SIZE, 229_000, 61706, 416520,
              eager, F(True, True)),
        _cand("c01", "int8 ptq", [{"technique": "quantize.ptq", "bits": 8, "granularity": "channel"}],
              "ort-int8", 0.982, 0.060, 70_000, 60_000, 61706, 416520,
              {"ort-int8": _rt(0.060, sqnr_db=38.1, top1_agreement=1.0),
               "pt2e-int8": {"status": "failed", "reason": "parity: SQNR 12.0 dB < 20.0 dB"}},
              F(True, True)),
        # unstructured pruning: no speed-up on eager (0.210 / 0.215 = 0.98x), sparse file 3.1x smaller
        _cand("c02", "prune 80%", [{"technique": "prune.magnitude", "sparsity": 0.8}], "eager",
              0.983, 0.215, 80_000, 45_000, 12_400, 90_000, {"eager": _rt(0.215)}, F(False, True)),
        _cand("c03", "prune 50% channels + int8",
              [{"technique": "prune.channels", "ratio": 0.5}, {"technique": "quantize.ptq"}],
              "ort-int8", 0.970, 0.030, 20_000, 18_000, 30_000, 200_000,
              {"ort-int8": _rt(0.030, sqnr_db=30.2)}, F(True, True)),
        # a wider student: 2.1x faster but 250,000 B, i.e. not smaller (247,900 / 250,000 = 0.99x)
        _cand("c04", "distill <script>alert(1)</script>", [{"technique": "learn.distill", "T": 4.0}],
              "ort-fp32", 0.975, 0.100, 250_000, 230_000, 62_500, 420_000,
              {"ort-fp32": _rt(0.100, max_abs_err=1e-6)}, F(False, False)),
        {"id": "c05", "label": "pt2e int8", "recipe": [{"technique": "quantize.ptq", "backend": "pt2e"}],
         "status": "failed", "reason": "parity: SQNR 12.0 dB < 20.0 dB on every runtime",
         "runtime": None, "runtimes": {"pt2e-int8": {"status": "failed", "reason": "parity: SQNR 12.0 dB < 20.0 dB"}},
         # partial numbers from before the failure: shown in the table, never plotted
         "quality": {"accuracy": 0.62}, "quality_drop": 0.364,
         "footprint": {"size_bytes": 70_500, "params": 61706}, "on_frontier": False,
         "frontier": {"latency": False, "size": False}, "seconds": 1.0},
    ]
    return {
        "schema_version": 2, "effdl_version": "0.1.0", "created": "2026-11-23T02:30:00Z",
        "provenance": {"command": "effdl optimize --model zoo:lenet5 --data mnist --max-drop 0.01",
                       "model": "zoo:lenet5", "data": "mnist"},
        "goal": {"metric": "accuracy", "higher_is_better": True, "max_drop": 0.01, "target": "latency", "batch_size": 1},
        "environment": {"cpu": "Intel Xeon (AVX-512 VNNI, AMX)", "threads": 2,
                        "versions": {"torch": "2.13.0+cpu", "onnxruntime": "1.32.0"},
                        "malloc": {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "1073741824"},
                        "warnings": ["another process used 40% of a core during c02"]},
        "baseline": "c00", "chosen": "c01",
        "chosen_reason": "fastest candidate within 1.0 point of the baseline (c01: 3.5x faster)",
        "frontier": {"latency": ["c03", "c01", "c00"], "size": ["c03", "c01", "c02", "c00"]},
        "candidates": cands,
    }


class _Refs(HTMLParser):
    """src/href/url attributes of real tags (script and style bodies are not parsed as tags)."""

    def __init__(self):
        super().__init__()
        self.refs: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.refs += [v or "" for k, v in attrs if k in ("src", "href", "action", "srcset", "xlink:href")]


def _external_refs(page: str) -> list[str]:
    p = _Refs()
    p.feed(page)
    return [r for r in p.refs if re.match(r"\s*(https?:)?//", r)], p.tags


# --- pareto.csv ------------------------------------------------------------------------------


def test_pareto_csv_rows(results, tmp_path):
    path = write_pareto_csv(results, tmp_path / "pareto.csv")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "label", "status", "runtime", "accuracy", "quality_drop",
                             "latency_ms_p50", "size_bytes", "params", "nonzero_params", "on_frontier"]
    assert [r["id"] for r in rows] == ["c00", "c01", "c02", "c03", "c04", "c05"]
    by = {r["id"]: r for r in rows}
    assert by["c01"] == {"id": "c01", "label": "int8 ptq", "status": "ok", "runtime": "ort-int8",
                         "accuracy": "0.982", "quality_drop": "0.002", "latency_ms_p50": "0.06",
                         "size_bytes": "70000", "params": "61706", "nonzero_params": "61706",
                         "on_frontier": "true"}
    assert by["c04"]["label"] == "distill <script>alert(1)</script>"  # CSV is data: not escaped
    assert float(by["c02"]["latency_ms_p50"]) == 0.215 and by["c02"]["nonzero_params"] == "12400"
    # on_frontier = latency frontier (the goal's target) = c03, c01, c00
    assert [r["id"] for r in rows if r["on_frontier"] == "true"] == ["c00", "c01", "c03"]
    # the failed candidate: its status and partial numbers as recorded, nothing invented
    assert by["c05"] == {"id": "c05", "label": "pt2e int8", "status": "failed", "runtime": "", "accuracy": "0.62",
                         "quality_drop": "0.364", "latency_ms_p50": "", "size_bytes": "70500", "params": "61706",
                         "nonzero_params": "", "on_frontier": "false"}


# --- figures and findings --------------------------------------------------------------------


def test_frontier_figures_plot_only_measured(results):
    view = load_view(results)
    lat = {t.name: t for t in frontier_figure(view, "latency").data}
    # the step line joins the frontier sorted by latency: c03 (0.030), c01 (0.060), c00 (0.210)
    assert list(lat["frontier"].x) == [0.030, 0.060, 0.210]
    assert list(lat["frontier"].y) == [0.970, 0.982, 0.984]
    assert lat["frontier"].line.shape == "hv"
    assert list(lat["other candidates"].text) == ["c02", "c04"]
    assert list(lat["baseline"].x) == [0.210] and list(lat["chosen"].x) == [0.060]
    size_fig = frontier_figure(view, "size")
    size = {t.name: t for t in size_fig.data}
    assert list(size["frontier"].x) == [20_000, 70_000, 80_000, BASE_SIZE]
    assert list(size["other candidates"].text) == ["c04"]
    assert size_fig.layout.xaxis.type == "log"
    # constraint: baseline 0.984 - max drop 0.01 = 0.974, dashed
    (hline,) = [s for s in size_fig.layout.shapes if s.line.dash == "dash"]
    assert hline.y0 == pytest.approx(0.974, abs=1e-12)
    # the failed c05 is in no trace, though it has an accuracy and a size
    for fig in (frontier_figure(view, "latency"), size_fig):
        assert sum(len(t.x) for t in fig.data if t.name in ("frontier", "other candidates")) == 5
        assert all("c05" not in str(t.hovertext) and 0.62 not in t.y for t in fig.data)


def test_findings_state_where_nothing_was_gained(results):
    by = {f.id: f.text for f in findings(load_view(results))}
    # c01: 3.5x faster and 3.5x smaller, within the drop -> nothing to say
    assert set(by) == {"c02", "c03", "c04"}
    # c02: 0.210 / 0.215 = 0.977 -> 0.98x; 247,900 / 80,000 = 3.10x; 1 - 12,400 / 61,706 = 80% zero
    assert by["c02"] == ("c02 (prune 80%): no measured speed-up on eager (0.98x); "
                         "size gain 3.1x with 80% of weights zero")
    # c03 is fast and small but loses 1.4 pt > 1 pt
    assert by["c03"].endswith("quality drop 1.40 pt exceeds the allowed 1.00 pt")
    # c04: 0.210 / 0.100 = 2.10x; 247,900 / 250,000 = 0.99x; gzip 229,000 / 230,000 = 0.996 (no gain)
    assert "speed-up 2.10x on ort-fp32; no size gain on disk (0.99x)" in by["c04"]
    assert "&lt;script&gt;" in by["c04"] and "<script>" not in by["c04"]


def test_nan_measurement_is_listed_not_plotted(raw, tmp_path):
    """An "ok" candidate whose accuracy came back NaN (bad input 19) is neither drawn nor written as a number."""
    raw["candidates"][4]["quality"]["accuracy"] = float("nan")
    raw["candidates"][4]["quality_val"]["accuracy"] = float("nan")
    results = R(raw)
    view = load_view(results)
    for axis in ("latency", "size"):
        traces = frontier_figure(view, axis).data
        assert all("c04" not in (t.text or ()) for t in traces)
    page = render_html(results)
    assert ("<li>c04 (distill &lt;script&gt;alert(1)&lt;/script&gt;): not measured: accuracy "
            "(left off the latency p50 and size on disk plots)</li>") in page
    path = write_pareto_csv(results, tmp_path / "p.csv")
    with open(path, newline="", encoding="utf-8") as f:
        c04 = [r for r in csv.DictReader(f) if r["id"] == "c04"][0]
    assert c04["accuracy"] == "" and c04["latency_ms_p50"] == "0.1"


# --- the page --------------------------------------------------------------------------------


def test_html_is_offline_escaped_and_complete(results, tmp_path):
    paths = write_report(results, tmp_path / "out")
    assert set(paths) == {"html", "csv"} and all(p.is_file() for p in paths.values())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["pareto.csv", "report.html"]  # no temp files
    page = paths["html"].read_text(encoding="utf-8")
    refs, tags = _external_refs(page)
    assert refs == [] and "link" not in tags and "iframe" not in tags
    assert "cdn.plot.ly" not in page.split("</script>", 1)[1]  # nothing after the inline bundle points to a CDN
    assert page.count("Plotly.newPlot(") == 2 and len(page) > 3_000_000  # plotly.js inline (~4.7 MB), once
    assert page.count("<script") == 3  # the bundle + one call per plot: no other JS
    for cid in ("c00", "c01", "c02", "c03", "c04", "c05"):
        assert f'id="cand-{cid}"' in page
    assert "parity: SQNR 12.0 dB &lt; 20.0 dB on every runtime" in page  # failed reason, escaped
    assert ("<li>c05 (pt2e int8): failed: parity: SQNR 12.0 dB &lt; 20.0 dB on every runtime "
            "(left off the latency p50 and size on disk plots)</li>") in page
    assert "-0.20 pt" in page  # the chosen c01 lost 0.984 - 0.982 = 0.2 pt
    assert "distill &lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert(1)" not in page
    assert "3.50x" in page  # speed-up 0.210 / 0.060
    assert "3.54x" in page  # size 247,900 / 70,000
    assert "quantize.ptq(bits=8, granularity=channel)" in page  # compact recipe
    assert "sqnr_db=38.1" in page and "<details>" in page  # per-runtime parity
    assert page.count("another process used 40% of a core during c02") == 1 and "1073741824" in page
    assert "c02 (prune 80%): no measured speed-up on eager (0.98x)" in page


def test_no_choice_is_stated_prominently(results):
    results = results.model_copy(update={"chosen": None,
                                         "chosen_reason": "no candidate within 0.0 points of the baseline"})
    page = render_html(results)
    assert '<div class="no-choice"><b>No candidate was chosen.</b> no candidate within 0.0 points' in page


@pytest.mark.parametrize("breakage, words", [
    (lambda r: r.pop("goal"), "goal: Field required"),
    (lambda r: r["goal"].pop("metric"), "goal.metric and goal.higher_is_better must be set"),
    (lambda r: r.update(baseline="c99"), "baseline 'c99'"),
    (lambda r: r.update(chosen="c42"), "chosen 'c42'"),
    (lambda r: r["candidates"].append(dict(r["candidates"][0])), "repeat candidate id 'c00'"),
    (lambda r: r["candidates"][1].update(status="maybe"), "candidates.1.status"),
])
def test_malformed_results_raise_and_write_nothing(raw, tmp_path, breakage, words):
    breakage(raw)
    with pytest.raises(ArtifactError, match=re.escape(words)):
        Results.from_dict(raw)
    with pytest.raises(ArtifactError, match=re.escape(words)):  # a parsed results.json is validated first
        write_report(raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- a real browser --------------------------------------------------------------------------


def _chromium() -> str:
    exe = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if exe is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is missing on CI: install the Debian package `chromium`")
        pytest.skip("chromium not installed (apt-get install chromium) - browser test skipped outside CI")
    return exe


def _browser(exe: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           # any network request would fail: plots that render prove the page needs none
           "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
           f"--user-data-dir={profile}", "--virtual-time-budget=10000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_report_renders_in_headless_chromium(results, tmp_path):
    exe = _chromium()
    page = write_report(results, tmp_path / "out")["html"]
    dom = _browser(exe, tmp_path / "profile", "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    # the DOM dump repeats the inline plotly.js source: look at the elements only
    html = re.sub(r"<script\b.*?</script>", "", dom.stdout, flags=re.S)
    assert html.count("js-plotly-plot") == 2  # both plot divs were initialised by plotly.js
    assert html.count('class="main-svg"') >= 2  # ... and drawn as SVG
    # markers: latency plot 2 other + 3 frontier + baseline + chosen = 7; size plot 1 + 4 + 1 + 1 = 7
    assert html.count('<path class="point"') == 14
    ids = re.findall(r'<g class="textpoint"[^>]*><text[^>]*>([^<]*)</text>', html)
    assert sorted(ids) == sorted(["c02", "c04", "c03", "c01", "c00", "c04", "c03", "c01", "c02", "c00"])
    assert "c05" not in ids  # failed: listed, not plotted

    shot = tmp_path / "report.png"
    run = _browser(exe, tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1280,2400",
                   "--hide-scrollbars", page.as_uri())
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000  # a blank 1280x2400 page is ~10 kB
    if os.environ.get("EFFDL_KEEP_SCREENSHOT"):  # for a human look: copy it where asked
        shutil.copy(shot, os.environ["EFFDL_KEEP_SCREENSHOT"])


def test_findings_separate_the_technique_from_the_runtime(raw):
    # the unmodified model was also measured on ort-fp32 at 0.050 ms: c04 (0.100 ms there) is 2.1x
    # faster than the eager baseline, but 0.050 / 0.100 = 0.50x of the unmodified model on its runtime
    raw["candidates"][0]["runtimes"]["ort-fp32"] = _rt(0.050, max_abs_err=1e-6)
    by = {f.id: f.text for f in findings(load_view(R(raw)))}
    assert by["c04"].endswith("the technique itself runs slower than the unmodified model on ort-fp32 (0.50x)")
    # c01 (int8 on ort-int8, 0.060) vs the unmodified model's fastest runtime (ort-fp32, 0.050): 0.83x
    assert by["c01"] == ("c01 (int8 ptq): the technique itself runs slower than the unmodified model on its "
                         "fastest runtime (ort-fp32) (0.83x)")


def test_sparsity_heatmap_and_curves(raw):
    from effdl.report.sparsity import curve_figure, heatmap_figure

    view = load_view(R(raw))
    assert heatmap_figure(view) is None and curve_figure(view) is None  # no per-layer counts: no section
    dense = {"conv1": {"params": 150, "sparsity": 0.0}, "fc1": {"params": 48000, "sparsity": 0.0}}
    c = {x["id"]: x for x in raw["candidates"]}
    c["c00"]["layers"] = dense
    c["c02"]["layers"] = {"conv1": {"params": 150, "sparsity": 0.2}, "fc1": {"params": 48000, "sparsity": 0.9}}
    c["c02"]["recipe"] = [{"technique": "prune.magnitude", "sparsity": 0.8, "schedule": "iterative"}]
    c["c05"]["layers"] = {"conv1": {"params": 150, "sparsity": 0.5}}  # failed: never drawn
    view = load_view(R(raw))
    (hm,) = heatmap_figure(view).data
    assert list(hm.x) == ["conv1", "fc1"] and [list(r) for r in hm.z] == [[0.0, 0.0], [0.2, 0.9]]
    (line,) = curve_figure(view).data
    # x = 1 - nonzero/params: baseline 0, c02 1 - 12,400/61,706 = 0.79905
    assert line.name == "prune.magnitude(iterative)"
    assert list(line.x) == pytest.approx([0.0, 1 - 12_400 / 61_706])
    assert list(line.y) == [0.984, 0.983]
    assert "plot-heatmap" in render_html(R(raw))


def test_sensitivity_curves_from_records(raw):
    from effdl.report.sparsity import sensitivity_figure

    assert sensitivity_figure(load_view(R(raw))) is None
    c02 = raw["candidates"][2]
    c02["records"] = {"sensitivity": {"conv1": [[0.5, 0.001], [0.3, 0.0]], "fc1": [[0.3, 0.0], [0.5, 0.002]]}}
    traces = {t.name: t for t in sensitivity_figure(load_view(R(raw))).data}
    # sorted by ratio; drops shown in points (fraction x 100)
    assert list(traces["conv1"].x) == [0.3, 0.5] and list(traces["conv1"].y) == [0.0, 0.1]
    assert list(traces["fc1"].y) == [0.0, 0.2]


def test_iterative_vs_one_shot_trajectories(raw):
    from effdl.report.sparsity import trajectory_figure

    assert trajectory_figure(load_view(R(raw))) is None
    c = {x["id"]: x for x in raw["candidates"]}
    once = [[0.0, 0.0, 0.98, "start"], [0.0, 0.9, 0.60, "prune"], [4.0, 0.9, 0.95, "finetune"]]
    iters = [[0.0, 0.0, 0.98, "start"], [0.0, 0.5, 0.97, "prune"], [2.0, 0.5, 0.98, "finetune"],
             [2.0, 0.9, 0.90, "prune"], [4.0, 0.9, 0.97, "finetune"]]
    c["c02"]["recipe"] = [{"technique": "prune.magnitude"}]
    c["c02"]["records"] = {"trajectory": {"kind": "weights", "points": iters}}
    c["c03"]["recipe"] = [{"technique": "prune.magnitude"}, {"technique": "learn.distill"}]
    c["c03"]["records"] = {"trajectory": {"kind": "weights", "points": iters}}  # reused prefix: drawn once
    c["c04"]["recipe"] = [{"technique": "prune.magnitude"}]
    c["c04"]["records"] = {"trajectory": {"kind": "weights", "points": once}}
    traces = trajectory_figure(load_view(R(raw))).data
    assert [t.name.split()[0] for t in traces] == ["c02", "c04"]
    assert list(traces[0].x) == [0.0, 0.0, 2.0, 2.0, 4.0] and list(traces[0].y) == [0.98, 0.97, 0.98, 0.90, 0.97]
    assert list(traces[1].y) == [0.98, 0.60, 0.95]
    assert "plot-trajectory" in render_html(R(raw))


def test_lowrank_section_lists_factorized_and_skipped_layers(raw):
    from effdl.report.lowrank import lowrank_section

    assert lowrank_section(load_view(R(raw))) == ""
    rec = {"layers": {"fc1": {"rank": 20, "full_rank": 300, "energy_kept": 0.91, "params_before": 48000,
                              "params_after": 19680}},
           "skipped": {"fc3": "rank 8 >= mn/(m+n) = 7.6: no fewer parameters"},
           "params_before": 48000, "params_after": 19680}
    c = {x["id"]: x for x in raw["candidates"]}
    c["c02"]["recipe"] = [{"technique": "lowrank.svd"}]
    c["c02"]["records"] = {"lowrank.svd": rec}
    c["c03"]["recipe"] = [{"technique": "lowrank.svd"}, {"technique": "learn.distill"}]
    c["c03"]["records"] = {"lowrank.svd": rec}  # reused prefix: shown once
    html = lowrank_section(load_view(R(raw)))
    assert html.count("<h3>") == 1 and "c02" in html and "48,000 &rarr; 19,680" in html
    assert "rank=20" in html and "left dense" in html and "mn/(m+n)" in html
    assert "Low-rank factorization" in render_html(R(raw))


def test_lower_is_better_relative_goal_is_drawn_in_its_terms(tmp_path):
    """Perplexity, 5% relative: the limit line is above the baseline, drops are percentages."""
    from effdl.pipeline.results import Candidate, Footprint, Goal
    from effdl.pipeline.summary import headline, summary_rows

    def cand(cid, ppl, p50, size, drop):
        return Candidate(id=cid, label=cid, status="ok", runtime="eager", quality={"perplexity": ppl},
                         quality_val={"perplexity": ppl}, quality_drop=drop, quality_drop_val=drop,
                         footprint=Footprint(latency_ms_p50=p50, latency_ms_p90=p50, size_bytes=size, batch_size=1))

    goal = Goal(metric="perplexity", higher_is_better=False, relative=True, max_drop=0.05)
    # drops by hand: (20.8 - 20) / 20 = 0.04; (19.0 - 20) / 20 = -0.05
    res = Results(goal=goal, baseline="c00", chosen="c01", chosen_reason="fastest within 5%",
                  frontier={"latency": ["c01", "c02"]},
                  candidates=[cand("c00", 20.0, 1.0, 4000, 0.0), cand("c01", 20.8, 0.5, 2000, 0.04),
                              cand("c02", 19.0, 0.9, 4000, -0.05)])
    view = load_view(res)
    assert view.constraint == pytest.approx(21.0)  # 20 * (1 + 0.05): worse is higher
    page = render_html(res)
    assert "with perplexity at most 5.00% above the baseline" in page and "+4.00%" in page
    (hline,) = [s for s in frontier_figure(view, "latency").layout.shapes if s.line.dash == "dash"]
    assert hline.y0 == pytest.approx(21.0)
    assert [r[4] for r in summary_rows(res)] == ["+0.00", "+4.00", "-5.00"]
    assert "perplexity 20.8000 (-4.00% on test, -4.00 on validation)" in headline(res)[1]
