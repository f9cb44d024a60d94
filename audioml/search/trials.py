"""The trials of a study as a search counts them, and the processes behind them.

A trial counts towards ``n_trials`` once asked, except one whose processes died while it ran
(``INTERRUPTED_ATTR``: a WAITING copy counts instead and continues its run directory) and one
asked beyond ``n_trials`` by two workers at once (``SURPLUS_ATTR``: never run). Who runs a trial
(``OWNER_ATTR``, ``JOB_ATTR``) and its heartbeat (``HEARTBEAT_ATTR``) are system attributes; a
RUNNING trial is stale when its heartbeat is older than the grace period, or at once when every
process it names ran on this host and has ended."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

log = logging.getLogger(__name__)

__all__ = ["OWNER_ATTR", "JOB_ATTR", "HEARTBEAT_ATTR", "INTERRUPTED_ATTR", "SURPLUS_ATTR", "process_record",
           "Tally", "tally", "counts", "is_stale", "recover_stale", "claim", "mark_surplus", "asked_beyond",
           "Heartbeat", "trial_id"]

_PREFIX = "audioml:"
OWNER_ATTR = "audioml:owner"
JOB_ATTR = "audioml:job"
HEARTBEAT_ATTR = "audioml:heartbeat"
INTERRUPTED_ATTR = "audioml:interrupted"
SURPLUS_ATTR = "audioml:surplus"
#: Optuna's names for a retry's original trial and the chain of retries (``RetryFailedTrialCallback``).
_RETRY_OF, _RETRY_HISTORY = "failed_trial", "retry_history"


def process_record() -> dict[str, Any]:
    """This process: ``host``, ``pid`` and its ``started`` time (tells a reused pid apart)."""
    import psutil

    return {"host": socket.gethostname(), "pid": os.getpid(), "started": psutil.Process().create_time()}


def _alive_here(record: dict[str, Any]) -> bool | None:
    """Whether the process ``record`` names is running; ``None`` when it ran on another host."""
    import psutil

    if record.get("host") != socket.gethostname():
        return None
    try:
        return abs(psutil.Process(int(record["pid"])).create_time() - float(record["started"])) < 1.0
    except (psutil.NoSuchProcess, KeyError, TypeError, ValueError):
        return False


def counts(trial: FrozenTrial) -> bool:
    """Whether ``trial`` counts towards ``n_trials`` (see the module docs)."""
    return not (trial.state == TrialState.FAIL and (trial.system_attrs.get(INTERRUPTED_ATTR)
                                                     or trial.system_attrs.get(SURPLUS_ATTR)))


@dataclass(frozen=True)
class Tally:
    """The counted trials of a study by where they stand."""

    complete: int
    pruned: int
    failed: int
    running: int
    waiting: int

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.failed

    def askable(self, n_trials: int) -> int:
        """How many trials may be asked now: the WAITING ones (retries), and new ones while
        fewer than ``n_trials`` were asked."""
        return self.waiting + max(0, n_trials - self.finished - self.running - self.waiting)


def tally(trials: Iterable[FrozenTrial]) -> Tally:
    states = [t.state for t in trials if counts(t)]
    return Tally(*(states.count(s) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
                                              TrialState.RUNNING, TrialState.WAITING)))


def is_stale(trial: FrozenTrial, grace_period: float, now: float | None = None) -> bool:
    """Whether the RUNNING ``trial`` has no live process (see the module docs)."""
    if trial.state != TrialState.RUNNING:
        return False
    now = time.time() if now is None else now
    beat = trial.system_attrs.get(HEARTBEAT_ATTR)
    if beat is None:  # asked by something else than this sweeper (or just now): judged by its start
        beat = trial.datetime_start.timestamp() if trial.datetime_start else now
    if now - float(beat) > grace_period:
        return True
    records = [r for r in (trial.system_attrs.get(OWNER_ATTR), trial.system_attrs.get(JOB_ATTR)) if r]
    return bool(records) and all(_alive_here(r) is False for r in records)


def trial_id(storage, study_id: int, number: int) -> int:
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


def recover_stale(study: optuna.Study, storage, study_id: int, grace_period: float) -> list[int]:
    """Give up the stale RUNNING trials of ``study``: each becomes FAIL marked
    ``INTERRUPTED_ATTR`` after a WAITING copy (same parameters, user attributes and reported
    values; Optuna's ``failed_trial``/``retry_history`` attributes) is added. Returns their numbers."""
    given_up = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_stale(trial, grace_period):
            continue
        # What Optuna's RetryFailedTrialCallback does, less this module's attributes (the copy would
        # inherit the dead owner); the samplers' own (GridSampler's grid_id) are kept.
        system_attrs = {k: v for k, v in trial.system_attrs.items() if not k.startswith(_PREFIX)}
        system_attrs[_RETRY_OF] = trial.system_attrs.get(_RETRY_OF, trial.number)
        system_attrs[_RETRY_HISTORY] = [*trial.system_attrs.get(_RETRY_HISTORY, []), trial.number]
        retry = optuna.trial.create_trial(
            state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
            user_attrs=trial.user_attrs, intermediate_values=trial.intermediate_values, system_attrs=system_attrs)
        identifier = trial_id(storage, study_id, trial.number)
        try:
            storage.set_trial_system_attr(identifier, INTERRUPTED_ATTR, True)
            storage.set_trial_state_values(identifier, TrialState.FAIL)
        except UpdateFinishedTrialError as error:  # another worker finished or gave it up meanwhile
            log.info("trial %d: not given up (%s)", trial.number, error)
            continue
        study.add_trial(retry)
        given_up.append(trial.number)
    if given_up:
        log.warning("trial(s) %s of study %s had no live process (killed, or their machine went away): "
                    "each is retried with the same parameters and continues its run from its checkpoint",
                    ", ".join(map(str, given_up)), study.study_name)
    return given_up


def claim(storage, identifier: int, key: str = OWNER_ATTR) -> None:
    """Write this process into the trial as its ``key`` (owner or job) with a heartbeat now."""
    storage.set_trial_system_attr(identifier, key, process_record())
    storage.set_trial_system_attr(identifier, HEARTBEAT_ATTR, time.time())


def mark_surplus(storage, identifier: int) -> None:
    """A trial asked beyond ``n_trials`` (another worker asked the last one at the same moment):
    FAIL, marked ``SURPLUS_ATTR``, never run and never counted."""
    storage.set_trial_system_attr(identifier, SURPLUS_ATTR, True)
    storage.set_trial_state_values(identifier, TrialState.FAIL)


def asked_beyond(trials: Sequence[FrozenTrial], number: int, n_trials: int) -> bool:
    """Whether the new trial ``number`` is beyond ``n_trials``: as many counted trials with a
    smaller number exist (the earlier asker keeps its trial)."""
    return sum(1 for t in trials if t.number < number and counts(t)) >= n_trials


class Heartbeat:
    """A daemon thread writing ``HEARTBEAT_ATTR`` into the trials it is given, every ``interval``
    seconds, until they finish or are dropped; ``stop()`` ends it."""

    def __init__(self, storage, interval: float) -> None:
        self.storage, self.interval = storage, interval
        self._trials: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audioml-trial-heartbeat", daemon=True)
        self._thread.start()

    def add(self, identifier: int) -> None:
        with self._lock:
            self._trials.add(identifier)

    def drop(self, identifier: int) -> None:
        with self._lock:
            self._trials.discard(identifier)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                trials = sorted(self._trials)
            for identifier in trials:
                try:
                    self.storage.set_trial_system_attr(identifier, HEARTBEAT_ATTR, time.time())
                except UpdateFinishedTrialError:
                    self.drop(identifier)
                except Exception as error:  # noqa: BLE001 - the storage hiccuped (a database restarting): next beat
                    log.warning("heartbeat of trial id %d not written: %s", identifier, error)
