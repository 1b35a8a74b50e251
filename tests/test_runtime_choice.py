"""RuntimePlanner: which runtimes a candidate is lowered to from earlier candidates' latencies, and
reuse of an identical model's measurement (unit tests with hand-made numbers, then end to end)."""
from __future__ import annotations

import json

import pytest
import torch.nn as nn

import effdl
from effdl import Goal
from effdl.core.errors import ConfigError
from effdl.pipeline.candidate import PrefixCache, measure_candidate
from effdl.pipeline.recipe import Recipe
from effdl.pipeline.results import MeasureSettings
from effdl.pipeline.runtime_choice import MARGIN, ReuseKey, RuntimePlanner, candidate_runtimes
from effdl.pipeline.strategies import CandidateSpec

FLOAT = ["eager", "compile", "ort"]


def _spec(runtimes=None) -> CandidateSpec:
    return CandidateSpec("c09", "some candidate", Recipe(()), runtimes)


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 3))  # a plain model: runtime kind "float"


def test_no_evidence_of_the_kind_tries_every_runtime():
    planner = RuntimePlanner()
    planner.observe("int8-static", {"pt2e-int8": 0.1, "ort-int8": 0.9})  # another kind says nothing about float
    tried, skipped = planner.plan(_model(), _spec(), FLOAT)
    assert tried == FLOAT and skipped == {}


def test_a_runtime_slower_than_the_margin_on_every_earlier_candidate_is_skipped_with_the_numbers():
    planner = RuntimePlanner()
    planner.observe("float", {"eager": 0.50, "compile": 0.29, "ort": 0.41}, batch_size=1, source="c00")
    planner.observe("float", {"eager": 0.52, "compile": 0.30, "ort": 0.45}, batch_size=1, source="c02")
    tried, skipped = planner.plan(_model(), _spec(), FLOAT)
    # ort: 0.41/0.29 = 1.41 and 0.45/0.30 = 1.5, both above 1.25; eager 1.72 and 1.73
    assert tried == ["compile"] and set(skipped) == {"eager", "ort"}
    why = skipped["ort"]
    assert "1.41x slower than compile" in why and "2 earlier float candidates" in why
    assert "0.41 vs 0.29 ms at batch 1" in why and "c00" in why and f"{MARGIN:g}x" in why


def test_within_the_margin_on_one_earlier_candidate_is_enough_to_be_tried():
    planner = RuntimePlanner()
    planner.observe("float", {"eager": 0.50, "compile": 0.29, "ort": 0.41}, source="c00")
    planner.observe("float", {"eager": 0.50, "compile": 0.30, "ort": 0.33}, source="c02")  # ort 1.1x here
    tried, skipped = planner.plan(_model(), _spec(), FLOAT)
    assert tried == ["compile", "ort"] and list(skipped) == ["eager"]
    assert "1 earlier" not in skipped["eager"]  # measured on both: the plural sentence
    wide = RuntimePlanner(margin=2.0, history=planner.history)  # the margin is the planner's setting
    assert wide.plan(_model(), _spec(), FLOAT) == (FLOAT, {})


def test_a_failed_runtime_is_no_reason_to_skip_it_for_another_model():
    planner = RuntimePlanner()
    planner.observe("float", {"eager": 0.50, "compile": None, "ort": 0.30}, source="c00")  # compile failed
    tried, skipped = planner.plan(_model(), _spec(), FLOAT)
    assert "compile" in tried and "ort" in tried and list(skipped) == ["eager"]


def test_a_runtime_never_measured_on_the_kind_is_tried():
    planner = RuntimePlanner()
    planner.observe("float", {"eager": 0.50}, source="c00")  # the eager-only baseline
    tried, skipped = planner.plan(_model(), _spec(), FLOAT)
    assert tried == FLOAT and skipped == {}


def test_form_specific_runtimes_are_tried_whenever_they_apply():
    planner = RuntimePlanner()
    # eager-sparse was very slow on an earlier sparse candidate: this one is differently sparse
    planner.observe("float", {"eager": 0.30, "compile": 0.29, "ort": 0.41, "eager-sparse": 2.0}, source="c03")
    tried, skipped = planner.plan(_model(), _spec(), FLOAT + ["eager-sparse"])
    assert tried == ["eager", "compile", "eager-sparse"] and list(skipped) == ["ort"]
    # and a fast form-specific runtime is not the yardstick the general ones are compared with
    planner = RuntimePlanner()
    planner.observe("float", {"eager": 0.30, "compile": 0.29, "bf16": 0.05}, source="c04")
    assert planner.plan(_model(), _spec(), ["eager", "compile", "bf16"]) == (["eager", "compile", "bf16"], {})


