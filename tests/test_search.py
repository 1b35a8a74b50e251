"""Searches on Optuna against measured numbers: real model and data (digits MLP), real runtimes, a real
SQLite study. Few trials and cheap spaces: the point is the contract, not the search's quality
(bench/search.py measures that)."""
import json
import math

import optuna
import pytest

import effdl
from effdl import Goal
from effdl.automate.search import SearchSettings, _Search
from effdl.automate.space import SearchSpace
from effdl.core.errors import ConfigError
from effdl.pipeline.results import MeasureSettings

FAST = MeasureSettings(repeats=3, runtimes=("eager", "ort", "ort-int8"))
# cheap: no fine-tuning, so a trial is a prune/quantize and a measurement
SPACE = SearchSpace.from_list([
    {"name": "prune", "optional": True, "technique": "prune.magnitude", "sparsity": {"range": [0.2, 0.95]}},
    {"name": "quantize", "optional": True, "technique": "quantize.ptq", "calibration": {"choices": ["minmax", "percentile"]}},
])


def _search(task, out, storage_url=None, **kw):
    settings = SearchSettings(**{"sampler": "tpe", "trials": 5, "space": SPACE, "pruner": "none", **kw})
    return effdl.optimize(task, Goal(max_drop=0.05), out_dir=out, measure=FAST, search=settings, storage=storage_url)


@pytest.fixture(scope="module")
def tpe(digits_task, tmp_path_factory):
    out = tmp_path_factory.mktemp("tpe")
    return out, _search(digits_task, out)


def test_tpe_search_measures_its_trials_and_chooses_among_them(tpe):
    out, res = tpe
    s = res.search
    assert s.sampler == "tpe" and s.trials == 5 and s.stopped_by == "trials"
    assert s.complete + s.pruned + s.failed == 5
    trials = [c for c in res.candidates if c.trial is not None]
    assert res.baseline == "c00" and [c.trial for c in trials] == sorted(c.trial for c in trials)
    assert all(c.id == f"t{c.trial:03d}" for c in trials)
    # each trial's recipe is the one its sampled parameters name
    for c in trials:
        names = [step["technique"] for step in c.recipe]
        assert ("prune.magnitude" in names) == (c.params["prune"] == "prune.magnitude")
        assert ("quantize.ptq" in names) == (c.params["quantize"] == "quantize.ptq")
        if "prune.magnitude" in names:
            assert c.recipe[0]["sparsity"] == pytest.approx(c.params["prune.magnitude.sparsity"], rel=5e-3)
    # the hypervolume only grows, one value per complete trial
    assert len(s.hypervolume) == s.complete
    assert all(b >= a for a, b in zip(s.hypervolume, s.hypervolume[1:]))
    if res.chosen is not None:
        chosen = res.chosen_candidate
        assert chosen.quality_drop_val <= 0.05 + 1e-12
    data = json.loads((out / "results.json").read_text())
    assert data["search"]["sampler"] == "tpe"


