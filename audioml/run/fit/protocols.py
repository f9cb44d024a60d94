"""Evaluation protocols over in-memory run results (``evaluation=holdout|kfold``).

A protocol says which trainings a configuration needs and how their results combine; it never
trains, reads files or talks to MLflow itself. ``audioml.run.fit.training.run_evaluation`` hands it
``train_fold(fold) -> RunResult`` and writes what it returns.

- ``Holdout``: one training on the DataModule's grouped train/val/test split.
- ``KFold``: grouped k-fold cross-validation; fold ``i`` of the DataModule's grouped ``k``-fold
  partition is the test set of training ``i``. The result holds ``<m>_mean`` / ``_std`` across
  folds plus every honest number (``audioml.stats``) on the pooled out-of-fold predictions
  (each clip scored once, by the model that did not see it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from audioml.stats import HonestScoring, Scores, aggregate_folds, confusion_matrices

log = logging.getLogger(__name__)

__all__ = ["RunResult", "KFoldResult", "EvaluationProtocol", "Holdout", "KFold"]


@dataclass
class RunResult:
    """What one training run leaves: its final metrics and, for classifiers, its test
    predictions (manifest columns, ``true``, ``predicted``, ``p_<class>``) and the DataModule's
    class ``collapse``."""

    metrics: dict[str, float]
    predictions: pd.DataFrame | None = None
    collapse: dict[str, list[str]] | None = None
    run_dir: Path | None = None


@dataclass
class KFoldResult:
    """The combined folds: metrics, out-of-fold predictions (``fold`` and ``majority_class``
    columns added), one metrics row per fold, the pooled confusion matrix and its scores."""

    metrics: dict[str, float]
    oof: pd.DataFrame
    folds: pd.DataFrame
    class_names: list[str]
    confusion: np.ndarray
    scores: Scores


class EvaluationProtocol(HonestScoring):
    """Honest-scoring settings (``audioml.stats.HonestScoring``) plus the folds to train and
    ``temperature_scaling``: fit a classifier's temperature on its validation split after the
    test (``audioml.run.fit.calibration``)."""

    #: Folds to train; ``None`` means a single run on the DataModule's own holdout split.
    num_folds: int | None = None

    def __init__(self, temperature_scaling: bool = False, **settings) -> None:
        super().__init__(**settings)
        if not isinstance(temperature_scaling, bool):
            raise ValueError(f"evaluation.temperature_scaling={temperature_scaling!r}: use true or false")
        self.temperature_scaling = temperature_scaling

    @property
    def fold_ids(self) -> list[int]:
        """The folds' numbers, in training order (each trains into ``<run>/fold_<id>``)."""
        return list(range(self.num_folds or 0))

    def fold_data(self, fold: int) -> dict[str, Any]:
        """The DataModule arguments that make fold ``fold``'s train/val/test split."""
        return {"fold": fold, "num_folds": self.num_folds}

    def check_data(self, datamodule) -> None:
        """Raise ``ValueError`` saying what to do when the protocol cannot run on this data (the
        first fold's loaded DataModule); every protocol here runs on any data."""


class Holdout(EvaluationProtocol):
    """One training on the DataModule's grouped train/val/test split."""


class KFold(EvaluationProtocol):
    """Grouped k-fold cross-validation over ``k`` folds (module docs)."""

    def __init__(self, k: int = 5, **settings) -> None:
        super().__init__(**settings)
        if int(k) < 2:
            raise ValueError(f"evaluation.k={k}: k-fold needs k >= 2")
        self.num_folds = int(k)

    def run(self, train_fold: Callable[[int], RunResult]) -> KFoldResult:
        """Train every fold through ``train_fold`` and combine the results."""
        results = []
        for position, fold in enumerate(self.fold_ids):
            log.info("%s: training fold %s (%d of %d)", type(self).__name__, fold, position + 1, self.num_folds)
            results.append(train_fold(fold))
        return self.combine(results)

    def combine(self, results: list[RunResult]) -> KFoldResult:
        """Pool the folds' test predictions and score them (a pure function of ``results``)."""
        if any(r.predictions is None for r in results):
            raise ValueError("k-fold pools test predictions: every fold must be a classification run")
        tables = []
        for fold, result in enumerate(results):
            table = result.predictions.copy()
            table.insert(0, "fold", fold)
            table["majority_class"] = int(result.metrics["baseline/majority_class"])
            tables.append(table)
        oof = pd.concat(tables, ignore_index=True)
        class_names = [c[2:] for c in oof.columns if c.startswith("p_")]
        probabilities = oof[[f"p_{c}" for c in class_names]].to_numpy()
        truth = oof["true"].astype(str).map({c: i for i, c in enumerate(class_names)}).to_numpy()
        scores = self.score(probabilities, truth, oof["group"].astype(str).to_numpy(), class_names,
                            oof["majority_class"].to_numpy(), results[0].collapse)
        metrics = {**aggregate_folds([r.metrics for r in results]), **scores.metrics}
        mean, std = metrics.get("test/macro_f1_mean", float("nan")), metrics.get("test/macro_f1_std", float("nan"))
        log.info("k-fold (%d folds): macro_f1 %.3f +- %.3f across folds; pooled out-of-fold: %s",
                 self.num_folds, mean, std, scores.summary)
        return KFoldResult(metrics, oof, pd.DataFrame([r.metrics for r in results]).assign(fold=range(len(results))),
                           class_names, confusion_matrices(truth, probabilities.argmax(axis=1), len(class_names)),
                           scores)
