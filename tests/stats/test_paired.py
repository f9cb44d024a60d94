"""Paired comparisons of two models on the same items (``audioml.stats.paired``), each checked
against a reference: McNemar against scipy's exact binomial (and its closed form), the paired
permutation test against ``scipy.stats.permutation_test`` with sklearn's metrics, Holm against
closed testing of Bonferroni-tested intersections."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import binomtest, permutation_test
from sklearn.metrics import f1_score

from audioml.stats import (
    confusion_matrices,
    group_bootstrap_confusions,
    holm_adjust,
    mcnemar_exact,
    metrics_from_confusion,
    paired_classification,
    paired_regression,
)
from audioml.stats.paired import _swaps

CLASSES = ["a", "b", "c"]


def _correlated_pair(n_groups: int = 40, per_group: int = 3, seed: int = 0):
    """Two classifiers whose errors share each group's difficulty: A is right on the easy
    groups' clips, B is A plus a few fixes, so their accuracies move together across resamples."""
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"g{i:02d}" for i in range(n_groups)], per_group)
    targets = rng.integers(0, 3, size=groups.size)
    difficulty = np.repeat(rng.random(n_groups), per_group)
    wrong = (targets + 1) % 3
    predicted_a = np.where(difficulty < 0.55, targets, wrong)
    fixed = (predicted_a != targets) & (rng.random(groups.size) < 0.3)
    predicted_b = np.where(fixed, targets, predicted_a)
    return targets, predicted_a, predicted_b, groups


def test_paired_interval_holds_the_difference_and_is_narrower_than_the_unpaired_one():
    targets, predicted_a, predicted_b, groups = _correlated_pair()
    results = {r.metric: r for r in paired_classification(targets, predicted_a, predicted_b, groups, CLASSES,
                                                          bootstrap_samples=2000, permutations=2000, seed=3)}
    for metric, result in results.items():
        assert result.a == pytest.approx(float(metrics_from_confusion(confusion_matrices(targets, predicted_a, 3),
                                                                      CLASSES)[metric]))
        assert result.difference == pytest.approx(result.b - result.a)
        assert result.ci_low <= result.difference <= result.ci_high
        assert result.items == 120 and result.groups == 40
        # unpaired: each model resampled on its own draw, as two separate intervals would be
        draws_a = metrics_from_confusion(group_bootstrap_confusions(targets, predicted_a, groups, 3, 2000, 11),
                                         CLASSES)[metric]
        draws_b = metrics_from_confusion(group_bootstrap_confusions(targets, predicted_b, groups, 3, 2000, 12),
                                         CLASSES)[metric]
        unpaired_low, unpaired_high = np.percentile(draws_b - draws_a, [2.5, 97.5])
        assert result.ci_high - result.ci_low < 0.5 * (unpaired_high - unpaired_low)
    # B only fixes A's errors: better, and the paired tests say so where the unpaired interval cannot
    assert results["acc"].ci_low > 0 and unpaired_low < 0
    assert results["acc"].test == "McNemar exact" and results["acc"].p_value < 0.01
    assert results["macro_f1"].test == "paired permutation" and results["macro_f1"].p_value < 0.01


def test_mcnemar_equals_the_exact_binomial_on_a_known_table():
    # 30 clips both right, 10 only A right, 3 only B right, 7 both wrong
    correct_a = np.array([1] * 30 + [1] * 10 + [0] * 3 + [0] * 7, dtype=bool)
    correct_b = np.array([1] * 30 + [0] * 10 + [1] * 3 + [0] * 7, dtype=bool)
    only_a, only_b, p = mcnemar_exact(correct_a, correct_b)
    assert (only_a, only_b) == (10, 3)
    assert p == pytest.approx(binomtest(3, 13, 0.5).pvalue, abs=1e-15)
    assert p == pytest.approx(2 * sum(math.comb(13, k) for k in range(4)) / 2 ** 13, abs=1e-15)  # 0.0923
    assert mcnemar_exact(correct_a, correct_a)[2] == 1.0  # never disagree: nothing to test
    with pytest.raises(ValueError, match="same items"):
        mcnemar_exact(correct_a, correct_b[:-1])


