"""SIGKILL in the middle of a search, then the same search again: finished trials are kept, the
interrupted one is re-queued at once (this process owns the out dir's study) and measured, and the
snapshot written after each trial said the search was still running."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import optuna

SCRIPT = textwrap.dedent("""
    import sys
    import effdl
    from effdl.automate.search import SearchSettings
    from effdl.data import load_data
    from effdl.zoo import build
    from effdl.pipeline.recipe import Recipe
    from effdl.pipeline.results import MeasureSettings
    from effdl.pipeline.strategies import CandidateSpec
    import torch
    torch.manual_seed(0)
    d = load_data("digits")
    model = build("mlp", input_shape=d.input_shape, num_classes=d.num_classes, hidden=(64, 32))
    task = effdl.ImageClassification(model, d.train, d.val, d.test, num_classes=d.num_classes)
    task.train(model, epochs=5, lr=3e-3)
    P = effdl.prune.Magnitude
    specs = [CandidateSpec("c00", "baseline", Recipe(()))] + [
        CandidateSpec(f"c0{i}", f"prune {s}", Recipe((P(sparsity=s, finetune_epochs=6),)))
        for i, s in enumerate((0.5, 0.7, 0.8, 0.9), start=1)]
    effdl.optimize(task, effdl.Goal(max_drop=0.05), out_dir=sys.argv[1], candidates=specs,
                   measure=MeasureSettings(runtimes=("eager",), repeats=3),
                   search=SearchSettings(sampler="grid", trials=4))
""")


def _study(db):
    try:
        return optuna.load_study(study_name="effdl-search", storage=f"sqlite:///{db}")
    except Exception:  # not created yet
        return None


def _complete(db):
    s = _study(db) if db.exists() else None
    return 0 if s is None else sum(t.state == optuna.trial.TrialState.COMPLETE for t in s.trials)


def test_sigkill_then_resume_a_search(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    env = {**os.environ, "EFFDL_NO_REEXEC": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(out)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while _complete(out / "study.db") < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the search finished before it could be killed: make the trials longer"
    time.sleep(0.5)  # inside the next trial
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    S = optuna.trial.TrialState
    before = {t.number: t.params["grid"] for t in _study(out / "study.db").trials if t.state == S.COMPLETE}
    running = [t.number for t in _study(out / "study.db").trials if t.state == S.RUNNING]
    assert 2 <= len(before) < 4 and len(running) == 1
    snapshot = json.loads((out / "results.json").read_text())
    assert snapshot["search"]["stopped_by"] == "running" and snapshot["export"] is None

    t0 = time.time()
    r = subprocess.run([sys.executable, str(script), str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert time.time() - t0 < 120 + 60  # not held up by the 120 s heartbeat grace period
    study = _study(out / "study.db")
    trials = study.trials
    dead = trials[running[0]]
    assert dead.state == S.FAIL and dead.user_attrs["reason"].startswith("interrupted")
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retry) == 1 and retry[0].state == S.COMPLETE and retry[0].params == dead.params
    complete = {t.number: t.params["grid"] for t in trials if t.state == S.COMPLETE}
    assert {n: g for n, g in complete.items() if n in before} == before  # finished trials kept, not redone
    assert set(complete.values()) == {0, 1, 2, 3}
    final = json.loads((out / "results.json").read_text())
    assert final["search"]["stopped_by"] == "trials" and final["export"] is not None