def test_the_yardstick_is_the_fastest_runtime_this_candidate_may_use():
    planner = RuntimePlanner()
    planner.observe("float", {"eager": 0.60, "compile": 0.10, "ort": 0.41}, source="c00")
    # compile is not allowed here (MeasureSettings.runtimes): ort is compared with eager, not compile
    tried, skipped = planner.plan(_model(), _spec(), ["eager", "ort"])
    assert tried == ["ort"] and "slower than ort" in skipped["eager"] and "compile" not in skipped["eager"]


def test_runtimes_named_in_the_spec_are_all_tried():
    planner = RuntimePlanner()
    planner.observe("float", {"eager": 0.50, "compile": 0.29, "ort": 0.41}, source="c00")
    tried, skipped = planner.plan(_model(), _spec(("eager", "ort")), ["eager", "ort"])
    assert tried == ["eager", "ort"] and skipped == {}


def test_candidate_runtimes_keeps_to_the_allowed_ones():
    m = _model()
    assert candidate_runtimes(m, _spec(), None) == FLOAT
    assert candidate_runtimes(m, _spec(), ("ort", "eager")) == ["eager", "ort"]
    assert candidate_runtimes(m, _spec(("eager",)), ("ort",)) == ["eager"]  # none allowed: the first named


def test_reuse_key_sees_weights_runtimes_and_settings():
    a, b = _model(), _model()
    b.load_state_dict(a.state_dict())
    s = MeasureSettings().key(Goal())
    assert ReuseKey.of(a, FLOAT, s) == ReuseKey.of(b, FLOAT, s)
    assert ReuseKey.of(a, FLOAT, s) != ReuseKey.of(a, ["eager"], s)
    assert ReuseKey.of(a, FLOAT, s) != ReuseKey.of(a, FLOAT, MeasureSettings(repeats=3).key(Goal()))
    b[0].weight.data[0, 0] += 1.0
    assert ReuseKey.of(a, FLOAT, s) != ReuseKey.of(b, FLOAT, s)


def test_reuse_key_sees_what_int8_runtimes_read_beyond_the_weights(digits_task):
    """min-max and percentile PTQ of the same weights have equal state_dicts; ORT calibrates each its own way."""
    from effdl.compress.quantize import PTQConfig

    s, rts = MeasureSettings().key(Goal()), ["ort-int8"]
    mm = effdl.apply(digits_task, PTQConfig(num_batches=2))
    pct = effdl.apply(digits_task, PTQConfig(num_batches=2, calibration="percentile", percentile=99.0))
    assert ReuseKey.of(mm, rts, s) != ReuseKey.of(pct, rts, s)
    assert ReuseKey.of(mm, rts, s) == ReuseKey.of(mm, rts, s)


def test_all_runtimes_is_in_the_settings_key_and_checked():
    assert MeasureSettings().key(Goal())["all_runtimes"] is False
    assert MeasureSettings(all_runtimes=True).key(Goal())["all_runtimes"] is True
    with pytest.raises(ConfigError, match="all_runtimes"):
        MeasureSettings(all_runtimes="yes")


# --- end to end: real lowering and timing on the digits MLP ----------------------------------------

FAST = MeasureSettings(repeats=3, large_batch=8, runtimes=("eager", "ort"))


@pytest.fixture(scope="module")
def measured(digits_task, tmp_path_factory):
    """Baseline, a 30%-pruned copy and the baseline again, through one planner. margin 1.0 keeps only
    the runtime that was fastest on the baseline, so the second candidate provably tries fewer."""
    out = tmp_path_factory.mktemp("plan")
    goal = Goal().resolve(digits_task)
    planner, cache = RuntimePlanner(margin=1.0), PrefixCache(digits_task)
    specs = [CandidateSpec("c00", "baseline", Recipe(())),
             CandidateSpec("c01", "prune 30%", Recipe((effdl.prune.Magnitude(sparsity=0.3),))),
             CandidateSpec("c02", "baseline again", Recipe(()))]
    return {s.id: measure_candidate(s, cache, digits_task, out, goal, FAST, planner=planner) for s in specs}, out


