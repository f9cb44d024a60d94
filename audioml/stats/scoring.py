"""The honest scores of one classifier's test predictions: metrics from confusion matrices (the one
definition every part of audioml uses, equal to torchmetrics'), group-bootstrap intervals, the
majority-class baseline, label-permutation tests, collapsed tasks, calibration, fold aggregates
and the t-interval of a mean over repeated runs (seeds).

``HonestScoring.score`` gives a set of test predictions all of these under their metric names
(``test/<m>_ci_low``, ``baseline/<m>``, ``permutation/<m>_p_value``, ``test/binary_<m>``,
``test/ece``...). What each means: docs/guide/evaluation.md; how: docs/design/statistics.md."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from audioml.stats.calibration import Reliability, calibration_scores, is_hard
from audioml.stats.resampling import group_bootstrap_draws

log = logging.getLogger(__name__)

__all__ = ["SUMMARY_METRICS", "confusion_matrices", "metrics_from_confusion", "metric_name_parts", "per_class_table",
           "group_bootstrap_confusions", "group_bootstrap_draws", "group_confusions", "group_strata",
           "permutation_test", "collapse_probabilities",
           "aggregate_folds", "mean_interval", "Scores", "HonestScoring"]

#: Metrics computed from a confusion matrix for a task (per-class ones are added per class).
SUMMARY_METRICS = ("acc", "balanced_acc", "macro_f1")

# ------------------------------------------------------------------------------ metric algebra
def confusion_matrices(targets: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion matrices (rows true) of label arrays ``(..., n)`` -> ``(..., C, C)`` int64."""
    targets = np.asarray(targets, dtype=np.int64)
    predictions = np.broadcast_to(np.asarray(predictions, dtype=np.int64), targets.shape)
    lead = targets.shape[:-1]
    rows = int(np.prod(lead)) if lead else 1
    cell = (targets * num_classes + predictions).reshape(rows, -1)
    offset = (np.arange(rows) * num_classes * num_classes)[:, None]
    counts = np.bincount((cell + offset).ravel(), minlength=rows * num_classes * num_classes)
    return counts.reshape(*lead, num_classes, num_classes)


def metrics_from_confusion(matrix: np.ndarray, class_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy (macro recall), macro F1 and per-class precision / recall / F1
    of confusion matrices ``(..., C, C)`` (rows true); each value has shape ``(...)``.

    As torchmetrics: a class with no true, predicted or missed clip is left out of the macro
    averages; a zero division gives 0 for that class.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    tp = np.diagonal(matrix, axis1=-2, axis2=-1)
    support = matrix.sum(axis=-1)
    predicted = matrix.sum(axis=-2)
    fp, fn = predicted - tp, support - tp
    total = matrix.sum(axis=(-2, -1))

    def ratio(num, den):
        return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)

    precision, recall = ratio(tp, predicted), ratio(tp, support)
    f1 = ratio(2 * tp, 2 * tp + fp + fn)
    present = (tp + fp + fn) > 0
    n_present = present.sum(axis=-1)
    out = {"acc": ratio(tp.sum(axis=-1), total),
           "balanced_acc": ratio((recall * present).sum(axis=-1), n_present),
           "macro_f1": ratio((f1 * present).sum(axis=-1), n_present)}
    for index, name in enumerate(metric_name_parts(class_names)):
        out[f"precision_{name}"] = precision[..., index]
        out[f"recall_{name}"] = recall[..., index]
        out[f"f1_{name}"] = f1[..., index]
    return out


def metric_name_parts(names: Sequence[str]) -> list[str]:
    """Class or target names as parts of metric names every store accepts (``recall_<part>``):
    characters other than letters, digits, ``_``, ``-`` and ``.`` become ``_`` (a label with ``//``
    or ``..`` is not a valid MLflow metric name), and parts that would coincide get ``_2``, ``_3``."""
    parts: list[str] = []
    for name in names:
        part = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("._") or "class"
        part = re.sub(r"\.{2,}", ".", part)
        unique, number = part, 2
        while unique in parts:
            unique, number = f"{part}_{number}", number + 1
        parts.append(unique)
    return parts