def test_the_study_stores_trials_with_their_constraint(tpe):
    out, res = tpe
    study = optuna.load_study(study_name="effdl-search", storage=f"sqlite:///{out / 'study.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    by_id = {c.id: c for c in res.candidates}
    for t in complete:
        c = by_id[f"t{t.number:03d}"]
        assert t.values[0] == c.footprint.latency_ms_p50  # minimised: the target footprint, as measured
        assert t.constraints == {"quality_drop": pytest.approx(c.quality_drop_val - 0.05)}  # <= 0: feasible


def test_a_rerun_resumes_and_more_trials_extend_the_study(tpe, digits_task):
    out, res = tpe
    again = _search(digits_task, out)
    assert [c.id for c in again.candidates] == [c.id for c in res.candidates]
    more = _search(digits_task, out, trials=7)
    assert more.search.trials == 7 and len(more.candidates) >= len(res.candidates)


def test_a_different_search_under_the_same_study_name_is_refused(tpe, digits_task):
    out, _ = tpe
    with pytest.raises(ConfigError, match="holds a different search"):
        _search(digits_task, out, sampler="random")
    with pytest.raises(ConfigError, match="holds a different search"):
        effdl.optimize(digits_task, Goal(max_drop=0.05), out_dir=out, measure=MeasureSettings(repeats=4, runtimes=FAST.runtimes),
                       search=SearchSettings(trials=5, space=SPACE, pruner="none"))


def test_nsga2_searches_quality_and_two_footprints(digits_task, tmp_path):
    res = _search(digits_task, tmp_path, sampler="nsga2", trials=4, objectives=("latency", "size"))
    s = res.search
    assert s.objectives == ["quality", "latency_ms_p50", "size_bytes"] and s.constraint is None and s.pruner is None
    assert s.hypervolume_axes[1:] == ["latency_ms_p50 / baseline", "size_bytes / baseline"]
    assert s.hypervolume_reference == [2.0, 1.0, 1.0]
    study = optuna.load_study(study_name="effdl-search", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE", "MINIMIZE"]


def test_grid_sampler_draws_the_strategys_candidates(digits_task, tmp_path):
    from effdl.pipeline.strategies import candidates_for

    res = effdl.optimize(digits_task, Goal(max_drop=0.05), out_dir=tmp_path, measure=FAST, strategy="quantization",
                         search=SearchSettings(sampler="grid", trials=3, pruner="none"))
    grid = {s.label: s.recipe.to_list() for s in candidates_for("quantization", task=digits_task) if s.recipe.steps}
    trials = [c for c in res.candidates if c.trial is not None]
    assert len(trials) == 3 and len({c.label for c in trials}) == 3
    for c in trials:
        assert c.recipe == json.loads(json.dumps(grid[c.label]))


def _broken_ptq(monkeypatch, error: Exception) -> SearchSpace:
    """quantize.ptq replaced by a function raising ``error``; a space where a trial may pick it."""
    from effdl.core import registry

    real = registry._BY_NAME["quantize.ptq"]

    def broken(model, config, task=None, **kw):
        raise error

    tech = registry.Technique(real.name, real.config, broken, real.needs, real.summary, real.tasks,
                              real.models, real.example, real.takes_quantized)
    monkeypatch.setitem(registry._BY_NAME, "quantize.ptq", tech)
    monkeypatch.setitem(registry._BY_TYPE, real.config, tech)
    return SearchSpace.from_list([{"name": "quantize", "optional": True, "technique": "quantize.ptq"},
                                  {"name": "prune", "technique": "prune.magnitude", "sparsity": {"range": [0.2, 0.5]}}])


def test_a_trial_that_raises_is_recorded_and_the_study_goes_on(digits_task, tmp_path, monkeypatch):
    space = _broken_ptq(monkeypatch, MemoryError("simulated: the allocator gave up"))
    res = effdl.optimize(digits_task, Goal(max_drop=0.05), out_dir=tmp_path, measure=FAST,
                         search=SearchSettings(sampler="random", trials=6, space=space, pruner="none", seed=3))
    failed = [c for c in res.candidates if not c.ok]
    assert res.search.trials == 6 and failed, "seed 3 samples the broken technique at least once"
    assert all("MemoryError" in c.reason and "allocator gave up" in c.reason for c in failed)
    assert res.search.failed == len(failed) and res.search.complete == 6 - len(failed)


def test_a_measurement_that_is_not_a_number_fails_the_trial(digits_task, tpe):
    _, res = tpe
    base = res.candidates[0]
    runner = object.__new__(_Search)
    runner.goal, runner.settings, runner.multi, runner.sign = res.goal, SearchSettings(space=SPACE), False, 1.0
    runner.base_val, runner.baseline = base.quality_val["accuracy"], base
    assert runner.values(base) == base.footprint.latency_ms_p50
    nan = base.model_copy(update={"quality_val": {"accuracy": math.nan}})
    assert runner.values(nan) is None


def test_the_pruner_stops_only_trials_beyond_the_allowance(digits_task, tpe):
    _, res = tpe
    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    done = study.ask()
    done.report(0.0, 1)
    study.tell(done, 1.0)
    runner = object.__new__(_Search)
    runner.goal, runner.base_val = res.goal, res.candidates[0].quality_val["accuracy"]
    feasible = study.ask()
    runner._epoch_check(feasible)(digits_task, digits_task.model, 1.0)  # drop 0: reports 0, never pruned
    assert feasible.storage.get_trial(feasible._trial_id).intermediate_values == {1: 0.0}
    hopeless = study.ask()
    untrained = effdl.zoo.build("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=(64, 32))
    with pytest.raises(optuna.TrialPruned, match="validation drop"):
        runner._epoch_check(hopeless)(digits_task, untrained, 1.0)  # about 10% accuracy: far beyond 0.05


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="unknown sampler 'tpee'.*tpe"):
        SearchSettings(sampler="tpee")
    with pytest.raises(ConfigError, match="trials must be a positive"):
        SearchSettings(trials=0)
    with pytest.raises(ConfigError, match="unknown objective 'speed'"):
        SearchSettings(objectives=("speed",))
    with pytest.raises(ConfigError, match="cmaes optimises one objective"):
        SearchSettings(sampler="cmaes", objectives=("latency", "size"))


def test_a_journal_study_is_written_from_what_finished(digits_task, tmp_path):
    # several processes on one machine share a journal file; it has no heartbeats, so a trial left
    # RUNNING (here: asked and never told, as by a killed worker) cannot be told from a live one and
    # the results are written from the finished trials instead of waiting for it
    url = f"journal:{tmp_path / 'journal.log'}"
    first = _search(digits_task, tmp_path / "a", trials=2, storage_url=url)
    study = optuna.load_study(study_name="effdl-search", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "journal.log"))))
    study.ask()  # a trial that will never finish
    again = _search(digits_task, tmp_path / "a", trials=2, storage_url=url)
    assert [c.id for c in again.candidates] == [c.id for c in first.candidates]


