"""One study, two processes on a real PostgreSQL server: `effdl optimize --search` and `effdl worker`;
one worker is SIGKILLed in mid-trial. Nothing finished is lost, the killed trial is retried, and the
frontier equals a one-process run's on the same trials (target size: exact numbers, no timing noise)."""
import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

ENV = {**os.environ, "EFFDL_NO_REEXEC": "1"}
SPARSITIES = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
ARGS = ["--model", "zoo:mlp", "--data", "digits", "--runtimes", "eager", "--repeats", "3", "--target", "size",
        "--max-drop", "0.05", "--search", "grid", "--pruner", "none", "--trials", str(len(SPARSITIES)), "--heartbeat", "1"]


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "effdl.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, **kw)


def _candidates(path):
    # fine-tuning long enough (a few seconds a trial) for the kill to land inside one
    lines = ["- label: baseline", "  steps: []"]
    for s in SPARSITIES:
        lines += [f"- label: prune {s}", "  steps:", f"    - {{technique: prune.magnitude, sparsity: {s}, "
                                                       "finetune_epochs: 12}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def _wait(cond, timeout, what):
    t0 = time.time()
    while time.time() - t0 < timeout:
        got = cond()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


_STORAGES = {}


def _study(url, name):
    # one storage (one connection pool) per URL for all the polling: a new one per call would leak
    # connections until the server refuses more
    storage = _STORAGES.setdefault(url, optuna.storages.RDBStorage(url))
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


@pytest.mark.slow
def test_two_workers_one_killed_nothing_lost_and_the_same_frontier(postgres_url, tmp_path):
    cands = _candidates(tmp_path / "cands.yaml")
    coordinator = _cli("optimize", *ARGS, "--candidates", str(cands), "--storage", postgres_url, "--study", "shared",
                       "--out", str(tmp_path / "coordinator"))
    try:
        # the worker joins once the study holds its job and the baseline
        _wait(lambda: (s := _study(postgres_url, "shared")) is not None and "effdl_baseline" in s.user_attrs, 240,
              "the baseline")
        worker = _cli("worker", "--study", "shared", "--storage", postgres_url, "--out", str(tmp_path / "worker"))
        mine = f":{worker.pid}"

        def second_trial_on_worker():  # one finished by the worker, and the next one running there
            s = _study(postgres_url, "shared")
            on = [t for t in s.get_trials() if t.user_attrs.get("worker", "").endswith(mine)]
            done = [t for t in on if t.state == optuna.trial.TrialState.COMPLETE]
            running = [t for t in on if t.state == optuna.trial.TrialState.RUNNING]
            return (done, running[0]) if done and running else None

        try:
            finished_by_worker, killed = _wait(second_trial_on_worker, 240, "a second trial running on the worker")
        except AssertionError as exc:
            worker.kill()
            coordinator.kill()
            raise AssertionError(f"{exc}\nworker: {worker.communicate()[1][-3000:]}\n"
                                 f"coordinator: {coordinator.communicate()[1][-3000:]}") from None
        time.sleep(0.5)
        worker.send_signal(signal.SIGKILL)
        worker.wait(30)
        out, err = coordinator.communicate(timeout=400)
        assert coordinator.returncode == 0, err[-4000:]
    finally:
        for p in (coordinator, locals().get("worker")):
            if p is not None and p.poll() is None:
                p.kill()
    study = _study(postgres_url, "shared")
    S = optuna.trial.TrialState
    trials = study.get_trials()
    dead = next(t for t in trials if t.number == killed.number)
    assert dead.state == S.FAIL and "result" not in dead.user_attrs  # failed by the missed heartbeats
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retried) == 1 and retried[0].state == S.COMPLETE
    assert retried[0].params == killed.params
    complete = [t for t in trials if t.state == S.COMPLETE]
    # every grid point measured, whichever process ran it
    assert {t.params["grid"] for t in complete} == set(range(len(SPARSITIES)))
    # what the killed worker had finished is kept, in the study and in the results
    results = json.loads((tmp_path / "coordinator" / "results.json").read_text())
    ids = {c["id"] for c in results["candidates"]}
    assert {f"t{t.number:03d}" for t in complete} <= ids
    for t in finished_by_worker:
        assert study.trials[t.number].state == S.COMPLETE and f"t{t.number:03d}" in ids

    # the same trials in one process: the same frontier (size is exact; quality is seeded)
    one = subprocess.run([sys.executable, "-m", "effdl.cli", "optimize", *ARGS, "--candidates", str(cands),
                          "--out", str(tmp_path / "one")], capture_output=True, text=True, env=ENV, timeout=600)
    assert one.returncode == 0, one.stderr[-4000:]
    single = json.loads((tmp_path / "one" / "results.json").read_text())

    def frontier(res):
        labels = {c["id"]: c["label"] for c in res["candidates"]}
        return sorted(labels[i] for i in res["frontier"]["size"])

    assert frontier(results) == frontier(single)
