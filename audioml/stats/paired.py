"""Two models scored on the same test items: is B better than A, and by how much?

The predictions are paired item by item, so a difference carries the variation of the test set's
groups once: a paired group-bootstrap interval of ``metric(B) - metric(A)``, McNemar's exact test
for accuracy, a paired permutation test swapping whole groups for every metric, and Holm's
correction of several comparisons. Meaning: docs/guide/comparing-runs.md; how:
docs/design/statistics.md."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from audioml.stats.resampling import group_bootstrap_draws
from audioml.stats.scoring import SUMMARY_METRICS, group_confusions, group_strata, metrics_from_confusion

__all__ = ["PairedDifference", "mcnemar_exact", "paired_classification", "paired_regression", "holm_adjust",
           "REGRESSION_METRICS", "LOWER_IS_BETTER"]

#: Metrics of a regressor compared by ``paired_regression``.
REGRESSION_METRICS = ("ccc", "mse", "mae")
#: Metrics for which a negative difference (B minus A) means B is better.
LOWER_IS_BETTER = ("mse", "mae", "loss", "ece", "brier", "nll")


@dataclass(frozen=True)
class PairedDifference:
    """One metric of model A and model B on the same items, and their difference ``b - a``.

    ``ci_low``/``ci_high``: the paired group-bootstrap interval of the difference at
    ``confidence``; ``p_value``: the metric's paired test, named by ``test``; ``p_permutation``:
    the paired group permutation test (the same as ``p_value`` unless ``test`` is McNemar's);
    ``items``/``groups``: how many were compared."""

    metric: str
    a: float
    b: float
    difference: float
    ci_low: float
    ci_high: float
    confidence: float
    p_value: float
    test: str
    p_permutation: float
    items: int
    groups: int

    def row(self) -> dict[str, float | str | int]:
        """The fields as one table row."""
        return {"metric": self.metric, "a": self.a, "b": self.b, "difference": self.difference,
                "ci_low": self.ci_low, "ci_high": self.ci_high, "p_value": self.p_value, "test": self.test,
                "p_permutation": self.p_permutation, "items": self.items, "groups": self.groups}


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[int, int, float]:
    """``(b, c, p)``: ``b`` items only A gets right, ``c`` only B; ``p`` the two-sided exact
    binomial test of ``c`` successes in ``b + c`` trials at 1/2 (``scipy.stats.binomtest``);
    1 when the models never disagree."""
    from scipy.stats import binomtest

    correct_a, correct_b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if correct_a.shape != correct_b.shape:
        raise ValueError(f"{correct_a.shape} and {correct_b.shape} items: McNemar pairs the same items")
    only_a, only_b = int((correct_a & ~correct_b).sum()), int((~correct_a & correct_b).sum())
    if only_a + only_b == 0:
        return only_a, only_b, 1.0
    return only_a, only_b, float(binomtest(only_b, only_a + only_b, 0.5).pvalue)


def holm_adjust(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control for several tests): the
    ``i``-th smallest is ``max_{j <= i} min(1, (m - j) p_(j))`` (0-based ``j``), in the input
    order. NaN stays NaN and is not counted. (Written here: four lines, where statsmodels'
    ``multipletests`` would be a dependency for one function.)"""
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p.shape, np.nan)
    present = np.flatnonzero(~np.isnan(p))
    order = present[np.argsort(p[present], kind="stable")]
    factors = len(order) - np.arange(len(order))
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(factors * p[order]))
    return adjusted


def _swaps(n_groups: int, permutations: int, seed: int) -> tuple[np.ndarray, bool]:
    """``(swap matrix (draws, groups) of 0/1, exact)``: every subset of groups when there are at
    most ``permutations`` of them (the identity included), else random subsets."""
    if n_groups <= 20 and 2 ** n_groups <= permutations:
        codes = np.arange(2 ** n_groups)[:, None]
        return ((codes >> np.arange(n_groups)[None, :]) & 1).astype(np.float64), True
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2, size=(permutations, n_groups)).astype(np.float64), False


def _p_two_sided(null: np.ndarray, observed: float, exact: bool) -> float:
    """Share of the null at least as far from 0 as ``observed``; a random null counts the
    observed arrangement once more, ``(1 + k) / (1 + n)``."""
    extreme = int(np.sum(np.abs(null) >= abs(observed) - 1e-12))
    return extreme / len(null) if exact else (1 + extreme) / (1 + len(null))


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(values, [tail, 100 - tail])
    return float(low), float(high)