def test_cmaes_minimises_the_footprint_with_the_excess_drop_as_a_penalty(digits_task, tmp_path):
    res = _search(digits_task, tmp_path, sampler="cmaes", trials=3)
    base = res.baseline_candidate
    study = optuna.load_study(study_name="effdl-search", storage=f"sqlite:///{tmp_path / 'study.db'}")
    by_id = {c.id: c for c in res.candidates}
    for t in study.trials:
        if t.state != optuna.trial.TrialState.COMPLETE:
            continue
        c = by_id[f"t{t.number:03d}"]
        excess = max(0.0, c.quality_drop_val - 0.05)
        expected = c.footprint.latency_ms_p50 + base.footprint.latency_ms_p50 * excess / 0.05
        assert t.value == pytest.approx(expected, rel=1e-9)


def test_a_failed_candidate_is_told_to_the_sampler_as_infeasible(digits_task, tmp_path, monkeypatch):
    """Samplers ignore FAIL trials and would keep proposing a recipe that cannot work: effdl tells them
    a complete trial with no gain and the largest constraint violation, and still counts it as failed."""
    from effdl.automate.search import FAILED_VIOLATION

    space = _broken_ptq(monkeypatch, RuntimeError("simulated: no kernel for this layer"))
    res = effdl.optimize(digits_task, Goal(max_drop=0.05, target="size"), out_dir=tmp_path, measure=FAST,
                         search=SearchSettings(sampler="tpe", trials=6, space=space, pruner="none", seed=3))
    study = optuna.load_study(study_name="effdl-search", storage=f"sqlite:///{tmp_path / 'study.db'}")
    failed = [t for t in study.trials if t.params.get("quantize") == "quantize.ptq"]
    assert failed, "seed 3 samples the broken technique"
    base_size = res.baseline_candidate.footprint.size_bytes
    for t in failed:
        assert t.state == optuna.trial.TrialState.COMPLETE and t.value == base_size
        assert t.constraints == {"quality_drop": FAILED_VIOLATION}
    assert res.search.failed == len(failed) and res.search.complete == 6 - len(failed)
    assert all("simulated: no kernel" in c.reason for c in res.candidates if not c.ok)
