"""Figures and tables of a run: confusion matrices, predictions, learning curves, embedding PCA,
learned layer weights."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd

from audioml.run.figures import drawing as figures
from audioml.run.figures.drawing import (
    pca_2d,
    plot_confusion_matrix,
    plot_embedding_pca,
    plot_layer_weights,
    plot_learning_curves,
)
from audioml.run.rundir import RunDir

__all__ = ["plot_confusion_matrix", "predictions_table", "regression_predictions_table", "plot_learning_curves",
           "plot_embedding_pca", "pca_2d", "LearningCurves",
           "LayerWeights"]


def predictions_table(manifest: pd.DataFrame, probabilities: np.ndarray, targets: np.ndarray,
                      class_names: Sequence[str]) -> pd.DataFrame:
    """Manifest columns (path, group, ...), true and predicted class, one probability column
    per class (``test_predictions.csv``)."""
    table = manifest.reset_index(drop=True).copy()
    table["true"] = [class_names[t] for t in targets]
    table["predicted"] = [class_names[p] for p in probabilities.argmax(axis=1)]
    for index, name in enumerate(class_names):
        table[f"p_{name}"] = probabilities[:, index]
    return table


def regression_predictions_table(manifest: pd.DataFrame, prediction: np.ndarray, target: np.ndarray,
                                 target_names: Sequence[str]) -> pd.DataFrame:
    """One row per window of each test sequence: the sequence's manifest columns (its array
    ``target`` left out), ``window`` (index in the sequence), ``true_<name>`` and
    ``predicted_<name>`` per target. ``prediction``/``target``: ``(sequences, windows, targets)``."""
    sequences, windows = prediction.shape[:2]
    table = manifest.drop(columns=["target"], errors="ignore").reset_index(drop=True)
    table = table.loc[np.repeat(np.arange(sequences), windows)].reset_index(drop=True)
    table["window"] = np.tile(np.arange(windows), sequences)
    for index, name in enumerate(target_names):
        table[f"true_{name}"] = target[:, :, index].reshape(-1)
        table[f"predicted_{name}"] = prediction[:, :, index].reshape(-1)
    return table


class LearningCurves(L.Callback):
    """Records every epoch's ``train/*`` and ``val/*`` metrics; at the end of fit writes
    ``<trainer.default_root_dir>/<filename>`` (``None``: the run directory's learning curves; drawn by ``audioml.run.figures.drawing.draw``: call
    ``audioml.run.figures.drawing.wait`` before reading it) and the same numbers beside it as ``.csv`` (one
    row per epoch). ``files`` lists both once written; ``TrainingRun`` logs them to its MLflow
    run with the run's other reports.

    An epoch is recorded when the next one starts (and at the end of fit), when everything the
    module logs for it is in ``trainer.callback_metrics``. The history travels in checkpoints, so
    a resumed run plots every epoch.
    """

    def __init__(self, filename: str | None = None) -> None:
        self.filename = filename or RunDir.CURVES
        self.history: list[dict[str, float]] = []
        self.files: list[Path] = []

    def _record(self, trainer: L.Trainer, epoch: int) -> None:
        values = {name: float(value) for name, value in trainer.callback_metrics.items()
                  if name.startswith(("train/", "val/")) and getattr(value, "numel", lambda: 1)() == 1}
        if epoch >= 0 and values and all(row["epoch"] != epoch for row in self.history):
            self.history.append({"epoch": epoch, **values})

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer, trainer.current_epoch - 1)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer, trainer.current_epoch - 1)
        if not self.history or not trainer.is_global_zero:
            return
        path = figures.draw(plot_learning_curves, self.history, Path(trainer.default_root_dir) / self.filename)
        table = path.with_suffix(".csv")  # the numbers behind the plot, also where MLflow is off
        pd.DataFrame(self.history).to_csv(table, index=False)
        self.files = [path, table]

    def written(self, trainer: L.Trainer) -> list[Path]:
        """The plot and table of this fit: ``files``, or, when the fit ran in other processes
        (``trainer.strategy=ddp_spawn``: this copy of the callback did not see its end), the
        ones found where rank zero writes them."""
        if self.files:
            return list(self.files)
        path = Path(trainer.default_root_dir) / self.filename
        return [p for p in (path, path.with_suffix(".csv")) if p.is_file()]

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))


class LayerWeights(L.Callback):
    """At the end of a fit whose model has a layer-weighted head (``audioml.models.heads.
    LayerHead`` with learned weights), logs each layer's softmax weight as the metric
    ``layer_weight/<layer>`` and writes ``<trainer.default_root_dir>/<filename>`` (a bar plot,
    drawn by ``audioml.run.figures.drawing.draw``) and the numbers beside it as ``.csv``; ``TrainingRun``
    logs both to MLflow with the learning curves. The weights are those of the fit's last step.
    Does nothing for any other model."""

    def __init__(self, filename: str | None = None) -> None:
        self.filename = filename or RunDir.LAYER_WEIGHTS
        self.files: list[Path] = []

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from audioml.models.base import AudioModule
        from audioml.models.heads import LayerHead

        head = pl_module.backbone.head if isinstance(pl_module, AudioModule) else None  # a user's own module
        weights = head.layer_weights() if isinstance(head, LayerHead) else {}
        if not weights or not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            logger.log_metrics({f"layer_weight/{layer}": value for layer, value in weights.items()},
                               step=trainer.global_step)
        path = figures.draw(plot_layer_weights, list(weights), list(weights.values()),
                            Path(trainer.default_root_dir) / self.filename)
        table = path.with_suffix(".csv")
        pd.DataFrame({"layer": list(weights), "weight": list(weights.values())}).to_csv(table, index=False)
        self.files = [path, table]

    def written(self, trainer: L.Trainer) -> list[Path]:
        """The plot and table of this fit (as ``LearningCurves.written``)."""
        if self.files:
            return list(self.files)
        path = Path(trainer.default_root_dir) / self.filename
        return [p for p in (path, path.with_suffix(".csv")) if p.is_file()]