def test_paired_permutation_p_equals_scipys_exact_paired_permutation_test():
    rng = np.random.default_rng(5)
    targets = rng.integers(0, 3, 8)
    predicted_a = np.where(rng.random(8) < 0.4, targets, rng.integers(0, 3, 8))
    predicted_b = np.where(rng.random(8) < 0.9, targets, rng.integers(0, 3, 8))
    groups = [f"clip{i}" for i in range(8)]  # each clip its own group: scipy's pairs

    def macro_f1_gain(a, b):
        return f1_score(targets, b, average="macro") - f1_score(targets, a, average="macro")

    reference = permutation_test((predicted_a, predicted_b), macro_f1_gain, permutation_type="samples",
                                 vectorized=False, n_resamples=10000)
    ours = {r.metric: r for r in paired_classification(targets, predicted_a, predicted_b, groups, CLASSES,
                                                       bootstrap_samples=0, permutations=10000)}
    assert ours["macro_f1"].difference == pytest.approx(reference.statistic)
    assert ours["macro_f1"].p_value == pytest.approx(reference.pvalue)
    accuracy = permutation_test((predicted_a, predicted_b), lambda a, b: np.mean(b == targets) - np.mean(a == targets),
                                permutation_type="samples", vectorized=False, n_resamples=10000)
    assert ours["acc"].p_permutation == pytest.approx(accuracy.pvalue) and math.isnan(ours["acc"].ci_low)


def test_permutation_swaps_whole_groups_exactly_or_at_random():
    swaps, exact = _swaps(4, 10000, 0)
    assert exact and swaps.shape == (16, 4) and len({tuple(row) for row in swaps}) == 16
    swaps, exact = _swaps(30, 500, 0)
    assert not exact and swaps.shape == (500, 30)
    # identical models in every group: no difference can arise, p = 1
    targets = np.array([0, 1, 2, 0, 1, 2])
    same = paired_classification(targets, targets, targets, list("aabbcc"), CLASSES, bootstrap_samples=100)
    assert all(r.difference == 0 and r.p_value == 1 and r.ci_low == r.ci_high == 0 for r in same)
    with pytest.raises(ValueError, match="pair item by item"):
        paired_classification(targets, targets, targets[:-1], list("aabbcc"), CLASSES)


def test_holm_equals_closed_testing_of_bonferroni_intersections():
    p = np.array([0.01, 0.04, 0.03, 0.005, 0.2])
    # reference: the adjusted p of hypothesis i is the largest Bonferroni p of any intersection holding i
    expected = [max(min(1.0, len(subset) * min(p[list(subset)]))
                    for size in range(1, len(p) + 1) for subset in itertools.combinations(range(len(p)), size)
                    if i in subset) for i in range(len(p))]
    assert np.allclose(holm_adjust(p), expected)
    assert np.allclose(holm_adjust([0.01, np.nan, 0.04]), [0.02, np.nan, 0.04], equal_nan=True)


def test_paired_regression_ccc_against_the_formula_and_scipys_permutation_test():
    rng = np.random.default_rng(2)
    target = rng.normal(size=10)
    prediction_a = target + rng.normal(0, 0.8, 10)
    prediction_b = 0.9 * target + rng.normal(0, 0.3, 10)

    def ccc(x):
        return 2 * np.cov(x, target, bias=True)[0, 1] / (x.var() + target.var() + (x.mean() - target.mean()) ** 2)

    reference = permutation_test((prediction_a, prediction_b), lambda a, b: ccc(b) - ccc(a),
                                 permutation_type="samples", vectorized=False, n_resamples=10000)
    ours = {r.metric: r for r in paired_regression(target, prediction_a, prediction_b, [str(i) for i in range(10)],
                                                   bootstrap_samples=500)}
    assert ours["ccc"].a == pytest.approx(ccc(prediction_a)) and ours["ccc"].b == pytest.approx(ccc(prediction_b))
    assert ours["ccc"].p_value == pytest.approx(reference.pvalue)
    assert ours["mse"].a == pytest.approx(np.mean((prediction_a - target) ** 2))
    assert ours["mae"].b == pytest.approx(np.mean(np.abs(prediction_b - target)))
    for result in ours.values():
        assert result.ci_low <= result.difference <= result.ci_high