def per_class_table(matrix: np.ndarray, class_names: Sequence[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class of one confusion matrix (rows true)."""
    values = metrics_from_confusion(matrix, class_names)
    parts = metric_name_parts(class_names)
    return pd.DataFrame({"class": list(class_names),
                         "precision": [float(values[f"precision_{c}"]) for c in parts],
                         "recall": [float(values[f"recall_{c}"]) for c in parts],
                         "f1": [float(values[f"f1_{c}"]) for c in parts],
                         "support": np.asarray(matrix).sum(axis=1).astype(int)})


def group_bootstrap_confusions(targets: np.ndarray, predictions: np.ndarray, groups: Sequence,
                               num_classes: int, n_boot: int, seed: int, stratified: bool = True) -> np.ndarray:
    """Confusion matrices of ``n_boot`` cluster-bootstrap resamples ``(n_boot, C, C)``.

    Each resample draws groups uniformly with replacement and takes every clip of each drawn
    group (clips of one baby are not independent, so they are resampled as a block). With
    ``stratified`` the groups are drawn within the stratum of their class (the most frequent
    true class of their clips), each stratum as many as it has, so every resample keeps the
    test set's classes. Without it, a label that is constant within groups (RAVDESS gender:
    one actor, one gender) gives resamples that lack a class, and the interval then measures
    those degenerate test sets, not the model (macro-F1 0.958 with a "95 % CI" of 0.49-0.97).
    ``stratified=False`` draws as many groups as there are from all of them. An empty test set
    gives all-zero matrices.
    """
    targets = np.asarray(targets, dtype=np.int64)
    if targets.size == 0:
        return np.zeros((n_boot, num_classes, num_classes), dtype=np.int64)
    _, group_index = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    per_group = group_confusions(targets, predictions, group_index, num_classes)
    draws = group_bootstrap_draws(group_strata(per_group) if stratified else np.zeros(per_group.shape[0], np.int64),
                                  n_boot, seed)
    return np.einsum("bg,gij->bij", draws, per_group)


def group_strata(per_group: np.ndarray) -> np.ndarray:
    """Stratum of each group for the bootstrap: the most frequent true class of its clips (the
    lowest class id on a tie), from per-group confusion matrices ``(groups, C, C)`` -> ``(groups,)``."""
    return np.asarray(per_group).sum(axis=2).argmax(axis=1)


def group_confusions(targets: np.ndarray, predictions: np.ndarray, group_index: np.ndarray,
                     num_classes: int) -> np.ndarray:
    """Confusion matrix of each group ``(groups, C, C)``; ``group_index``: ``(n,)`` ids 0..groups-1."""
    n_groups = int(group_index.max()) + 1
    cell = group_index * num_classes * num_classes + np.asarray(targets) * num_classes + np.asarray(predictions)
    counts = np.bincount(cell, minlength=n_groups * num_classes * num_classes)
    return counts.reshape(n_groups, num_classes, num_classes)


def _permuted_targets(targets: np.ndarray, groups: np.ndarray | None, n_permutations: int,
                      rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """``(n_permutations, n)`` permuted label arrays and log10 of an upper bound on the number
    of distinct arrangements the scheme can produce."""
    n = targets.shape[0]
    if groups is None:
        order = np.argsort(rng.random((n_permutations, n)), axis=1)
        return targets[order], math.lgamma(n + 1) / math.log(10)
    _, group_index = np.unique(groups.astype(str), return_inverse=True)
    members = [np.flatnonzero(group_index == g) for g in range(group_index.max() + 1)]
    by_size: dict[int, list[np.ndarray]] = {}
    for positions in members:
        by_size.setdefault(len(positions), []).append(positions)
    out = np.repeat(targets[None], n_permutations, axis=0)
    log_arrangements = 0.0
    for same_size in by_size.values():
        if len(same_size) < 2:
            continue
        log_arrangements += math.lgamma(len(same_size) + 1) / math.log(10)
        stacked = np.stack(same_size)  # (groups of this size, size)
        source_labels = targets[stacked]
        for row in range(n_permutations):
            out[row][stacked] = source_labels[rng.permutation(len(same_size))]
    return out, log_arrangements


def permutation_test(targets: np.ndarray, predictions: np.ndarray, class_names: Sequence[str],
                     metric: str = "macro_f1", groups: Sequence | None = None,
                     n_permutations: int = 1000, seed: int = 0) -> tuple[float, float, np.ndarray]:
    """Is the association between fixed predictions and true labels stronger than chance?

    H0: the predictions carry no information about the labels. The statistic is ``metric`` of
    the predictions; its null distribution comes from re-pairing the predictions with permuted
    labels. With ``groups``, whole groups of equal size exchange their label sequences (clips of a
    group keep their labels together, preserving within-group dependence; groups of a unique size
    keep their own), which stays valid when clips of one baby are correlated; without ``groups``
    single labels are shuffled. The model is not retrained: this tests the predictions of this
    model on this test set, not the training procedure.

    Returns ``(observed, p_value, null values)``, ``p = (1 + #{null >= observed}) / (1 + n)``.
    """
    targets = np.asarray(targets, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    num_classes = len(class_names)
    observed = float(metrics_from_confusion(confusion_matrices(targets, predictions, num_classes),
                                            class_names)[metric])
    rng = np.random.default_rng(seed)
    group_array = None if groups is None else np.asarray(groups)
    permuted, log_arrangements = _permuted_targets(targets, group_array, n_permutations, rng)
    if log_arrangements < 2:  # fewer than 100 distinct arrangements
        log.warning("permutation test: the %s scheme allows only ~%.0f distinct label arrangements; "
                    "the p-value cannot go below about %.3f", "grouped" if groups is not None else "plain",
                    10 ** log_arrangements, 10 ** -log_arrangements)
    null = metrics_from_confusion(confusion_matrices(permuted, predictions, num_classes), class_names)[metric]
    p_value = (1 + int(np.sum(null >= observed - 1e-12))) / (1 + n_permutations)
    return observed, float(p_value), null


def collapse_probabilities(probabilities: np.ndarray, class_names: Sequence[str],
                           collapse: Mapping[str, Sequence[str]]) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Sum class probabilities ``(n, C)`` into coarse classes.

    Returns ``(coarse probabilities (n, K), coarse names, fine -> coarse index (C,))``.
    Raises ``ValueError`` unless every class belongs to exactly one coarse class.
    """
    names = list(collapse)
    mapping = np.full(len(class_names), -1)
    for coarse, members in enumerate(collapse.values()):
        for member in members:
            if member not in class_names:
                raise ValueError(f"collapse names unknown class {member!r}; classes are {list(class_names)}")
            if mapping[class_names.index(member)] >= 0:
                raise ValueError(f"collapse puts class {member!r} in two coarse classes")
            mapping[class_names.index(member)] = coarse
    if (mapping < 0).any():
        missing = [class_names[i] for i in np.flatnonzero(mapping < 0)]
        raise ValueError(f"collapse leaves classes {missing} without a coarse class")
    coarse = np.zeros((probabilities.shape[0], len(names)))
    np.add.at(coarse.T, mapping, np.asarray(probabilities, dtype=np.float64).T)
    return coarse, names, mapping


def aggregate_folds(fold_metrics: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """``<m>_mean`` and ``<m>_std`` (sample standard deviation, ddof=1) across folds of every
    metric all folds report, except confidence bounds, p-values and the baseline's class id."""
    skip = ("_ci_low", "_ci_high", "_p_value", "_better_than_chance")
    common = set.intersection(*(set(m) for m in fold_metrics)) if fold_metrics else set()
    out: dict[str, float] = {}
    for name in sorted(common):
        if name.endswith(skip) or name == "baseline/majority_class":
            continue
        values = np.array([m[name] for m in fold_metrics], dtype=float)
        out[f"{name}_mean"] = float(values.mean())
        out[f"{name}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return out


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float, float]:
    """``(mean, std, low, high)`` of repeated measurements (runs with other seeds): the sample
    standard deviation (ddof=1) and the two-sided Student-t interval of the mean at
    ``confidence``. Fewer than two values: ``std``, ``low`` and ``high`` are NaN."""
    from scipy import stats as scipy_stats

    array = np.asarray(values, dtype=float)
    if array.size == 0:
        return math.nan, math.nan, math.nan, math.nan
    mean = float(array.mean())
    if array.size < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(array.std(ddof=1))
    if std == 0.0:
        return mean, 0.0, mean, mean
    low, high = scipy_stats.t.interval(confidence, df=array.size - 1, loc=mean, scale=std / math.sqrt(array.size))
    return mean, std, float(low), float(high)


# ----------------------------------------------------------------------------------- scoring
@dataclass
class Scores:
    """Result of ``EvaluationProtocol.score``: flat metrics, a one-line summary, the collapsed
    confusion matrix (``None`` without a collapse) and the reliability diagram's bins (``None``
    without calibration scores)."""

    metrics: dict[str, float]
    summary: str
    collapsed_matrix: np.ndarray | None
    collapsed_names: list[str] | None
    reliability: Reliability | None = None


class HonestScoring:
    """Settings of the numbers reported beside every test metric, and ``score``, which computes
    them from one set of predictions (a pure function of its arguments and these settings).

    Args:
        bootstrap_samples: group-bootstrap resamples for the intervals (0 disables them).
        stratified_bootstrap: draw the groups within the strata of their class (see
            ``group_bootstrap_confusions``); ``False`` resamples all groups together.
        confidence: two-sided coverage of the intervals (0.95 = 2.5th to 97.5th percentile).
        permutations: label permutations for the permutation test (0 disables it).
        permutation_metric: the statistic of the permutation test (a summary metric).
        grouped_permutation: permute whole groups (see ``permutation_test``).
        alpha: significance level of the "better than chance" verdict.
        collapse_by: how a collapsed prediction is made: ``"argmax"`` maps the multiclass
            prediction to its coarse class (the same predictions, scored coarsely);
            ``"probability"`` takes the coarse class with the largest summed probability, which
            depends on calibration (class-weighted losses shift probability towards rare classes).
        seed: seeds the bootstrap and the permutations.
        calibration_bins: equal-width confidence bins of the ECE and the reliability diagram
            (0: no calibration scores).
    """

    def __init__(self, bootstrap_samples: int = 1000, confidence: float = 0.95, permutations: int = 0,
                 permutation_metric: str = "macro_f1", grouped_permutation: bool = True,
                 alpha: float = 0.05, collapse_by: str = "argmax", seed: int = 0,
                 stratified_bootstrap: bool = True, calibration_bins: int = 15) -> None:
        if not 0 < confidence < 1:
            raise ValueError(f"evaluation.confidence={confidence} must be in (0, 1)")
        if bootstrap_samples < 0 or permutations < 0:
            raise ValueError("evaluation.bootstrap_samples and evaluation.permutations must be >= 0")
        if not isinstance(calibration_bins, int) or isinstance(calibration_bins, bool) or calibration_bins < 0:
            raise ValueError(f"evaluation.calibration_bins={calibration_bins!r}: use a whole number >= 0 (15 is usual; "
                             "0 turns the calibration scores off)")
        self.calibration_bins = calibration_bins
        if permutation_metric not in SUMMARY_METRICS:
            raise ValueError(f"evaluation.permutation_metric={permutation_metric!r}: use one of {SUMMARY_METRICS}")
        self.bootstrap_samples = int(bootstrap_samples)
        self.stratified_bootstrap = bool(stratified_bootstrap)
        self.confidence = float(confidence)
        self.permutations = int(permutations)
        self.permutation_metric = permutation_metric
        self.grouped_permutation = bool(grouped_permutation)
        if collapse_by not in ("argmax", "probability"):
            raise ValueError(f"evaluation.collapse_by={collapse_by!r}: use 'argmax' or 'probability'")
        self.alpha = float(alpha)
        self.collapse_by = collapse_by
        self.seed = int(seed)

    def score(self, probabilities: np.ndarray, targets: np.ndarray, groups: Sequence,
              class_names: Sequence[str], majority_class: int | np.ndarray,
              collapse: Mapping[str, Sequence[str]] | None = None, point_estimates: bool = True) -> Scores:
        """Point estimates, intervals, baseline and permutation test of one set of predictions.

        Args:
            probabilities: ``(n, C)`` class probabilities; the prediction is their argmax.
            targets: ``(n,)`` true class ids.
            groups: ``(n,)`` group of each clip (the bootstrap / permutation unit).
            majority_class: the training split's most frequent class (or one per clip, for
                pooled out-of-fold predictions whose folds had different training splits).
            collapse: ``{coarse: [classes]}`` to score the collapsed task as ``binary_*`` too.
            point_estimates: include ``test/<m>`` itself (a tested run has logged them already:
                ``False`` leaves them out rather than computing them twice).
        """
        class_names = list(class_names)
        probabilities = np.asarray(probabilities, dtype=np.float64)
        targets = np.asarray(targets, dtype=np.int64)
        groups = np.asarray(groups).astype(str)
        baseline = np.broadcast_to(np.asarray(majority_class, dtype=np.int64), targets.shape)
        tasks = [("", probabilities.argmax(axis=1), targets, baseline, class_names)]
        collapsed_matrix = collapsed_names = reliability = None
        if collapse:
            coarse, collapsed_names, mapping = collapse_probabilities(probabilities, class_names, collapse)
            coarse_prediction = (mapping[probabilities.argmax(axis=1)] if self.collapse_by == "argmax"
                                 else coarse.argmax(axis=1))
            tasks.append(("binary_" if len(collapsed_names) == 2 else "collapsed_", coarse_prediction,
                          mapping[targets], mapping[baseline], collapsed_names))
        metrics: dict[str, float] = {"baseline/majority_class": float(np.bincount(baseline).argmax())}
        parts = []
        for prefix, predicted, truth, base, names in tasks:
            matrix = confusion_matrices(truth, predicted, len(names))
            if prefix:
                collapsed_matrix = matrix
            point = {f"test/{prefix}{k}": float(v) for k, v in metrics_from_confusion(matrix, names).items()}
            if point_estimates or prefix:  # the collapsed task is never logged by the model
                metrics.update(point)
            base_point = metrics_from_confusion(confusion_matrices(truth, base, len(names)), names)
            metrics.update({f"baseline/{prefix}{k}": float(base_point[k]) for k in SUMMARY_METRICS})
            if self.bootstrap_samples:
                metrics.update(self._intervals(truth, predicted, groups, names, prefix))
            text = self._describe({**point, **metrics}, prefix)
            if not prefix and self.calibration_bins and len(truth) and not is_hard(probabilities):
                calibration, reliability = self._calibration(probabilities, truth, groups, len(names))
                metrics.update(calibration)
                text += f"; ece {calibration['test/ece']:.3f}"
                if "test/ece_ci_low" in calibration:
                    text += f" [{calibration['test/ece_ci_low']:.3f}-{calibration['test/ece_ci_high']:.3f}]"
            if self.permutations:
                _, p_value, _ = permutation_test(truth, predicted, names, self.permutation_metric,
                                                 groups if self.grouped_permutation else None,
                                                 self.permutations, self.seed)
                key = f"permutation/{prefix}{self.permutation_metric}"
                metrics[f"{key}_p_value"] = p_value
                metrics[f"{key}_better_than_chance"] = float(p_value < self.alpha)
                text += f"; permutation p={p_value:.3f}: {self.verdict(p_value)}"
            parts.append(text)
        return Scores(metrics, " | ".join(parts), collapsed_matrix, collapsed_names, reliability)

    def _calibration(self, probabilities: np.ndarray, truth: np.ndarray, groups: np.ndarray,
                     num_classes: int) -> tuple[dict[str, float], Reliability]:
        """``test/ece``, ``test/brier``, ``test/nll`` and their intervals, resampled as the
        metrics' intervals are (the same strata), and the reliability bins."""
        strata = None
        if self.stratified_bootstrap:
            _, group_index = np.unique(groups, return_inverse=True)
            strata = group_strata(group_confusions(truth, probabilities.argmax(axis=1), group_index, num_classes))
        values, reliability = calibration_scores(probabilities, truth, groups, self.calibration_bins,
                                                 self.bootstrap_samples, self.confidence, self.seed, strata)
        return {f"test/{name}": value for name, value in values.items()}, reliability

    def verdict(self, p_value: float) -> str:
        """``"better than chance"`` when ``p_value < alpha``, else ``"no better than chance"``."""
        return "better than chance" if p_value < self.alpha else "no better than chance"

    def _intervals(self, truth: np.ndarray, predicted: np.ndarray, groups: np.ndarray,
                   names: Sequence[str], prefix: str) -> dict[str, float]:
        if len(truth) == 0:
            log.warning("bootstrap: the test set is empty; no intervals")
            return {}
        if len(np.unique(groups)) < 2:
            log.warning("bootstrap: the test set holds a single group; intervals are degenerate")
        elif self.stratified_bootstrap:
            _, group_index = np.unique(groups, return_inverse=True)
            strata = group_strata(group_confusions(truth, predicted, group_index, len(names)))
            lonely = [names[s] for s, count in zip(*np.unique(strata, return_counts=True)) if count == 1]
            if lonely:  # a stratum of one group is the same in every resample
                log.warning("bootstrap: the test clips of %s come from a single group each: the intervals hold no "
                            "variation between groups of %s", lonely, "these classes" if len(lonely) > 1 else "it")
        matrices = group_bootstrap_confusions(truth, predicted, groups, len(names), self.bootstrap_samples,
                                              self.seed, self.stratified_bootstrap)
        tail = (1 - self.confidence) / 2 * 100
        out = {}
        for name, values in metrics_from_confusion(matrices, names).items():
            low, high = np.percentile(values, [tail, 100 - tail])
            out[f"test/{prefix}{name}_ci_low"] = float(low)
            out[f"test/{prefix}{name}_ci_high"] = float(high)
        return out

    def _describe(self, metrics: Mapping[str, float], prefix: str) -> str:
        name = f"{prefix}macro_f1"
        text = f"{name} {metrics[f'test/{name}']:.3f}"
        if f"test/{name}_ci_low" in metrics:
            text += (f" [{self.confidence:.0%} CI {metrics[f'test/{name}_ci_low']:.3f}-"
                     f"{metrics[f'test/{name}_ci_high']:.3f}]")
        return text + f" vs majority baseline {metrics[f'baseline/{name}']:.3f}"
