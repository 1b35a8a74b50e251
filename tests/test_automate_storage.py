"""automate.storage on real backends: a SQLite file, a journal file and a real PostgreSQL server
(the ``postgres_url`` fixture). Trials round-trip; two processes share one study without
clashing; a trial whose process was SIGKILLed is failed by the next worker once its heartbeat goes
stale, and retried; errors are typed and never show a password."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
import warnings

import optuna
import pytest

from effdl.automate import storage as st
from effdl.automate.storage import StorageError, open_storage, redact
from effdl.core.errors import EffdlError
from effdl.pipeline.study import INTERRUPTED, STUDY_NAME, Study

KINDS = ["sqlite", "journal", "postgres"]


@pytest.fixture
def url_of(tmp_path, request):
    def make(kind: str) -> str:
        if kind == "sqlite":
            return f"sqlite:///{tmp_path / 'study.db'}"
        if kind == "journal":
            return f"journal:{tmp_path / 'study.log'}"
        return request.getfixturevalue("postgres_url")
    return make


def _name() -> str:
    return f"s-{uuid.uuid4().hex[:8]}"  # one PostgreSQL database serves the whole session


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # ask/tell here; workers beat inside optimize
@pytest.mark.parametrize("kind", KINDS)
def test_a_trial_round_trips(kind, url_of, tmp_path):
    url, name = url_of(kind), _name()
    study = optuna.create_study(study_name=name, storage=open_storage(url, tmp_path / "unused.db"),
                                directions=["maximize", "minimize"])
    trial = study.ask()
    x = trial.suggest_float("sparsity", 0.1, 0.9)
    trial.set_user_attr("result", json.dumps({"ok": True}))
    study.tell(trial, [0.5, x])

    again = optuna.load_study(study_name=name, storage=open_storage(url, tmp_path / "unused.db"))
    (t,) = again.trials
    assert t.state == optuna.trial.TrialState.COMPLETE and t.values == [0.5, x]
    assert t.params == {"sparsity": x} and t.user_attrs == {"result": json.dumps({"ok": True})}
    assert not (tmp_path / "unused.db").exists()


def test_no_url_is_a_sqlite_file_at_the_default_path(tmp_path):
    store = open_storage(None, tmp_path / "sub" / "study.db")
    optuna.create_study(study_name="x", storage=store).optimize(lambda t: t.suggest_int("n", 0, 3), n_trials=2)
    assert (tmp_path / "sub" / "study.db").is_file()
    assert len(optuna.load_study(study_name="x", storage=f"sqlite:///{tmp_path / 'sub' / 'study.db'}").trials) == 2


@pytest.mark.parametrize("kind", KINDS)
def test_rdb_storages_beat_and_retry(kind, url_of, tmp_path):
    store = open_storage(url_of(kind), tmp_path / "unused.db")
    if kind == "journal":  # Optuna's JournalStorage has no heartbeat (docs/workers.md)
        assert not isinstance(store, optuna.storages.RDBStorage)
        return
    assert store.get_heartbeat_interval() == st.HEARTBEAT_INTERVAL and store.grace_period == st.GRACE_PERIOD
    retry = store.get_heartbeat_stale_trial_callback()
    assert isinstance(retry, optuna.storages.RetryHeartbeatStaleTrialCallback) and retry._max_retry == st.MAX_RETRY


def test_plain_postgresql_url_uses_psycopg3(postgres_url, tmp_path):
    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    store = open_storage(plain, tmp_path / "unused.db")
    assert store.engine.dialect.driver == ("psycopg2" if st._has("psycopg2") else "psycopg")
    optuna.create_study(study_name=_name(), storage=store).optimize(lambda t: 1.0, n_trials=1)


def test_an_unreachable_server_is_named_without_its_password(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(StorageError) as e:
        open_storage("postgresql://user:secret@127.0.0.1:1/db", tmp_path / "unused.db")
    msg = str(e.value)
    assert "127.0.0.1:1" in msg and "secret" not in msg and "user:***@" in msg and "PostgreSQL server" in msg
    assert isinstance(e.value, EffdlError) and time.perf_counter() - t0 < 30


def test_a_wrong_password_is_reported_without_it(postgres_url, tmp_path):
    host = postgres_url.split("@", 1)[1]
    with pytest.raises(StorageError) as e:
        open_storage(f"postgresql+psycopg://effdl:not-the-password@{host}", tmp_path / "unused.db")
    assert "not-the-password" not in str(e.value) and "password" in str(e.value)


def test_a_missing_driver_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(st, "_has", lambda module: False)
    with pytest.raises(StorageError, match=r"pip install 'effdl\[postgres\]'") as e:
        open_storage("postgresql://u:secret@db.example:5432/effdl", tmp_path / "unused.db")
    assert "secret" not in str(e.value)


@pytest.mark.parametrize("url, hint", [("mysql://u:secret@h/db", ""), ("runs/study.db", "sqlite:///runs/study.db"),
                                       ("runs/study.log", "journal:runs/study.log"), ("redis://h", "")])
def test_an_unknown_scheme_lists_the_accepted_ones(url, hint, tmp_path):
    with pytest.raises(StorageError) as e:
        open_storage(url, tmp_path / "unused.db")
    msg = str(e.value)
    assert "sqlite:///PATH" in msg and "journal:PATH" in msg and "postgresql://" in msg and "secret" not in msg
    assert hint in msg


@pytest.mark.parametrize("url", ["sqlite:///", "journal:", "sqlite:///no/such/dir/study.db", "journal:no/such/x.log"])
def test_a_storage_without_a_usable_file_is_refused(url, tmp_path):
    with pytest.raises(StorageError):
        open_storage(url, tmp_path / "unused.db")


def test_redact():
    assert redact("postgresql+psycopg://me:p%40ss@db:5432/x") == "postgresql+psycopg://me:***@db:5432/x"
    assert redact("postgresql://me@db/x") == "postgresql://me@db/x"
    assert redact("journal:/a/b.log") == "journal:/a/b.log" and redact(None) == ""


WORKER = textwrap.dedent("""
    import json, os, sys, time
    import optuna
    from effdl.automate.storage import open_storage
    url, name, ready, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    study = optuna.load_study(study_name=name, storage=open_storage(url, None))
    open(ready + f".{os.getpid()}", "w").close()
    while len([f for f in os.listdir(os.path.dirname(ready)) if f.startswith("ready.")]) < 2:
        time.sleep(0.01)  # both workers start asking together
    mine = []
    def objective(trial):
        x = trial.suggest_int("x", 0, 10**6)
        trial.set_user_attr("pid", os.getpid())
        mine.append(trial.number)
        time.sleep(0.01)
        return float(x)
    study.optimize(objective, n_trials=n)
    print(json.dumps(mine))
