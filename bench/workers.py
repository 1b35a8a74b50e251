"""One study, one vs two worker processes on this 2-core machine, and a worker killed mid-trial.

    python bench/workers.py --quick      # results in bench/results/workers.md

The same fixed set of candidates (magnitude pruning of LeNet-5 / MNIST at N sparsities, each with
fine-tuning; ``--search grid`` over a candidates file, so every arm does the same work) is measured
through a shared SQLite study (several processes, heartbeats on): by `effdl optimize` alone, by
`effdl optimize` plus one `effdl worker`, and by the two with the worker SIGKILLed in its second
trial. Each process times with 1 thread (``--threads 1``) so two of them fit the 2 cores.
Reported: wall time from start to results.json, trials per process, failed and retried trials.
"""
from __future__ import annotations

from _publish import bench_main, environment_block

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = {"quick": {"sparsities": [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9], "finetune_epochs": 2.0},
         "full": {"sparsities": [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93, 0.95],
                  "finetune_epochs": 4.0}}
ENV = {**os.environ, "EFFDL_NO_REEXEC": "1"}


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "effdl.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT)


def _study(url: str):
    import optuna

    try:
        return optuna.load_study(study_name="bench", storage=url)
    except KeyError:
        return None


def _wait(cond, timeout: float):
    t0 = time.time()
    while time.time() - t0 < timeout:
        got = cond()
        if got:
            return got
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout} s")


def arm(name: str, mode: dict, tmp: Path) -> dict:
    import optuna

    cands = tmp / "cands.yaml"
    lines = ["- label: baseline", "  steps: []"] + [
        f"- label: prune {s}\n  steps:\n    - {{technique: prune.magnitude, sparsity: {s}, finetune_epochs: "
        f"{mode['finetune_epochs']}}}" for s in mode["sparsities"]]
    cands.write_text("\n".join(lines) + "\n")
    url = f"sqlite:///{tmp / f'{name}.db'}"
    args = ["--model", "zoo:lenet5", "--data", "mnist", "--threads", "1", "--repeats", "10", "--search", "grid",
            "--candidates", str(cands), "--trials", str(len(mode["sparsities"])), "--storage", url,
            "--study", "bench", "--heartbeat", "2"]
    t0 = time.perf_counter()
    coordinator = _cli("optimize", *args, "--out", str(tmp / name))
    worker = None
    if name != "one worker":
        _wait(lambda: (s := _study(url)) is not None and "effdl_baseline" in s.user_attrs, 600)
        worker = _cli("worker", "--study", "bench", "--storage", url, "--out", str(tmp / f"{name}-worker"))
        if name == "two, one killed":
            mine = f":{worker.pid}"

            def second():
                on = [t for t in _study(url).get_trials() if t.user_attrs.get("worker", "").endswith(mine)]
                done = any(t.state == optuna.trial.TrialState.COMPLETE for t in on)
                return done and any(t.state == optuna.trial.TrialState.RUNNING for t in on)

            _wait(second, 600)
            worker.send_signal(signal.SIGKILL)
    _, err = coordinator.communicate(timeout=3600)
    wall = time.perf_counter() - t0
    if coordinator.returncode != 0:
        raise RuntimeError(f"{name}: effdl optimize failed: {err[-2000:]}")
    if worker is not None and worker.poll() is None:
        worker.wait(600)
    trials = _study(url).get_trials()
    S = optuna.trial.TrialState
    by_process: dict[str, int] = {}
    for t in trials:
        if t.state == S.COMPLETE:
            w = t.user_attrs.get("worker", "?")
            by_process[w] = by_process.get(w, 0) + 1
    return {"arm": name, "wall_s": round(wall, 1), "complete": sum(t.state == S.COMPLETE for t in trials),
            "failed": sum(t.state == S.FAIL for t in trials),
            "retried": sum("failed_trial" in t.system_attrs for t in trials),
            "per_process": sorted(by_process.values(), reverse=True)}


def run(mode: dict, log) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_workers_") as tmp:
        for name in ("one worker", "two workers", "two, one killed"):
            rows.append(arm(name, mode, Path(tmp)))
            log(json.dumps(rows[-1]))
    return rows


def render(rows: list[dict], meta: dict) -> str:
    n = len(meta["mode"]["sparsities"])
    lines = ["# One study, one vs two workers (LeNet-5 / MNIST, shared SQLite study)", "",
             f"Mode `{meta['mode_name']}`: {n} candidates (magnitude pruning, {meta['mode']['finetune_epochs']} "
             f"fine-tuning epochs each) + the baseline, `--search grid` over a candidates file, `--threads 1` per "
             f"process. Run: `{meta['command']}` ({meta['seconds']:.0f} s).", "",
             "| arm | wall s (to results.json) | complete | failed | retried | complete trials per process |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['wall_s']:.0f} | {r['complete']} | {r['failed']} | {r['retried']} | "
                     f"{', '.join(map(str, r['per_process']))} |")
    one = rows[0]["wall_s"]
    lines += ["", f"Two workers / one: {rows[1]['wall_s'] / one:.2f} of the wall time; with one killed "
                  f"(its trial retried after 6 missed 2 s heartbeats): {rows[2]['wall_s'] / one:.2f}.", ""]
    return "\n".join(lines + environment_block(meta))


def main(argv: list[str] | None = None) -> int:
    return bench_main(__doc__, "workers", MODES, run, render, argv, threads=1)


if __name__ == "__main__":
    sys.exit(main())
