"""The study: one Optuna trial per candidate, in any storage ``automate.storage`` opens (SQLite
at OUT/study.db by default).

Finished candidates are read back on a re-run, so an interrupted `effdl optimize` resumes without
redoing them. Measurements live in trial user attributes as JSON.

A RUNNING trial is not necessarily dead: another process may share the study. So on open:

- default storage (OUT/study.db): the first Study of a process takes an exclusive lock on
  OUT/study.db.lock (``storage.claim``). Holding it, no other process uses that file, so a RUNNING
  trial was left by a killed run: it is marked failed ("interrupted") at once and its candidate
  redone, without waiting for a heartbeat to go stale. If another live process holds the lock,
  its RUNNING trials are left alone.
- any storage: trials whose heartbeat is older than the grace period (their process died) are
  failed, as Optuna's optimize loop does (``optuna.storages.fail_stale_trials``).

A started candidate beats (``storage.Heartbeat``) until ``finish``, so other processes can tell it
is alive.
"""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import optuna
import pydantic

from ..automate.storage import Heartbeat, claim, fail_running, open_storage
from .results import Candidate

STUDY_NAME = "effdl-optimize"
INTERRUPTED = "interrupted before it finished"


class Study:
    def __init__(self, out_dir: Path | str, storage: str | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        default = (self.out_dir / "study.db").resolve()
        self.storage = storage or f"sqlite:///{default}"
        optuna.logging.set_verbosity(logging.WARNING)
        self._storage = open_storage(storage, default)
        self.study = optuna.create_study(
            study_name=STUDY_NAME, storage=self._storage, directions=["maximize", "minimize"], load_if_exists=True
        )
        self._beats: dict[int, Heartbeat] = {}
        if storage is None and claim(default):
            fail_running(self.study, INTERRUPTED)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)

    def finished(self) -> dict[str, Candidate]:
        """key -> stored candidate, for trials that completed (ok or recorded failure).

        A stored result that no longer reads as a Candidate (written by another effdl version) is
        left out, so that candidate is measured again rather than trusted."""
        out = {}
        for t in self.study.get_trials(deepcopy=False):
            if "result" in t.user_attrs and t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL):
                try:
                    out[t.user_attrs["key"]] = Candidate.model_validate(json.loads(t.user_attrs["result"]))
                except (pydantic.ValidationError, json.JSONDecodeError):
                    continue
        return out

    def start(self, key: str, candidate_id: str) -> optuna.trial.Trial:
        with warnings.catch_warnings():  # "heartbeat ... used with Study.optimize": this class beats by itself
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = self.study.ask()
        self._beats[trial._trial_id] = Heartbeat(self._storage, trial._trial_id)
        trial.set_user_attr("key", key)
        trial.set_user_attr("candidate_id", candidate_id)
        return trial

    def finish(self, trial: optuna.trial.Trial, result: Candidate, values: tuple[float, float] | None) -> None:
        """Store ``result``; ``values`` are (quality, larger is better; target footprint)."""
        beat = self._beats.pop(trial._trial_id, None)
        if beat is not None:
            beat.stop()
        trial.set_user_attr("result", json.dumps(result.model_dump(mode="python"), default=str))
        if result.ok and values is not None:
            self.study.tell(trial, list(values))
        else:
            trial.set_user_attr("reason", result.reason or "failed")
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
