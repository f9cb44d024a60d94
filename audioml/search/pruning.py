"""The Lightning callback through which a search job's trial is pruned (``hparams_search``
presets add it as ``callbacks.optuna_pruning``).

After each validation it reports the ``monitor`` value with the number of epochs trained as
the step (rank zero, to the trial :func:`audioml.search.job.active_trial` gives); when the
study's pruner says so, every rank stops after this epoch and ``PRUNED`` is written in the run
directory (``audioml.run.rundir.RunDir``). The run then ends as a run stopped early does (the best
checkpoint is tested, the reports written, ``DONE``), its MLflow run KILLED with the tag
``audioml.pruned``; the job tells the study PRUNED. Outside a search job it does nothing.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import MLFlowLogger

from audioml.run.rundir import RunDir
from audioml.search.job import active_trial

log = logging.getLogger(__name__)

__all__ = ["OptunaPruning"]


class OptunaPruning(L.Callback):
    """Report ``monitor`` (a validation metric, e.g. ``val/macro_f1``) of every validated epoch to
    the active trial and stop the fit when it is pruned; ``run_dir``: the run's directory."""

    def __init__(self, monitor: str, run_dir: str | Path) -> None:
        self.monitor, self.run = monitor, RunDir(run_dir)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.run.pruned() is not None:  # continued from a checkpoint after it was pruned
            trainer.should_stop = True
        trial = active_trial()
        if trial is not None and trainer.is_global_zero and isinstance(trainer.logger, MLFlowLogger):
            trainer.logger.experiment.set_tag(trainer.logger.run_id, "audioml.optuna.study", trial.ref.study_name)
            trainer.logger.experiment.set_tag(trainer.logger.run_id, "audioml.optuna.trial", str(trial.ref.number))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epochs = trainer.current_epoch + 1
        pruned, value = False, trainer.callback_metrics.get(self.monitor)
        trial = active_trial()
        if trainer.is_global_zero and trial is not None:
            if value is None:
                log.warning("optuna pruning: %s was not logged in epoch %d; nothing reported", self.monitor, epochs)
            else:
                pruned = trial.report(float(value), epochs)
        pruned = bool(trainer.strategy.broadcast(pruned, src=0))
        if not pruned:
            return
        trainer.should_stop = True
        if trainer.is_global_zero:
            self.run.mark_pruned({"epoch": epochs, "monitor": self.monitor, "value": float(value),
                                                "trial": trial.ref.number, "study": trial.ref.study_name,
                                                "time": time.time()})
            log.info("%s pruned after epoch %d (%s=%.4f): training stops here", trial, epochs, self.monitor,
                     float(value))
