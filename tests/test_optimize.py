"""End to end on real data: candidates measured on real runtimes, frontier, choice, export, resume."""
import csv
import json

import optuna
import pytest

import effdl
from effdl import Goal
from effdl.pipeline.pareto import pareto_front
from effdl.pipeline.recipe import Recipe
from effdl.pipeline.strategies import CandidateSpec
from effdl.pipeline.study import Study


def _specs():
    return [
        CandidateSpec("c00", "baseline (eager)", Recipe(()), ("eager",)),
        CandidateSpec("c01", "baseline", Recipe(()), ("eager", "ort")),
        CandidateSpec("c02", "prune 80%", Recipe((effdl.prune.Magnitude(sparsity=0.8, finetune_epochs=2),)), ("ort",)),
        CandidateSpec("c03", "broken scope", Recipe((effdl.prune.Magnitude(sparsity=0.5, exclude=("nope",)),)), ("ort",)),
        CandidateSpec("c04", "prune 80% + int8", Recipe((effdl.prune.Magnitude(sparsity=0.8, finetune_epochs=2),
                                                        effdl.quantize.PTQ())), ("ort-int8",)),
    ]


@pytest.fixture(scope="module")
def run(digits_task, tmp_path_factory):
    out = tmp_path_factory.mktemp("opt")
    events = []
    res = effdl.optimize(digits_task, Goal(max_drop=0.03, target="size"), out_dir=out, candidates=_specs(),
                         on_event=lambda ev, c: events.append((ev, c.id)))
    return out, res, events


def test_results_schema_and_files(run):
    out, res, _ = run
    assert res.schema_version == 2 and res.baseline == "c00"
    # the goal comes back resolved: the task's primary metric and its direction
    assert res.goal.metric == "accuracy" and res.goal.higher_is_better is True and res.provenance is None
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["schema_version"] == 2 and on_disk["candidates"][0]["id"] == "c00"
    for key in ("environment", "baseline", "chosen", "candidates", "goal", "frontier", "provenance"):
        assert key in on_disk
    c = res.by_id
    for cid in ("c00", "c01", "c02", "c04"):
        assert c[cid].status == "ok", c[cid].reason
        fp = c[cid].footprint
        for k in ("params", "nonzero_params", "size_bytes", "latency_ms_p50", "latency_ms_p90", "batch_size", "macs"):
            assert getattr(fp, k) is not None, k
        assert fp.latency_ms_p50 <= fp.latency_ms_p90
    assert (out / "report.html").is_file() and (out / "pareto.csv").is_file() and (out / "study.db").is_file()
    rows = list(csv.DictReader((out / "pareto.csv").open()))
    assert [r["id"] for r in rows] == ["c00", "c01", "c02", "c03", "c04"]


def test_failed_candidate_recorded_with_reason(run):
    _, res, _ = run
    c03 = res.by_id["c03"]
    assert c03.status == "failed" and "'nope' matches no module" in c03.reason
    assert c03.on_frontier is False and c03.footprint.size_bytes is None  # failed before anything was written


def test_sparse_and_int8_candidates_are_smaller(run):
    _, res, _ = run
    c = {x.id: x.footprint for x in res.candidates}
    assert c["c02"].nonzero_params < 0.25 * c["c00"].params
    # bitmask storage of an 80%-sparse FP32 model: well under half the dense bytes
    assert c["c02"].size_bytes < 0.5 * c["c00"].size_bytes
    # int8 on top: 1-byte instead of 4-byte values; on this tiny MLP the per-channel scales and the
    # safetensors header (~1-2 KB) are a large share, so the file shrinks by about a third, not 3.5x
    assert c["c04"].size_bytes < 0.7 * c["c02"].size_bytes


