"""A study's trials as a search counts them: stale trials given up and retried once with their
parameters and reported values, heartbeats, and the trial two workers asked one too many."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from audioml.search import trials
from audioml.search.storage import open_storage, shown_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def study(tmp_path):
    storage = open_storage(str(tmp_path / "optuna" / "s.journal"))
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    return study, storage, storage.get_study_id_from_name("s")


def _dead_process() -> dict:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return {"host": socket.gethostname(), "pid": int(finished.stdout), "started": time.time() - 5}


def _asked(study, storage, study_id, owner: dict, beat: float | None = None) -> int:
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1e-2, log=True)
    trial.report(0.5, 1)
    identifier = trials.trial_id(storage, study_id, trial.number)
    storage.set_trial_system_attr(identifier, trials.OWNER_ATTR, owner)
    storage.set_trial_system_attr(identifier, trials.HEARTBEAT_ATTR, time.time() if beat is None else beat)
    return trial.number


def test_a_trial_whose_process_died_is_retried_once_with_its_parameters(study):
    study, storage, study_id = study
    dead = _asked(study, storage, study_id, _dead_process())
    alive = _asked(study, storage, study_id, trials.process_record())
    assert trials.recover_stale(study, storage, study_id, grace_period=3600) == [dead]
    assert trials.recover_stale(study, storage, study_id, grace_period=3600) == []  # given up once only
    given_up, running, retry = study.get_trials()
    assert given_up.state == TrialState.FAIL and given_up.system_attrs[trials.INTERRUPTED_ATTR]
    assert running.number == alive and running.state == TrialState.RUNNING
    assert retry.state == TrialState.WAITING and retry.params == given_up.params
    assert retry.intermediate_values == {1: 0.5}
    with pytest.warns(optuna.exceptions.ExperimentalWarning):  # Optuna's own reading of a retry
        assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == dead
    assert not any(k.startswith("audioml:") for k in retry.system_attrs)  # not the dead owner's
    assert trials.tally(study.get_trials()) == trials.Tally(complete=0, pruned=0, failed=0, running=1, waiting=1)
    popped = study.ask()  # the retry, with the same value drawn
    assert popped.number == retry.number and popped.suggest_float("lr", 1e-4, 1e-2, log=True) == given_up.params["lr"]


def test_a_trial_on_another_host_is_stale_only_after_the_grace_period(study):
    study, storage, study_id = study
    elsewhere = {"host": "another-machine", "pid": 1, "started": 0.0}
    _asked(study, storage, study_id, elsewhere, beat=time.time() - 100)
    assert trials.recover_stale(study, storage, study_id, grace_period=300) == []
    assert trials.recover_stale(study, storage, study_id, grace_period=60) == [0]


def test_the_heartbeat_keeps_a_trial_alive_until_it_finishes(study):
    study, storage, study_id = study
    number = _asked(study, storage, study_id, {"host": "another-machine", "pid": 1, "started": 0.0}, beat=0.0)
    identifier = trials.trial_id(storage, study_id, number)
    heartbeat = trials.Heartbeat(storage, interval=0.05)
    heartbeat.add(identifier)
    deadline = time.time() + 30
    while storage.get_trial(identifier).system_attrs[trials.HEARTBEAT_ATTR] < 1.0:
        assert time.time() < deadline
        time.sleep(0.05)
    assert trials.recover_stale(study, storage, study_id, grace_period=60) == []
    study.tell(number, 0.7)
    time.sleep(0.3)  # beats on a finished trial are refused: it is dropped, the thread goes on
    heartbeat.stop()
    assert study.trials[0].state == TrialState.COMPLETE and identifier not in heartbeat._trials


def test_a_trial_asked_beyond_n_trials_is_marked_and_never_counted(study):
    study, storage, study_id = study
    first, second = study.ask(), study.ask()  # two workers asked the last trial at the same moment
    assert not trials.asked_beyond(study.get_trials(), first.number, n_trials=1)
    assert trials.asked_beyond(study.get_trials(), second.number, n_trials=1)
    trials.mark_surplus(storage, trials.trial_id(storage, study_id, second.number))
    assert trials.tally(study.get_trials()) == trials.Tally(0, 0, 0, 1, 0)
    assert trials.tally(study.get_trials()).askable(n_trials=1) == 0


def test_storage_strings_name_a_journal_file_or_a_database(tmp_path):
    journal = open_storage(str(tmp_path / "deep" / "folder" / "x.journal"))
    assert isinstance(journal, optuna.storages.JournalStorage) and (tmp_path / "deep" / "folder").is_dir()
    database = open_storage(f"sqlite:///{tmp_path / 'x.db'}")
    assert isinstance(database, optuna.storages.RDBStorage)
    assert shown_storage("postgresql://ann:s3cret@db.lab:5432/optuna") == "postgresql://ann:***@db.lab:5432/optuna"
    assert shown_storage("/shared/x.journal") == "/shared/x.journal"