""")


@pytest.mark.parametrize("kind", ["journal", "postgres"])
def test_two_processes_share_one_study(kind, url_of, tmp_path):
    url, name, n = url_of(kind), _name(), 15
    optuna.create_study(study_name=name, storage=open_storage(url, tmp_path / "unused.db"))
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    procs = [subprocess.Popen([sys.executable, str(script), url, name, str(tmp_path / "ready"), str(n)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    numbers = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert not set(numbers[0]) & set(numbers[1]) and sorted(numbers[0] + numbers[1]) == list(range(2 * n))

    trials = optuna.load_study(study_name=name, storage=open_storage(url, tmp_path / "unused.db")).trials
    assert len(trials) == 2 * n and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert all(t.value == float(t.params["x"]) for t in trials)
    assert {t.user_attrs["pid"] for t in trials} == {p.pid for p in procs}


DOOMED = textwrap.dedent("""
    import sys, time
    import optuna
    from effdl.automate.storage import open_storage
    url, name = sys.argv[1], sys.argv[2]
    study = optuna.load_study(study_name=name, storage=open_storage(url, None, heartbeat_interval=1, grace_period=3))
    def objective(trial):
        trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        print("running", trial.number, flush=True)
        time.sleep(600)
    study.optimize(objective, n_trials=1)