def test_frontier_and_choice_follow_the_numbers(run):
    _, res, _ = run
    ok = [x for x in res.candidates if x.ok]
    expect = pareto_front([(x.id, x.quality_val["accuracy"], x.footprint.size_bytes) for x in ok])
    assert res.frontier["size"] == expect
    base_val = res.by_id["c00"].quality_val["accuracy"]
    for x in ok:  # drop = baseline - candidate for a higher-is-better metric, absolute
        assert x.quality_drop_val == pytest.approx(base_val - x.quality_val["accuracy"])
    feasible = [x for x in ok if x.quality_drop_val <= 0.03]
    # sizes are exact (no noise band); equal sizes go to the faster one
    best = min(feasible, key=lambda x: (x.footprint.size_bytes, x.footprint.latency_ms_p50))
    assert res.chosen == best.id and res.export.files[-1] == "recipe.json"
    assert (run[0] / "model" / "recipe.json").is_file()
    recipe = json.loads((run[0] / "model" / "recipe.json").read_text())
    assert recipe["candidate"] == best.id and "model.safetensors" in recipe["sha256"]


def test_int8_runtime_parity_recorded(run):
    _, res, _ = run
    p = res.by_id["c04"].runtimes["ort-int8"].parity
    assert p["sqnr_db"] >= 20.0 and p["top1_agreement"] >= 0.99


def test_rerun_resumes_without_redoing(run, digits_task):
    out, first, _ = run
    n_trials = len(optuna.load_study(study_name="effdl-optimize", storage=f"sqlite:///{out / 'study.db'}").trials)
    events = []
    again = effdl.optimize(digits_task, Goal(max_drop=0.03, target="size"), out_dir=out, candidates=_specs(),
                           on_event=lambda ev, c: events.append(ev))
    assert events == ["resumed"] * 5
    assert len(optuna.load_study(study_name="effdl-optimize", storage=f"sqlite:///{out / 'study.db'}").trials) == n_trials
    assert again.chosen == first.chosen
    # resumed candidates read back equal to the measured ones
    assert [c.model_dump() for c in again.candidates] == [c.model_dump() for c in first.candidates]


def test_a_changed_measurement_setting_is_not_resumed(run, digits_task, tmp_path):
    """threads change every latency: a candidate measured with 2 threads is not reused for 1
    (same study storage, so only the cache key can tell them apart)."""
    out, _, _ = run
    events = []
    effdl.optimize(digits_task, Goal(max_drop=0.03, target="size"), out_dir=tmp_path, candidates=_specs()[:1],
                   measure=effdl.MeasureSettings(threads=1), storage=f"sqlite:///{out / 'study.db'}",
                   on_event=lambda ev, c: events.append(ev))
    assert events == ["start", "done"]


def test_interrupted_trial_is_marked_failed(tmp_path):
    s = Study(tmp_path)
    s.start("k1", "c00")  # never finished, as if the process was killed
    s2 = Study(tmp_path)
    t = s2.study.trials[0]
    assert t.state == optuna.trial.TrialState.FAIL and t.user_attrs["reason"].startswith("interrupted")
    assert s2.finished() == {}


def test_bf16_candidate_is_measured_on_the_bf16_runtime(digits_task, tmp_path):
    from effdl.compress.quantize.float_formats import FloatFormatConfig

    specs = [CandidateSpec("c00", "baseline", Recipe(()), ("eager",)),
             CandidateSpec("c01", "bf16", Recipe((FloatFormatConfig(format="bf16"),)), None)]
    res = effdl.optimize(digits_task, Goal(max_drop=0.05, target="latency"), out_dir=tmp_path, candidates=specs)
    base, bf16 = res.candidates
    assert set(bf16.runtimes) == {"eager", "compile", "ort", "bf16"}  # tried by default on bf16 weights
    rt = bf16.runtimes["bf16"]
    assert rt.status == "ok" and rt.precision == "bf16", rt
    # Linear weights in 2 bytes instead of 4: the file is a bit over half the FP32 one (biases stay FP32)
    assert 0.5 < bf16.footprint.size_bytes / base.footprint.size_bytes < 0.6
