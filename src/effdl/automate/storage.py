"""Where a study lives: one URL -> an Optuna storage that several worker processes can share.

Accepted storages (``open_storage``):

- ``None``: a SQLite file at the caller's default path (``OUT/study.db``);
- ``sqlite:///PATH``: a SQLite file (one machine; fine for a few processes);
- ``journal:PATH``: Optuna's JournalStorage on an append-only file (several processes on one
  machine, no database); it has no heartbeats, so a killed worker's trial stays RUNNING;
- ``postgresql://...``, ``postgresql+psycopg://...``: a PostgreSQL server (several machines;
  ``pip install 'effdl[postgres]'``). A plain ``postgresql://`` uses psycopg 3 unless psycopg2 is
  installed.

SQLite and PostgreSQL storages record a heartbeat of each running trial every
``heartbeat_interval`` seconds. A trial whose heartbeat is older than ``grace_period`` (its worker
died) is marked FAIL by the next worker that starts a trial, and re-queued (WAITING, with the same
parameters; Optuna's system attrs ``failed_trial``/``retry_history`` name the original) at most
``MAX_RETRY`` times.
"""
from __future__ import annotations

import fcntl
import importlib.util
import os
import threading
import warnings
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import optuna

from ..core.errors import EffdlError

#: seconds between two heartbeats of a running trial (one small UPDATE per worker)
HEARTBEAT_INTERVAL = 20
#: seconds without a heartbeat before a running trial counts as dead: six missed beats, so a worker
#: busy in a long native call, or waiting on a locked SQLite file, is not declared dead by mistake
#: (a false alarm wastes a live trial; a late detection only delays one retry)
GRACE_PERIOD = 120
#: re-runs of a trial whose worker died; a trial that itself kills its worker (out of memory, a
#: crashing runtime) is given up after this many instead of taking every worker down in turn
MAX_RETRY = 2
#: seconds a PostgreSQL connection attempt may take before the server counts as unreachable
CONNECT_TIMEOUT = 10
#: seconds a SQLite writer waits for another process's lock before failing
SQLITE_BUSY_TIMEOUT = 60

SCHEMES = ("sqlite:///PATH", "journal:PATH", "postgresql://USER:PASSWORD@HOST:PORT/DB",
           "postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB")


class StorageError(EffdlError):
    """A study storage URL is malformed, its driver is missing, or its server cannot be reached."""


def redact(url: str | os.PathLike | None) -> str:
    """``url`` with its password replaced by ``***`` (for messages and reports); plain paths as is."""
    text = "" if url is None else str(url)
    if "://" not in text:
        return text
    parts = urlsplit(text)
    if parts.password is None:
        return text
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def open_storage(url: str | None, default_path: Path, *, heartbeat_interval: int = HEARTBEAT_INTERVAL,
                 grace_period: int = GRACE_PERIOD, max_retry: int = MAX_RETRY) -> optuna.storages.BaseStorage:
    """The Optuna storage ``url`` names (module docstring), or a SQLite file at ``default_path``."""
    if heartbeat_interval < 1 or grace_period <= heartbeat_interval:
        raise StorageError(f"heartbeat_interval must be >= 1 s and grace_period longer than it; got "
                           f"{heartbeat_interval} and {grace_period}")
    beat = dict(heartbeat_interval=heartbeat_interval, grace_period=grace_period, max_retry=max_retry)
    if url is None:
        path = Path(default_path).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return _sqlite(f"sqlite:///{path}", path, **beat)
    url = str(url).strip()
    if url.startswith("sqlite:///"):
        return _sqlite(url, url[len("sqlite:///"):], **beat)
    if url.startswith("journal:"):
        return _journal(url[len("journal:"):])
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2"):
        return _postgres(url, scheme, **beat)
    hint = ""
    if not scheme and url.endswith((".db", ".sqlite", ".sqlite3")):
        hint = f" For a SQLite file write sqlite:///{url}."
    elif not scheme and url.endswith((".log", ".journal")):
        hint = f" For a journal file write journal:{url}."
    raise StorageError(f"unknown study storage {redact(url)!r}: accepted are {', '.join(SCHEMES)} (or none, for "
                       f"OUT/study.db).{hint}")


def _retry(max_retry: int) -> dict:
    """The stale-trial callback keyword of RDBStorage (renamed in Optuna 4.9)."""
    cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    if cls is not None:
        return {"heartbeat_stale_trial_callback": cls(max_retry=max_retry)}
    return {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=max_retry)}


def _rdb(url: str, shown: str, engine_kwargs: dict, *, heartbeat_interval: int, grace_period: int,
         max_retry: int, check: str) -> optuna.storages.RDBStorage:
    import sqlalchemy.exc

    try:
        with warnings.catch_warnings():  # heartbeat_interval is marked experimental; effdl relies on it knowingly
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                                              grace_period=grace_period, **_retry(max_retry))
    except sqlalchemy.exc.DBAPIError as exc:  # OperationalError (unreachable, refused login), ProgrammingError...
        reason = _first_line(exc.orig if exc.orig is not None else exc, url)
        raise StorageError(f"cannot open the study storage {shown}: {reason}. {check}") from None
    except sqlalchemy.exc.ArgumentError as exc:
        raise StorageError(f"malformed study storage URL {shown}: {_first_line(exc, url)}. Accepted are "
                           f"{', '.join(SCHEMES)}") from None