""")


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_killed_workers_trial_is_failed_and_retried(kind, url_of, tmp_path):
    url, name = url_of(kind), _name()
    store = open_storage(url, tmp_path / "unused.db", heartbeat_interval=1, grace_period=3)
    study = optuna.create_study(study_name=name, storage=store)
    script = tmp_path / "doomed.py"
    script.write_text(DOOMED)
    proc = subprocess.Popen([sys.executable, str(script), url, name], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("running"), line
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (dead,) = study.trials
    assert dead.state == optuna.trial.TrialState.RUNNING

    with warnings.catch_warnings():  # fail_stale_trials is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # its heartbeat is fresh: within the grace period, it may be alive
    assert study.trials[0].state == optuna.trial.TrialState.RUNNING
    time.sleep(4.5)

    def objective(trial):  # the next worker's optimize checks heartbeats, then takes the re-queued copy
        return trial.suggest_float("lr", 1e-4, 1e-1, log=True)

    study.optimize(objective, n_trials=1)
    first, retry = study.trials
    assert first.state == optuna.trial.TrialState.FAIL
    assert retry.state == optuna.trial.TrialState.COMPLETE and retry.params == dead.params
    assert retry.system_attrs["failed_trial"] == dead.number and retry.system_attrs["retry_history"] == [dead.number]


def test_a_resumed_run_fails_its_own_interrupted_trial_at_once(tmp_path):
    s = Study(tmp_path)
    s.start("k1", "c00")  # never finished, as if the process was killed
    s2 = Study(tmp_path)
    (t,) = s2.study.trials
    assert t.state == optuna.trial.TrialState.FAIL and t.user_attrs["reason"] == INTERRUPTED


HOLDER = textwrap.dedent("""
    import sys, time
    from effdl.pipeline.study import Study
    s = Study(sys.argv[1])
    print("running", s.start("k1", "c00").number, flush=True)
    time.sleep(600)
""")


def test_a_live_process_keeps_its_running_trial_until_it_dies(tmp_path):
    """Another process owns OUT/study.db and runs a candidate: opening the Study here neither fails
    it nor waits. Once that process is killed, the next open fails the trial at once."""
    out = tmp_path / "out"
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    holder = subprocess.Popen([sys.executable, str(script), str(out)], stdout=subprocess.PIPE, text=True)
    try:
        line = holder.stdout.readline()
        assert line.startswith("running"), line
        t0 = time.perf_counter()
        here = Study(out)
        assert time.perf_counter() - t0 < 10
        assert [t.state for t in here.study.trials] == [optuna.trial.TrialState.RUNNING]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    again = Study(out)
    (t,) = again.study.trials
    assert t.state == optuna.trial.TrialState.FAIL and t.user_attrs["reason"] == INTERRUPTED


def test_fail_running_with_retry_requeues_the_trial(tmp_path):
    study = optuna.create_study(study_name="x", storage=open_storage(None, tmp_path / "study.db"))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        t = study.ask()
    t.suggest_int("n", 0, 9)
    assert st.fail_running(study, "interrupted", retry=True) == [t.number]
    dead, copy = study.trials
    assert dead.state == optuna.trial.TrialState.FAIL and dead.user_attrs["reason"] == "interrupted"
    assert copy.state == optuna.trial.TrialState.WAITING and copy.params == dead.params
    assert copy.system_attrs["failed_trial"] == dead.number


def test_a_study_on_a_shared_storage_leaves_running_trials_alone(postgres_url, tmp_path):
    from effdl.pipeline.results import Candidate

    first = Study(tmp_path / "a", storage=postgres_url)
    trial = first.start("k1", "c00")
    second = Study(tmp_path / "b", storage=postgres_url)  # a second process joining the same study
    assert second.study.trials[trial.number].state == optuna.trial.TrialState.RUNNING
    first.finish(trial, Candidate(id="c00", label="baseline", status="ok"), (0.9, 1.0))
    done = second.study.trials[trial.number]
    assert done.state == optuna.trial.TrialState.COMPLETE and done.values == [0.9, 1.0]
    assert set(second.finished()) >= {"k1"}
