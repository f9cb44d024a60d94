"""EmoBox's RAVDESS protocol (``evaluation=emobox``): the six published folds of four held-out
actors (``audioml.data.splits.EMOBOX_RAVDESS_FOLDS``), scored as EmoBox scores them, beside
audioml's honest numbers.

EmoBox (Ma et al., Interspeech 2024; ``emo-box/EmoBox`` ``EmoBox/EmoEval.py``) reports, per fold,
UA = ``sklearn.metrics.balanced_accuracy_score`` (mean recall over the classes in the test
labels), WA = ``accuracy_score`` and ``f1_score(average="macro")`` (over the classes in the
labels or the predictions), and publishes their mean over the six folds. ``EmoBox`` adds these
(``emobox/*``: the fold mean, its spread, the pooled out-of-fold value and each fold's) to the
k-fold result, with group-bootstrap intervals that resample each fold's test actors.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from audioml.data.splits import EMOBOX_RAVDESS_FOLDS
from audioml.run.fit.protocols import KFold, KFoldResult, RunResult
from audioml.stats import confusion_matrices, group_bootstrap_confusions

log = logging.getLogger(__name__)

__all__ = ["EmoBox", "EMOBOX_METRICS", "emobox_scores"]

#: EmoBox's metric names, in the order its tables give them.
EMOBOX_METRICS = ("ua", "wa", "macro_f1")


def emobox_scores(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """UA, WA and macro-F1 of confusion matrices ``(..., C, C)`` (rows true) as scikit-learn
    computes them from the label arrays: UA is the mean recall over classes with a true clip
    (``balanced_accuracy_score``), WA the accuracy, macro-F1 the mean F1 over classes that are
    true or predicted (``f1_score(average="macro")``; 0 for an F1 of 0/0). Each value has shape
    ``(...)``; an empty matrix gives 0."""
    matrix = np.asarray(matrix, dtype=np.float64)
    tp = np.diagonal(matrix, axis1=-2, axis2=-1)
    support, predicted = matrix.sum(axis=-1), matrix.sum(axis=-2)

    def ratio(num, den):
        return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)

    true_classes = support > 0
    labelled = true_classes | (predicted > 0)
    recall = ratio(tp, support)
    f1 = ratio(2 * tp, support + predicted)
    return {"ua": ratio((recall * true_classes).sum(axis=-1), true_classes.sum(axis=-1)),
            "wa": ratio(tp.sum(axis=-1), matrix.sum(axis=(-2, -1))),
            "macro_f1": ratio((f1 * labelled).sum(axis=-1), labelled.sum(axis=-1))}


class EmoBox(KFold):
    """EmoBox's six RAVDESS folds, or the ones named in ``folds`` (a smoke test on part of the
    data: not comparable with the published numbers, and said so).

    Each fold trains into ``<run>/fold_<k>`` (``k`` = EmoBox's fold number) on the data split
    ``data.split=emobox, data.fold=k`` (``RavdessDataModule``); the result is the k-fold one
    (pooled out-of-fold honest numbers, ``test/<m>_mean``/``_std``) plus ``emobox/*``:
    ``emobox/<m>`` the mean over folds (EmoBox's published statistic) with
    ``emobox/<m>_ci_low``/``_ci_high`` (each fold's test actors resampled, the fold means
    averaged), ``emobox/<m>_std`` across folds, ``emobox/pooled_<m>`` over all test clips,
    ``emobox/fold<k>_<m>``, and ``emobox/complete`` (1 when every fold held its four actors).

    Args:
        folds: EmoBox fold numbers to run (``None``: all six, and every actor must be present).
        Other arguments: ``HonestScoring``.
    """

    def __init__(self, folds: Sequence[int] | None = None, **settings) -> None:
        super().__init__(k=2, **settings)
        chosen = sorted(EMOBOX_RAVDESS_FOLDS) if folds is None else sorted({int(f) for f in folds})
        unknown = [f for f in chosen if f not in EMOBOX_RAVDESS_FOLDS]
        if unknown or not chosen:
            raise ValueError(f"evaluation.folds={list(folds or [])}: EmoBox's RAVDESS folds are "
                             f"{sorted(EMOBOX_RAVDESS_FOLDS)}")
        self.folds = chosen
        self.all_folds = folds is None
        self.num_folds = len(chosen)

    @property
    def fold_ids(self) -> list[int]:
        return list(self.folds)

    def fold_data(self, fold: int) -> dict:
        return {"split": "emobox", "fold": fold}

    def check_data(self, datamodule) -> None:
        """Every fold to run has test actors in the data; with all six folds, every actor."""
        manifest = getattr(datamodule, "manifest", None)
        if manifest is None or "actor" not in manifest:
            raise ValueError(f"evaluation=emobox holds out RAVDESS actors, and {type(datamodule).__name__} has "
                             "no actors: use data=ravdess, or evaluation=kfold for other data")
        present = set(manifest["actor"].astype(int))
        holding = [f for f in EMOBOX_RAVDESS_FOLDS if present & set(EMOBOX_RAVDESS_FOLDS[f])]
        smoke = f"evaluation.folds=[{','.join(map(str, holding))}] runs the folds with test actors here " \
                "(a smoke test, not comparable with EmoBox's numbers)" if holding else ""
        empty = [f for f in self.folds if f not in holding]
        missing = sorted(set().union(*EMOBOX_RAVDESS_FOLDS.values()) - present)
        if empty or (self.all_folds and missing):
            what = (f"folds {empty} have none of their test actors" if empty
                    else f"actors {', '.join(f'{a:02d}' for a in missing)} are missing")
            raise ValueError(f"evaluation=emobox runs EmoBox's RAVDESS folds {self.folds}, which need their test "
                             f"actors; in {getattr(datamodule, 'root', 'the data')} (actors "
                             f"{', '.join(f'{a:02d}' for a in sorted(present))}) {what}. Get the whole speech "
                             f"set (`audioml-data download ravdess`){'; or ' + smoke if smoke else ''}")

    def combine(self, results: list[RunResult]) -> KFoldResult:
        """The k-fold result with EmoBox's scores added (module docs)."""
        combined = super().combine(results)
        names = combined.class_names
        index = {name: i for i, name in enumerate(names)}
        per_fold, draws, pooled_truth, pooled_predicted, complete = {}, [], [], [], True
        for position, (fold, result) in enumerate(zip(self.folds, results)):
            table = result.predictions
            truth = table["true"].astype(str).map(index).to_numpy()
            predicted = table["predicted"].astype(str).map(index).to_numpy()
            actors = table["actor"].astype(int).to_numpy() if "actor" in table else np.zeros(len(table), int)
            complete &= set(actors.tolist()) == set(EMOBOX_RAVDESS_FOLDS[fold])
            per_fold[fold] = {k: float(v) for k, v in
                              emobox_scores(confusion_matrices(truth, predicted, len(names))).items()}
            per_fold[fold]["test_actors"] = " ".join(f"{a:02d}" for a in sorted(set(actors.tolist())))
            if self.bootstrap_samples:
                matrices = group_bootstrap_confusions(truth, predicted, actors, len(names), self.bootstrap_samples,
                                                      self.seed + position, self.stratified_bootstrap)
                draws.append(emobox_scores(matrices))
            pooled_truth.append(truth)
            pooled_predicted.append(predicted)
        complete &= self.all_folds
        metrics: dict[str, float] = {"emobox/complete": float(complete), "emobox/folds": float(len(results))}
        pooled = emobox_scores(confusion_matrices(np.concatenate(pooled_truth), np.concatenate(pooled_predicted),
                                                  len(names)))
        tail = (1 - self.confidence) / 2 * 100
        for name in EMOBOX_METRICS:
            values = np.array([per_fold[f][name] for f in self.folds])
            metrics[f"emobox/{name}"] = float(values.mean())
            metrics[f"emobox/{name}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            metrics[f"emobox/pooled_{name}"] = float(pooled[name])
            if draws:
                low, high = np.percentile(np.mean([d[name] for d in draws], axis=0), [tail, 100 - tail])
                metrics[f"emobox/{name}_ci_low"], metrics[f"emobox/{name}_ci_high"] = float(low), float(high)
            metrics.update({f"emobox/fold{f}_{name}": per_fold[f][name] for f in self.folds})
        folds = combined.folds.assign(fold=self.folds, test_actors=[per_fold[f]["test_actors"] for f in self.folds],
                                      **{f"emobox_{name}": [per_fold[f][name] for f in self.folds]
                                         for name in EMOBOX_METRICS})
        log.info("EmoBox RAVDESS, %s: %s (mean over folds%s)%s", f"folds {self.folds}",
                 ", ".join(_describe(metrics, name) for name in EMOBOX_METRICS),
                 f"; pooled UA {metrics['emobox/pooled_ua']:.1%}",
                 "" if complete else "; NOT comparable with EmoBox's published numbers: not all six folds with "
                                     "their four test actors")
        oof = combined.oof.assign(fold=combined.oof["fold"].map(dict(enumerate(self.folds))))
        return KFoldResult({**combined.metrics, **metrics}, oof, folds, names, combined.confusion, combined.scores)


def _describe(metrics: dict[str, float], name: str) -> str:
    text = f"{name.upper() if name != 'macro_f1' else 'macro-F1'} {metrics[f'emobox/{name}']:.1%}"
    if f"emobox/{name}_ci_low" in metrics:
        text += f" [{metrics[f'emobox/{name}_ci_low']:.1%}-{metrics[f'emobox/{name}_ci_high']:.1%}]"
    return text