def test_a_later_candidate_tries_fewer_runtimes_and_says_why(measured):
    cands, _ = measured
    base, pruned = cands["c00"], cands["c01"]
    assert base.ok and pruned.ok, (base.reason, pruned.reason)
    assert set(base.runtimes) == {"eager", "ort"} and base.runtimes_skipped == {}
    assert base.reused_from is None and pruned.reused_from is None
    # only the baseline's fastest runtime is tried; the other is recorded with the baseline's numbers
    assert list(pruned.runtimes) == [base.runtime] and pruned.runtime == base.runtime
    (slow, why), = pruned.runtimes_skipped.items()
    assert slow != base.runtime and f"slower than {base.runtime}" in why and "c00" in why
    assert f"{base.runtimes[slow].latency_ms_p50:.3g} vs {base.runtimes[base.runtime].latency_ms_p50:.3g} ms" in why


def test_an_identical_model_reuses_the_measurement(measured):
    cands, out = measured
    base, again = cands["c00"], cands["c02"]
    assert again.ok and again.reused_from == "c00"
    assert (again.id, again.label) == ("c02", "baseline again")
    assert again.runtimes == base.runtimes and again.runtime == base.runtime
    assert again.footprint == base.footprint and again.quality_val == base.quality_val
    assert not any(k.startswith("measure ") for k in again.stage_seconds)  # nothing lowered or timed
    assert again.artifacts["model"] == "candidates/c02/model.safetensors"
    assert (out / again.artifacts["model"]).is_file()


def test_without_a_planner_every_runtime_is_measured_fresh(digits_task, tmp_path):
    goal = Goal().resolve(digits_task)
    spec = CandidateSpec("c00", "baseline", Recipe(()))
    cache = PrefixCache(digits_task)
    first = measure_candidate(spec, cache, digits_task, tmp_path, goal, FAST)
    second = measure_candidate(spec, cache, digits_task, tmp_path, goal, FAST)
    assert set(first.runtimes) == set(second.runtimes) == {"eager", "ort"}
    assert first.reused_from is None and second.reused_from is None and second.runtimes_skipped == {}


def test_all_runtimes_measures_everything_even_with_a_planner(digits_task, tmp_path):
    goal = Goal().resolve(digits_task)
    planner = RuntimePlanner(margin=1.0)
    planner.observe("float", {"eager": 9.0, "ort": 0.1}, source="c00")  # eager "could not win"
    spec = CandidateSpec("c01", "prune 30%", Recipe((effdl.prune.Magnitude(sparsity=0.3),)))
    settings = MeasureSettings(repeats=3, large_batch=8, runtimes=("eager", "ort"), all_runtimes=True)
    cand = measure_candidate(spec, PrefixCache(digits_task), digits_task, tmp_path, goal, settings, planner=planner)
    assert cand.ok and set(cand.runtimes) == {"eager", "ort"} and cand.runtimes_skipped == {}


def test_state_digest_reads_quantized_state():
    # a dynamic INT8 Linear keeps a dtype and packed (weight, bias) in its state_dict: each is hashed by value
    import copy

    import torch

    from effdl.core.io import state_digest

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(8, 4))
    q = torch.ao.quantization.quantize_dynamic(m, {torch.nn.Linear}, dtype=torch.qint8)
    other = copy.deepcopy(m)
    with torch.no_grad():
        other[0].weight[0, 0] += 1.0
    q_other = torch.ao.quantization.quantize_dynamic(other, {torch.nn.Linear}, dtype=torch.qint8)
    assert state_digest(q) == state_digest(copy.deepcopy(q))
    assert state_digest(q) != state_digest(q_other)


def test_a_runtime_measured_alone_is_no_evidence_that_it_can_win():
    # the grid's first baseline runs on eager only: that must not keep eager in every later plan
    planner = RuntimePlanner(margin=1.25)
    planner.observe("float", {"eager": 0.119}, source="c00")
    planner.observe("float", {"eager": 0.150, "compile": 0.097, "ort": 0.0177}, source="c01")
    tried, skipped = planner.plan(_model(), _spec(), FLOAT)
    assert tried == ["ort"] and set(skipped) == {"eager", "compile"}
    assert "8.47x slower than ort on the earlier float candidate (0.15 vs 0.0177 ms" in skipped["eager"]


def test_the_prefix_cache_holds_models_within_its_byte_budget(digits_task):
    from effdl.pipeline.candidate import _tensor_bytes

    one = _tensor_bytes(digits_task.model)
    assert one == sum(p.numel() * 4 for p in digits_task.model.parameters())  # FP32 MLP, no buffers
    cache = PrefixCache(digits_task, budget=2 * one + 1)
    for s in (0.3, 0.5, 0.7):
        cache.build((effdl.prune.Magnitude(sparsity=s),))
    held = [json.loads(k)[0]["sparsity"] for k in cache.models]
    assert held == [0.5, 0.7]  # the least recently used went first
    assert PrefixCache(digits_task).budget == 256 << 20  # small models: the 256 MiB floor
