"""Figures and tables of a run: confusion matrices, predictions, learning curves, embedding PCA."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd

__all__ = ["plot_confusion_matrix", "predictions_table", "plot_learning_curves",
           "plot_embedding_pca", "pca_2d", "LearningCurves"]


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: str | Path,
                          title: str = "test confusion matrix") -> Path:
    """PNG of counts with row-normalised recall shading; rows are true classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    recall = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.8 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(recall, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center",
                    color="white" if recall[i, j] > 0.5 else "black")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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


def plot_learning_curves(history: Sequence[dict[str, float]], path: str | Path,
                         title: str = "learning curves") -> Path:
    """PNG with one panel per metric name (``loss``, ``macro_f1``, ...), train and val curves
    against the epoch. ``history``: one dict per epoch with ``epoch`` and ``train/<m>`` /
    ``val/<m>`` values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    table = pd.DataFrame(list(history))
    names = sorted({c.split("/", 1)[1] for c in table.columns if c.startswith(("train/", "val/"))},
                   key=lambda n: (n != "loss", n))
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(4 * max(1, len(names)), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        for stage, style in (("train", "-o"), ("val", "-s")):
            column = f"{stage}/{name}"
            if column in table:
                ax.plot(table["epoch"] + 1, table[column], style, markersize=3, label=stage)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pca_2d(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project ``(n, d)`` features on their first two principal components.
    Returns ``(coordinates (n, 2), explained variance ratio (2,))`` (zeros pad ``d < 2``)."""
    centred = np.asarray(features, dtype=np.float64)
    centred = centred - centred.mean(axis=0, keepdims=True)
    from threadpoolctl import threadpool_limits

    # One BLAS thread: a (clips x features) SVD takes milliseconds; OpenBLAS's threads on cores
    # busy with other work took over a second for 92 x 960 (a head job's test report).
    with threadpool_limits(1):
        _, singular, components = np.linalg.svd(centred, full_matrices=False)
    coordinates = np.zeros((centred.shape[0], 2))
    kept = min(2, components.shape[0])
    coordinates[:, :kept] = centred @ components[:kept].T
    variance = singular ** 2
    ratio = np.zeros(2)
    ratio[:kept] = variance[:kept] / variance.sum() if variance.sum() > 0 else 0.0
    return coordinates, ratio


def plot_embedding_pca(before_head: np.ndarray, after_head: np.ndarray, labels: np.ndarray,
                       class_names: Sequence[str], path: str | Path) -> Path:
    """Two scatter plots side by side: 2-D PCA of the pooled backbone embeddings ``(n, d)``
    (before the head) and of the head's outputs ``(n, C)`` (logits), coloured by true class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    colours = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for ax, features, name in ((axes[0], before_head, "embeddings before the head"),
                               (axes[1], after_head, "head outputs (logits)")):
        coordinates, ratio = pca_2d(features)
        for index, class_name in enumerate(class_names):
            chosen = np.asarray(labels) == index
            if chosen.any():
                ax.scatter(coordinates[chosen, 0], coordinates[chosen, 1], s=12, alpha=0.75,
                           color=colours(index % colours.N), label=class_name)
        ax.set_title(name)
        ax.set_xlabel(f"PC1 ({ratio[0]:.0%})")
        ax.set_ylabel(f"PC2 ({ratio[1]:.0%})")
    axes[1].legend(fontsize=8, loc="best")
    fig.suptitle("test set, 2-D PCA, coloured by true class")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


class LearningCurves(L.Callback):
    """Records every epoch's ``train/*`` and ``val/*`` metrics; at the end of fit writes
    ``<trainer.default_root_dir>/<filename>`` and the same numbers beside it as ``.csv`` (one row
    per epoch), and logs both to the run of an MLflow logger.

    An epoch is recorded when the next one starts (and at the end of fit), when everything the
    module logs for it is in ``trainer.callback_metrics``. The history travels in checkpoints, so
    a resumed run plots every epoch.
    """

    def __init__(self, filename: str = "learning_curves.png") -> None:
        self.filename = filename
        self.history: list[dict[str, float]] = []

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
        path = plot_learning_curves(self.history, Path(trainer.default_root_dir) / self.filename)
        table = path.with_suffix(".csv")  # the numbers behind the plot, also where MLflow is off
        pd.DataFrame(self.history).to_csv(table, index=False)
        logger = trainer.logger
        if logger is not None and hasattr(logger, "run_id") and hasattr(logger, "experiment"):
            for written in (path, table):
                logger.experiment.log_artifact(logger.run_id, str(written))

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))
