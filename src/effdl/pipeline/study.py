"""The study: one Optuna trial per candidate in an RDB storage (SQLite by default).

Finished candidates are read back on a re-run, so an interrupted `effdl optimize` resumes without
redoing them. A candidate that was running when the process died is marked failed ("interrupted")
and is redone. Measurements live in trial user attributes as JSON.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
import optuna
import pydantic

from .results import Candidate

STUDY_NAME = "effdl-optimize"


class Study:
    def __init__(self, out_dir: Path | str, storage: str | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.storage = storage or f"sqlite:///{(self.out_dir / 'study.db').resolve()}"
        optuna.logging.set_verbosity(logging.WARNING)
        self.study = optuna.create_study(
            study_name=STUDY_NAME, storage=self.storage, directions=["maximize", "minimize"], load_if_exists=True
        )
        self._close_interrupted()

    def _close_interrupted(self) -> None:
        for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            self.study._storage.set_trial_user_attr(t._trial_id, "reason", "interrupted before it finished")
            self.study.tell(t.number, state=optuna.trial.TrialState.FAIL)

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
        trial = self.study.ask()
        trial.set_user_attr("key", key)
        trial.set_user_attr("candidate_id", candidate_id)
        return trial

    def finish(self, trial: optuna.trial.Trial, result: Candidate, values: tuple[float, float] | None) -> None:
        """Store ``result``; ``values`` are (quality, larger is better; target footprint)."""
        trial.set_user_attr("result", json.dumps(result.model_dump(mode="python"), default=str))
        if result.ok and values is not None:
            self.study.tell(trial, list(values))
        else:
            trial.set_user_attr("reason", result.reason or "failed")
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
