"""Fault injection: `optimize` SIGKILLed again and again at seeded random moments (while training,
lowering, writing the study, the chosen model or the report), resumed each time. Finished
candidates are never lost or redone, and after every kill each visible file is whole: JSON parses,
safetensors and ONNX files load. Hidden staging names (".name.*.tmp") are the only partial files,
and the next run never reads them."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import onnx
import optuna
from safetensors.torch import load_file
from test_resume_kill import SCRIPT, _finished

import effdl


def _visible_files_are_whole(out) -> int:
    n = 0
    for p in out.rglob("*"):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(out).parts):
            continue
        if p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".safetensors":
            load_file(str(p))
        elif p.suffix == ".onnx":
            onnx.checker.check_model(onnx.load(str(p)))
        n += 1
    return n


def test_repeated_sigkill_at_random_moments_then_resume(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    env = {**os.environ, "EFFDL_NO_REEXEC": "1"}
    rng = random.Random(7)
    finished = 0
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, str(script), str(out)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(4.0, 25.0))  # start-up is ~4 s; one candidate takes a few seconds
        if proc.poll() is not None:  # it finished first: the last rounds are plain re-runs
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        now = _finished(out / "study.db")
        assert now >= finished  # nothing finished is ever lost
        finished = now
        _visible_files_are_whole(out)
        if (out / "results.json").exists():  # killed after the results were written: they are whole
            effdl.Results.load(out / "results.json")
    r = subprocess.run([sys.executable, str(script), str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    events = json.loads(r.stdout.strip().splitlines()[-1])
    resumed = [cid for ev, cid in events if ev == "resumed"]
    assert len(resumed) == finished  # everything finished before was read back, not redone
    study = optuna.load_study(study_name="effdl-optimize", storage=f"sqlite:///{out / 'study.db'}")
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) == 5
    results = effdl.Results.load(out / "results.json")
    assert [c.id for c in results.candidates] == ["c00", "c01", "c02", "c03", "c04"]
    assert all(c.ok for c in results.candidates)
    assert _visible_files_are_whole(out) > 10
    assert (out / "model" / "recipe.json").is_file() and (out / "report.html").is_file()