def _first_line(exc: BaseException, url: str) -> str:
    """The first line of a driver's error, with the URL's password scrubbed should the driver echo it."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    password = urlsplit(url).password if "://" in url else None
    return text.replace(password, "***") if password else text


def _sqlite(url: str, file: str | Path, **beat) -> optuna.storages.RDBStorage:
    if str(file).split("?", 1)[0] in ("", ":memory:"):
        raise StorageError(f"{url!r} names no file: give sqlite:///PATH (an in-memory study cannot be shared)")
    path = Path(str(file).split("?", 1)[0])
    if not path.parent.is_dir():
        raise StorageError(f"cannot open the study storage {url}: the folder {path.parent} does not exist")
    return _rdb(url, url, {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT}}, **beat,
                check="Check that the file is a SQLite database this user may write.")


def _journal(path: str) -> optuna.storages.BaseStorage:
    from optuna.storages.journal import JournalFileBackend

    if not path:
        raise StorageError("journal: names no file: give journal:PATH (for example journal:runs/study.log)")
    file = Path(path).expanduser()
    if not file.parent.is_dir():
        raise StorageError(f"cannot open the study storage journal:{path}: the folder {file.parent} does not exist")
    try:
        return optuna.storages.JournalStorage(JournalFileBackend(str(file)))
    except OSError as exc:
        raise StorageError(f"cannot open the study storage journal:{path}: {exc}") from None


def _postgres(url: str, scheme: str, **beat) -> optuna.storages.RDBStorage:
    rest = url.split("://", 1)[1]
    if scheme in ("postgresql", "postgres"):  # SQLAlchemy's default driver is psycopg2; effdl installs psycopg 3
        scheme = "postgresql+psycopg2" if _has("psycopg2") else "postgresql+psycopg"
    driver = "psycopg2" if scheme.endswith("psycopg2") else "psycopg"
    if not _has(driver):
        raise StorageError(f"the study storage {redact(url)} needs the PostgreSQL driver {driver}, which is not "
                           "installed: pip install 'effdl[postgres]'")
    parts = urlsplit(f"{scheme}://{rest}")
    try:
        where = f"{parts.hostname or 'localhost'}:{parts.port or 5432}"
    except ValueError:
        raise StorageError(f"malformed study storage URL {redact(url)}: the port is not a number") from None
    full = f"{scheme}://{rest}"
    return _rdb(full, redact(full), {"connect_args": {"connect_timeout": CONNECT_TIMEOUT}, "pool_pre_ping": True},
                **beat, check=f"Check that a PostgreSQL server runs on {where} and accepts connections from this "
                "machine (listen_addresses, pg_hba.conf, firewall), that the database exists and that the user and "
                "password are right (docs/workers.md).")


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


# -- one owner of an output folder's default study ---------------------------------------------------

_OWNED: dict[str, int] = {}
_OWNED_LOCK = threading.Lock()


def claim(path: Path) -> bool:
    """Whether this process is the only one using the study file ``path`` (it takes, and keeps
    until it exits, an exclusive lock on ``path`` + ``.lock``). When it is, a RUNNING trial in that
    file was left by a process that died, and can be failed at once without waiting for the
    heartbeat grace period."""
    lock = Path(str(Path(path).resolve()) + ".lock")
    with _OWNED_LOCK:
        if str(lock) in _OWNED:
            return True
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        _OWNED[str(lock)] = fd  # held for the process's life; the kernel releases it when the process dies
        return True


def fail_running(study: optuna.Study, reason: str, *, retry: bool = False) -> list[int]:
    """Mark every RUNNING trial of ``study`` FAIL with user attribute ``reason`` (for a study this
    process owns alone: see ``claim``); returns their numbers. ``retry``: also hand each to the
    storage's stale-trial callback (a WAITING copy with the same parameters), as a stale heartbeat
    would, so a search re-runs it; without it, no copies are made."""
    callback = getattr(study._storage, "get_heartbeat_stale_trial_callback", lambda: None)() if retry else None
    failed = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        try:
            study._storage.set_trial_user_attr(t._trial_id, "reason", reason)
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        except (RuntimeError, ValueError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # finished meanwhile
        failed.append(t.number)
        if callback is not None:
            callback(study, study._storage.get_trial(t._trial_id))
    return failed


class Heartbeat:
    """Records a heartbeat of one trial every interval from a daemon thread until ``stop()``, for
    trials run outside ``Study.optimize`` (ask/tell), which beats by itself. A no-op on storages
    without heartbeats."""

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int) -> None:
        interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
        self._stop = threading.Event()
        self._thread = None
        if interval:
            self._thread = threading.Thread(target=self._run, args=(storage, trial_id, interval),
                                            name=f"effdl-heartbeat-{trial_id}", daemon=True)
            self._thread.start()

    def _run(self, storage, trial_id: int, interval: int) -> None:
        while True:
            try:
                storage.record_heartbeat(trial_id)
            except Exception:  # the storage went away (closed, deleted): nothing left to keep alive
                return
            if self._stop.wait(interval):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)


__all__ = ["HEARTBEAT_INTERVAL", "GRACE_PERIOD", "MAX_RETRY", "StorageError", "open_storage", "redact", "claim",
           "fail_running", "Heartbeat"]
