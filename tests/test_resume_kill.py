"""SIGKILL in the middle of `optimize`, then the same run again: finished candidates are not redone,
the interrupted one is, and no half-written artifact is visible."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import optuna

import effdl

SCRIPT = textwrap.dedent("""
    import json, sys
    import effdl
    from effdl.data import load_data
    from effdl.zoo import build
    from effdl.pipeline.recipe import Recipe
    from effdl.pipeline.strategies import CandidateSpec
    import torch
    torch.manual_seed(0)
    d = load_data("digits")
    model = build("mlp", input_shape=d.input_shape, num_classes=d.num_classes, hidden=(64, 32))
    task = effdl.ImageClassification(model, d.train, d.val, d.test, num_classes=d.num_classes)
    task.train(model, epochs=5, lr=3e-3)
    P = effdl.prune.Magnitude
    specs = [CandidateSpec("c00", "baseline", Recipe(()), ("eager",))] + [
        CandidateSpec(f"c0{i}", f"prune {s}", Recipe((P(sparsity=s, finetune_epochs=6),)), ("eager", "ort"))
        for i, s in enumerate((0.5, 0.7, 0.8, 0.9), start=1)
    ]
    events = []
    effdl.optimize(task, out_dir=sys.argv[1], candidates=specs, on_event=lambda ev, c: events.append([ev, c.id]))
    print(json.dumps(events))
""")


def _finished(db):
    if not db.exists():
        return 0
    try:
        study = optuna.load_study(study_name="effdl-optimize", storage=f"sqlite:///{db}")
    except Exception:  # the study row may not be written yet
        return 0
    return sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def test_sigkill_then_resume(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    env = {**os.environ, "EFFDL_NO_REEXEC": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while _finished(out / "study.db") < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed: make the grid longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = _finished(out / "study.db")
    assert 2 <= done_before < 5
    assert not (out / "results.json").exists()  # nothing final was written by the killed run
    assert not list(out.rglob("*.tmp"))  # temp files are renamed into place or never visible

    r = subprocess.run([sys.executable, str(script), str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    events = json.loads(r.stdout.strip().splitlines()[-1])
    resumed = [cid for ev, cid in events if ev == "resumed"]
    redone = [cid for ev, cid in events if ev == "done"]
    assert len(resumed) == done_before and sorted(resumed + redone) == ["c00", "c01", "c02", "c03", "c04"]
    study = optuna.load_study(study_name="effdl-optimize", storage=f"sqlite:///{out / 'study.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 5  # the killed run's finished trials were reused, not repeated
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert all(t.user_attrs.get("reason", "").startswith("interrupted") for t in failed)
    results = effdl.Results.load(out / "results.json")
    assert [c.id for c in results.candidates] == ["c00", "c01", "c02", "c03", "c04"]
    assert not list(out.rglob("*.tmp"))