def _validated(groups: Sequence, n: int, confidence: float) -> tuple[np.ndarray, int]:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence} must be in (0, 1)")
    group_array = np.asarray(groups).astype(str)
    if group_array.shape != (n,):
        raise ValueError(f"{group_array.shape[0] if group_array.ndim else 0} groups for {n} items")
    if n == 0:
        raise ValueError("no items to compare")
    _, group_index = np.unique(group_array, return_inverse=True)
    return group_index, int(group_index.max()) + 1


def paired_classification(targets: np.ndarray, predicted_a: np.ndarray, predicted_b: np.ndarray, groups: Sequence,
                          class_names: Sequence[str], metrics: Sequence[str] = SUMMARY_METRICS,
                          bootstrap_samples: int = 1000, permutations: int = 10000, confidence: float = 0.95,
                          seed: int = 0, stratified: bool = True) -> list[PairedDifference]:
    """Paired differences of ``metrics`` (names of ``metrics_from_confusion``) between two
    classifiers' predicted class ids ``(n,)`` on the same items with true ids ``targets``.

    Accuracy is tested with McNemar's exact test (``p_value``) and, like every metric, the
    paired group permutation test (``p_permutation``). ``stratified``: draw the bootstrap's
    groups within the stratum of their class. Raises ``ValueError`` for mismatched lengths."""
    targets = np.asarray(targets, dtype=np.int64)
    predicted_a, predicted_b = np.asarray(predicted_a, dtype=np.int64), np.asarray(predicted_b, dtype=np.int64)
    if not targets.shape == predicted_a.shape == predicted_b.shape:
        raise ValueError(f"targets {targets.shape}, A {predicted_a.shape} and B {predicted_b.shape} must pair item "
                         "by item")
    group_index, n_groups = _validated(groups, len(targets), confidence)
    names, num_classes = list(class_names), len(class_names)
    per_a = group_confusions(targets, predicted_a, group_index, num_classes).astype(np.float64)
    per_b = group_confusions(targets, predicted_b, group_index, num_classes).astype(np.float64)

    def scored(matrices: np.ndarray) -> dict[str, np.ndarray]:
        return metrics_from_confusion(matrices, names)

    point_a, point_b = scored(per_a.sum(axis=0)), scored(per_b.sum(axis=0))
    draws = group_bootstrap_draws(group_strata(per_a) if stratified else np.zeros(n_groups, np.int64),
                                  bootstrap_samples, seed) if bootstrap_samples else None
    boot_a = scored(np.einsum("bg,gij->bij", draws, per_a)) if draws is not None else None
    boot_b = scored(np.einsum("bg,gij->bij", draws, per_b)) if draws is not None else None
    swaps, exact = _swaps(n_groups, permutations, seed + 1) if permutations else (None, False)
    null_a = scored(np.einsum("pg,gij->pij", 1 - swaps, per_a) + np.einsum("pg,gij->pij", swaps, per_b)) \
        if swaps is not None else None
    null_b = scored(np.einsum("pg,gij->pij", swaps, per_a) + np.einsum("pg,gij->pij", 1 - swaps, per_b)) \
        if swaps is not None else None
    mcnemar = mcnemar_exact(predicted_a == targets, predicted_b == targets)[2]
    out = []
    for metric in metrics:
        if metric not in point_a:
            raise ValueError(f"metric {metric!r}: use one of {sorted(point_a)}")
        a, b = float(point_a[metric]), float(point_b[metric])
        low, high = _interval(boot_b[metric] - boot_a[metric], confidence) if draws is not None else (math.nan,) * 2
        p_perm = _p_two_sided(null_b[metric] - null_a[metric], b - a, exact) if swaps is not None else math.nan
        p_value, test = (mcnemar, "McNemar exact") if metric == "acc" else (p_perm, "paired permutation")
        out.append(PairedDifference(metric, a, b, b - a, low, high, confidence, p_value, test, p_perm,
                                    len(targets), n_groups))
    return out


# -------------------------------------------------------------------------------- regression
_SUMS = ("count", "p", "t", "pp", "tt", "pt", "se", "ae")


