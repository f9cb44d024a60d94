"""The pruning callback with a real Lightning Trainer and a real study: the monitored value of
each validated epoch reaches the trial, the pruner stops the fit, ``PRUNED`` is written, and the
job tells the study PRUNED; outside a search job the callback does nothing."""

from __future__ import annotations

import lightning as L
import optuna
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel
from optuna.trial import TrialState

from audioml.run.rundir import RunDir
from audioml.search.job import JobTrial, ObjectiveError, TrialRef
from audioml.search.pruning import OptunaPruning

optuna.logging.set_verbosity(optuna.logging.WARNING)
SCORES = [0.6, 0.4, 0.9, 0.9, 0.9]  # val/macro_f1 of epochs 1..5


class Scored(BoringModel):
    """Logs ``val/macro_f1`` from ``SCORES`` at each validation."""

    def validation_step(self, batch, batch_idx):
        self.log("val/macro_f1", torch.tensor(SCORES[self.current_epoch]))
        return super().validation_step(batch, batch_idx)


def _fit(run_dir, epochs: int = 5) -> L.Trainer:
    trainer = L.Trainer(max_epochs=epochs, limit_train_batches=2, limit_val_batches=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[OptunaPruning(monitor="val/macro_f1", run_dir=run_dir)], default_root_dir=run_dir)
    trainer.fit(Scored())
    return trainer


def _trial(tmp_path, pruner) -> JobTrial:
    storage = str(tmp_path / "study.journal")
    study = optuna.create_study(storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(storage)), study_name="s", direction="maximize")
    number = study.ask().number  # as the sweeper asks it
    return JobTrial(TrialRef(storage, "s", number), pruner, heartbeat_interval=60)


def test_a_trial_below_the_threshold_is_pruned_after_that_epoch(tmp_path):
    trial = _trial(tmp_path, optuna.pruners.ThresholdPruner(lower=0.5))
    with trial.running():
        trainer = _fit(tmp_path)
    assert trainer.current_epoch == 2  # epochs 1 and 2 trained, then stopped
    record = RunDir(tmp_path).pruned()
    assert record["epoch"] == 2 and record["trial"] == 0 and record["value"] == pytest.approx(0.4)
    frozen = trial.study.trials[0]
    assert frozen.intermediate_values == pytest.approx({1: 0.6, 2: 0.4})
    with pytest.raises(ObjectiveError, match="val/best_macro_f1"):
        trial.finish({"test/acc": 0.5}, tmp_path, ["val/best_macro_f1"])
    assert trial.finish({"val/best_macro_f1": 0.6}, tmp_path, ["val/best_macro_f1"]) == [0.6]
    frozen = trial.study.trials[0]
    assert frozen.state == TrialState.PRUNED and frozen.value == pytest.approx(0.4)  # its last reported value
    assert frozen.user_attrs["run_dir"] == str(tmp_path.resolve())


def test_a_trial_the_pruner_keeps_trains_every_epoch_and_completes(tmp_path):
    trial = _trial(tmp_path, optuna.pruners.NopPruner())
    with trial.running():
        trainer = _fit(tmp_path)
    assert trainer.current_epoch == 5 and RunDir(tmp_path).pruned() is None
    assert len(trial.study.trials[0].intermediate_values) == 5
    trial.finish({"val/best_macro_f1": 0.9}, tmp_path, ["val/best_macro_f1"])
    assert trial.study.trials[0].state == TrialState.COMPLETE and trial.study.trials[0].value == pytest.approx(0.9)


def test_outside_a_search_job_the_callback_does_nothing_and_a_pruned_run_stays_stopped(tmp_path):
    assert _fit(tmp_path).current_epoch == 5 and RunDir(tmp_path).pruned() is None
    RunDir(tmp_path / "pruned").mark_pruned({"epoch": 1})  # continued from its checkpoint after it was pruned
    assert _fit(tmp_path / "pruned").current_epoch == 0
