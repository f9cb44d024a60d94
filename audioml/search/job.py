"""The trial a search job trains for, from inside the job: it opens the study's storage itself
(the job may run in the sweeper's process, a joblib worker or a SLURM job on another machine),
beats the trial's heartbeat while it trains, reports the monitored validation value of each
epoch (``audioml.search.pruning.OptunaPruning`` asks :func:`active_trial`), and tells the
study the trial's outcome: COMPLETE with its objective values, or PRUNED.

The sweeper tells the failures (it sees the job's exception); a job killed with its sweeper
leaves its trial RUNNING until a sweeper finds it stale (``audioml.search.trials``).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState

from audioml.run.rundir import RunDir
from audioml.search import trials
from audioml.search.storage import open_storage, shown_storage

log = logging.getLogger(__name__)

__all__ = ["TrialRef", "JobTrial", "active_trial", "ObjectiveError"]

_active: list["JobTrial"] = []


class ObjectiveError(ValueError):
    """The run's final metrics lack an ``optimized_metric``."""


@dataclass(frozen=True)
class TrialRef:
    """Where a search job's trial is: the ``storage`` (journal file or database URL), the study's
    name and the trial's number (composed into the job's Hydra config by the sweeper)."""

    storage: str
    study_name: str
    number: int


def active_trial() -> JobTrial | None:
    """The trial this process trains for now (inside :meth:`JobTrial.running`), else ``None``."""
    return _active[-1] if _active else None


class JobTrial:
    """Trial ``ref.number`` of its study, opened from the job with the study's ``pruner``.

    ``report(value, step)`` records an epoch's value and says whether to stop; ``finish`` tells
    the outcome. ``heartbeat_interval``: seconds between heartbeats while :meth:`running`.
    """

    def __init__(self, ref: TrialRef, pruner: optuna.pruners.BasePruner, heartbeat_interval: float) -> None:
        self.ref, self.heartbeat_interval = ref, heartbeat_interval
        self.storage = open_storage(ref.storage)
        self.study = optuna.load_study(study_name=ref.study_name, storage=self.storage, pruner=pruner)
        study_id = self.storage.get_study_id_from_name(ref.study_name)
        self.trial_id = trials.trial_id(self.storage, study_id, ref.number)
        self.multi_objective = len(self.study.directions) > 1
        self._trial: optuna.trial.Trial | None = None

    def __repr__(self) -> str:
        return f"trial {self.ref.number} of study {self.ref.study_name} ({shown_storage(self.ref.storage)})"

    def state(self) -> TrialState:
        return self.storage.get_trial(self.trial_id).state

    def is_running(self) -> bool:
        """Whether the trial waits for this job's outcome."""
        return self.state() == TrialState.RUNNING

    def given_up(self) -> bool:
        """Whether the trial was given up as stale (its retry, another trial, trains its run)."""
        return self.state() in (TrialState.FAIL, TrialState.WAITING)

    @contextlib.contextmanager
    def running(self) -> Iterator["JobTrial"]:
        """While the job trains: this process written into the trial, its heartbeat beating, the
        trial active for the pruning callback."""
        trials.claim(self.storage, self.trial_id, trials.JOB_ATTR)
        heartbeat = trials.Heartbeat(self.storage, self.heartbeat_interval)
        heartbeat.add(self.trial_id)
        _active.append(self)
        try:
            yield self
        finally:
            _active.remove(self)
            heartbeat.stop()

    def report(self, value: float, step: int) -> bool:
        """Record ``value`` (the monitored metric after ``step`` epochs) and return whether the
        pruner stops the trial. A multi-objective study is not pruned (Optuna cannot): ``False``."""
        if self.multi_objective or not math.isfinite(value):
            return False
        if self._trial is None:
            self._trial = optuna.trial.Trial(self.study, self.trial_id)
        self._trial.report(value, step)
        return self._trial.should_prune()

    def finish(self, metrics: Mapping[str, float], run_dir: str | Path, objectives: Sequence[str]) -> list[float]:
        """Tell the study the outcome of the run in ``run_dir`` (its final ``metrics``): PRUNED
        when a pruner stopped it (``RunDir.pruned``), else COMPLETE with the value of each
        of ``objectives``; the trial's user attributes ``run_dir`` and ``mlflow_run_id`` say where
        it is. Returns those values. Raises ``ObjectiveError`` for a missing one. A trial no
        longer RUNNING (told before; given up) is left as it is."""
        missing = [name for name in objectives if name not in metrics]
        if missing:
            raise ObjectiveError(f"optimized_metric {', '.join(missing)}: not among the run's final metrics "
                                 f"({', '.join(sorted(metrics))}); set optimized_metric to one of them")
        values = [float(metrics[name]) for name in objectives]
        run = RunDir(run_dir)
        pruned = run.pruned()
        if self.state() != TrialState.RUNNING:  # told before, by a job killed before its run's record was complete
            log.info("%s is %s already: its run's record is complete now", self, self.state().name)
            return values
        for key, value in (("run_dir", str(run.path.resolve())), ("mlflow_run_id", run.run_id())):
            if value:
                self.storage.set_trial_user_attr(self.trial_id, key, value)
        if pruned is not None:
            self.study.tell(self.ref.number, state=TrialState.PRUNED)
            log.info("%s: PRUNED after epoch %s", self, pruned.get("epoch"))
        else:
            self.study.tell(self.ref.number, values if self.multi_objective else values[0])
            log.info("%s: COMPLETE, %s", self, ", ".join(f"{n}={v:.6g}" for n, v in zip(objectives, values)))
        return values