def _regression_sums(prediction: np.ndarray, target: np.ndarray, group_index: np.ndarray,
                     n_groups: int) -> np.ndarray:
    """Per group ``(groups, 8)``: count, sums of p, t, p², t², p·t, (p - t)² and |p - t|."""
    columns = np.stack([np.ones_like(prediction), prediction, target, prediction ** 2, target ** 2,
                        prediction * target, (prediction - target) ** 2, np.abs(prediction - target)], axis=1)
    sums = np.zeros((n_groups, len(_SUMS)))
    np.add.at(sums, group_index, columns)
    return sums


def _regression_of_sums(sums: np.ndarray) -> dict[str, np.ndarray]:
    """CCC (``concordance_cc``'s contract: population moments, 0 where a side does not vary, NaN
    for a NaN), MSE and MAE of summed statistics ``(..., 8)``."""
    count, p, t, pp, tt, pt, se, ae = np.moveaxis(sums, -1, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p, mean_t, mean_pp, mean_tt = p / count, t / count, pp / count, tt / count
        var_p, var_t = mean_pp - mean_p ** 2, mean_tt - mean_t ** 2
        covariance = pt / count - mean_p * mean_t
        denominator = var_p + var_t + (mean_p - mean_t) ** 2
        # Moments from sums keep the sums' rounding (about count x eps of the mean square), where
        # concordance_cc's direct moments are exact for a constant side: a spread below it is none.
        rounding = 4 * count * np.finfo(np.float64).eps
        constant = (var_p <= rounding * mean_pp) | (var_t <= rounding * mean_tt)
        ccc = np.where(constant, 0.0 * covariance, 2 * covariance / np.where(denominator > 0, denominator, 1))
        return {"ccc": ccc, "mse": se / count, "mae": ae / count}


def paired_regression(target: np.ndarray, prediction_a: np.ndarray, prediction_b: np.ndarray, groups: Sequence,
                      metrics: Sequence[str] = REGRESSION_METRICS, bootstrap_samples: int = 1000,
                      permutations: int = 10000, confidence: float = 0.95, seed: int = 0) -> list[PairedDifference]:
    """Paired differences of CCC / MSE / MAE between two regressors' predictions ``(n,)`` of the
    same rows (windows) with ``target``, pooled over all rows as the test metrics pool them;
    bootstrap and permutation over whole ``groups`` (recordings). Raises ``ValueError`` for
    mismatched lengths or an unknown metric."""
    target = np.asarray(target, dtype=np.float64).reshape(-1)
    prediction_a = np.asarray(prediction_a, dtype=np.float64).reshape(-1)
    prediction_b = np.asarray(prediction_b, dtype=np.float64).reshape(-1)
    if not target.shape == prediction_a.shape == prediction_b.shape:
        raise ValueError(f"target {target.shape}, A {prediction_a.shape} and B {prediction_b.shape} must pair row "
                         "by row")
    unknown = sorted(set(metrics) - set(REGRESSION_METRICS))
    if unknown:
        raise ValueError(f"metrics {unknown}: use {list(REGRESSION_METRICS)}")
    group_index, n_groups = _validated(groups, len(target), confidence)
    sums_a = _regression_sums(prediction_a, target, group_index, n_groups)
    sums_b = _regression_sums(prediction_b, target, group_index, n_groups)
    point_a, point_b = _regression_of_sums(sums_a.sum(axis=0)), _regression_of_sums(sums_b.sum(axis=0))
    draws = group_bootstrap_draws(np.zeros(n_groups, np.int64), bootstrap_samples, seed) if bootstrap_samples else None
    swaps, exact = _swaps(n_groups, permutations, seed + 1) if permutations else (None, False)
    out = []
    for metric in metrics:
        a, b = float(point_a[metric]), float(point_b[metric])
        low = high = p_perm = math.nan
        if draws is not None:
            low, high = _interval(_regression_of_sums(draws @ sums_b)[metric]
                                  - _regression_of_sums(draws @ sums_a)[metric], confidence)
        if swaps is not None:
            null = (_regression_of_sums(swaps @ sums_a + (1 - swaps) @ sums_b)[metric]
                    - _regression_of_sums((1 - swaps) @ sums_a + swaps @ sums_b)[metric])
            p_perm = _p_two_sided(null, b - a, exact)
        out.append(PairedDifference(metric, a, b, b - a, low, high, confidence, p_perm, "paired permutation", p_perm,
                                    len(target), n_groups))
    return out
