"""Honest-evaluation numerics: metric definitions, group bootstrap, permutation test, collapse,
fold aggregation, and the scores a run reports."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchmetrics.classification as tm

from audioml import stats as ev
from audioml.run.fit.protocols import Holdout, KFold
from audioml.stats import scoring

NAMES = ["a", "b", "c", "d"]


def test_metrics_from_confusion_match_torchmetrics_including_absent_classes():
    rng = np.random.default_rng(0)
    for trial in range(20):
        targets = rng.integers(0, 3, 30)  # class 3 never true...
        predictions = rng.integers(0, 4 if trial % 2 else 3, 30)  # ...and predicted in half the trials
        ours = ev.metrics_from_confusion(ev.confusion_matrices(targets, predictions, 4), NAMES)
        t, p = torch.tensor(targets), torch.tensor(predictions)
        reference = {"acc": tm.MulticlassAccuracy(4, average="micro")(p, t),
                     "balanced_acc": tm.MulticlassAccuracy(4, average="macro")(p, t),
                     "macro_f1": tm.MulticlassF1Score(4, average="macro")(p, t)}
        for index, name in enumerate(NAMES):
            reference[f"precision_{name}"] = tm.MulticlassPrecision(4, average="none")(p, t)[index]
            reference[f"recall_{name}"] = tm.MulticlassRecall(4, average="none")(p, t)[index]
            reference[f"f1_{name}"] = tm.MulticlassF1Score(4, average="none")(p, t)[index]
        for key, value in reference.items():
            assert float(ours[key]) == pytest.approx(float(value), abs=1e-6), key


def test_confusion_matrices_are_batched():
    targets = np.array([[0, 1, 1], [1, 0, 1]])
    matrices = ev.confusion_matrices(targets, np.array([0, 1, 0]), 2)
    assert matrices.shape == (2, 2, 2)
    assert matrices[0].tolist() == [[1, 0], [1, 1]] and matrices[1].tolist() == [[0, 1], [2, 0]]


def test_bootstrap_resamples_whole_groups():
    """Group g1 is all correct, g2 all wrong: a resample of two whole groups can only score
    0, 1/2 or 1 (resampling single clips would give many other values)."""
    targets = np.zeros(10, int)
    predictions = np.array([0] * 5 + [1] * 5)
    groups = ["g1"] * 5 + ["g2"] * 5
    matrices = ev.group_bootstrap_confusions(targets, predictions, groups, 2, n_boot=500, seed=0)
    accuracy = ev.metrics_from_confusion(matrices, ["x", "y"])["acc"]
    assert set(np.round(accuracy, 6)) == {0.0, 0.5, 1.0}
    assert (matrices.sum(axis=(1, 2)) == 10).all()  # two groups of five drawn every time
    again = ev.group_bootstrap_confusions(targets, predictions, groups, 2, n_boot=500, seed=0)
    assert np.array_equal(matrices, again)


def test_bootstrap_is_stratified_when_the_label_is_constant_within_groups(caplog):  # D16
    """RAVDESS gender on one fold: every actor is one gender. Resampling actors freely gives
    resamples holding one gender only (1 in 8 with four test actors), whose macro-F1 is near 0.5
    however good the model is; drawn within their class, every resample keeps two actors of each
    gender."""
    rng = np.random.default_rng(0)
    groups = np.repeat([f"actor_{i:02d}" for i in range(4)], 20)
    targets = np.repeat([0, 1] * 2, 20)  # actors alternate male, female
    predictions = np.where(rng.random(80) < 0.95, targets, 1 - targets)
    probabilities = np.eye(2)[predictions]
    free = ev.group_bootstrap_confusions(targets, predictions, groups, 2, n_boot=2000, seed=0, stratified=False)
    strata = ev.group_bootstrap_confusions(targets, predictions, groups, 2, n_boot=2000, seed=0)
    assert (free.sum(axis=2)[:, 0] == 0).any()  # some free resamples hold no male clip
    assert (strata.sum(axis=2) == 40).all()  # two actors (40 clips) of each gender, every time
    low = {name: Holdout(bootstrap_samples=2000, stratified_bootstrap=stratified).score(
        probabilities, targets, groups, ["male", "female"], 0).metrics["test/macro_f1_ci_low"]
        for name, stratified in (("free", False), ("strata", True))}
    estimate = ev.metrics_from_confusion(ev.confusion_matrices(targets, predictions, 2), ["m", "f"])["macro_f1"]
    assert low["free"] < 0.6 < 0.85 < low["strata"] <= estimate

    ones = Holdout(bootstrap_samples=100).score(probabilities[:40], targets[:40], groups[:40], ["m", "f"], 0)
    assert ones.metrics["test/macro_f1_ci_low"] <= ones.metrics["test/macro_f1_ci_high"]
    assert "single group each" in caplog.text  # one actor per gender: said, not hidden
    empty = ev.group_bootstrap_confusions(np.array([], int), np.array([], int), [], 2, n_boot=5, seed=0)
    assert empty.shape == (5, 2, 2) and not empty.any()


def test_intervals_contain_the_estimate_and_shrink_with_more_groups():
    protocol = Holdout(bootstrap_samples=400, seed=1)
    rng = np.random.default_rng(3)

    def width(n_groups: int) -> tuple[float, float, float]:
        targets = rng.integers(0, 3, n_groups * 4)
        predictions = np.where(rng.random(targets.shape) < 0.7, targets, (targets + 1) % 3)
        probabilities = np.eye(3)[predictions]
        groups = np.repeat(np.arange(n_groups), 4)
        metrics = protocol.score(probabilities, targets, groups, ["x", "y", "z"], 0).metrics
        return metrics["test/acc_ci_low"], metrics["test/acc"], metrics["test/acc_ci_high"]

    small, large = width(5), width(80)
    assert small[0] <= small[1] <= small[2] and large[0] <= large[1] <= large[2]
    assert large[2] - large[0] < small[2] - small[0]


def test_permutation_test_separates_chance_from_signal():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(60), 2)
    targets = rng.integers(0, 3, 120)
    p_values = []
    for seed in range(20):  # predictions independent of the labels: p is roughly uniform
        predictions = np.random.default_rng(100 + seed).integers(0, 3, 120)
        p_values.append(ev.permutation_test(targets, predictions, ["x", "y", "z"], "macro_f1", groups,
                                            n_permutations=200, seed=seed)[1])
    assert np.mean(np.array(p_values) < 0.05) <= 0.2 and np.median(p_values) > 0.2
    informative = np.where(rng.random(120) < 0.6, targets, rng.integers(0, 3, 120))
    observed, p_value, null = ev.permutation_test(targets, informative, ["x", "y", "z"], "macro_f1",
                                                  groups, n_permutations=500, seed=0)
    assert p_value < 0.01 and observed > null.max()


def test_grouped_permutation_moves_whole_label_sequences_between_equal_sized_groups():
    targets = np.array([0, 1, 2, 2, 1, 0, 0, 0, 1])
    groups = np.array(["a", "a", "b", "b", "c", "c", "d", "d", "e"])  # e alone has size 1
    rng = np.random.default_rng(0)
    permuted, _ = scoring._permuted_targets(targets, groups, 50, rng)
    sequences = {tuple(targets[groups == g]) for g in "abcd"}
    for row in permuted:
        for group in "abcd":
            assert tuple(row[groups == group]) in sequences
        assert row[groups == "e"].tolist() == [1]
    assert len({tuple(row) for row in permuted}) > 5


def test_collapse_sums_probabilities_and_checks_the_mapping():
    probabilities = np.array([[0.4, 0.3, 0.2, 0.1], [0.6, 0.1, 0.2, 0.1]])
    coarse, names, mapping = ev.collapse_probabilities(probabilities, NAMES, {"a": ["a"], "rest": ["b", "c", "d"]})
    assert names == ["a", "rest"] and mapping.tolist() == [0, 1, 1, 1]
    assert np.allclose(coarse, [[0.4, 0.6], [0.6, 0.4]])  # argmax "a" in row 0, yet P(rest) wins
    with pytest.raises(ValueError, match="without a coarse class"):
        ev.collapse_probabilities(probabilities, NAMES, {"a": ["a"], "b": ["b"]})
    with pytest.raises(ValueError, match="two coarse"):
        ev.collapse_probabilities(probabilities, NAMES, {"x": ["a", "b"], "y": ["b", "c", "d"]})


def test_aggregate_folds_reports_mean_and_sample_std_of_every_metric():
    folds = [{"test/macro_f1": 0.2, "test/macro_f1_ci_low": 0.1, "baseline/macro_f1": 0.1,
              "baseline/majority_class": 3.0, "permutation/macro_f1_p_value": 0.5},
             {"test/macro_f1": 0.4, "test/macro_f1_ci_low": 0.2, "baseline/macro_f1": 0.1,
              "baseline/majority_class": 3.0, "permutation/macro_f1_p_value": 0.01}]
    summary = ev.aggregate_folds(folds)
    assert summary["test/macro_f1_mean"] == pytest.approx(0.3)
    assert summary["test/macro_f1_std"] == pytest.approx(np.std([0.2, 0.4], ddof=1))
    assert summary["baseline/macro_f1_std"] == 0.0
    assert not any("ci_low" in k or "p_value" in k or "majority_class" in k for k in summary)


def test_score_reports_intervals_baseline_collapse_and_verdict():
    rng = np.random.default_rng(1)
    targets = np.array([3] * 60 + [0] * 10 + [1] * 10 + [2] * 10)  # class "d" is the majority
    groups = np.arange(90) // 2
    good = np.where(rng.random(90) < 0.8, targets, rng.integers(0, 4, 90))
    protocol = Holdout(bootstrap_samples=200, permutations=300, seed=0)
    scores = protocol.score(np.eye(4)[good], targets, groups, NAMES, majority_class=3,
                            collapse={"d": ["d"], "not_d": ["a", "b", "c"]})
    metrics = scores.metrics
    for name in ("acc", "balanced_acc", "macro_f1", "recall_a", "binary_macro_f1", "binary_recall_not_d"):
        assert metrics[f"test/{name}_ci_low"] <= metrics[f"test/{name}"] <= metrics[f"test/{name}_ci_high"], name
    assert metrics["baseline/acc"] == pytest.approx(60 / 90)
    assert metrics["baseline/macro_f1"] == pytest.approx((2 * 60 / (2 * 60 + 30)) / 4)
    assert metrics["baseline/binary_macro_f1"] == pytest.approx((2 * 60 / (2 * 60 + 30)) / 2)
    assert metrics["baseline/majority_class"] == 3
    assert metrics["permutation/macro_f1_better_than_chance"] == 1.0
    assert metrics["permutation/binary_macro_f1_p_value"] < 0.05
    assert "better than chance" in scores.summary and "vs majority baseline" in scores.summary
    assert scores.collapsed_matrix.sum() == 90 and scores.collapsed_names == ["d", "not_d"]
    chance = protocol.score(np.eye(4)[rng.permutation(good)], targets, groups, NAMES, 3)
    assert chance.metrics["permutation/macro_f1_better_than_chance"] == 0.0
    assert "no better than chance" in chance.summary


def test_protocol_settings_are_validated():
    with pytest.raises(ValueError, match="confidence"):
        Holdout(confidence=1.5)
    with pytest.raises(ValueError, match="permutation_metric"):
        Holdout(permutation_metric="auc")
    with pytest.raises(ValueError, match="k >= 2"):
        KFold(k=1)


def test_collapse_rules_argmax_mapping_and_summed_probability():
    probabilities = np.array([[0.4, 0.3, 0.2, 0.1], [0.1, 0.1, 0.1, 0.7]])
    targets = np.array([0, 3])
    collapse = {"a": ["a"], "rest": ["b", "c", "d"]}
    by_argmax = Holdout(bootstrap_samples=0).score(probabilities, targets, ["g1", "g2"], NAMES, 3, collapse)
    by_probability = Holdout(bootstrap_samples=0, collapse_by="probability").score(
        probabilities, targets, ["g1", "g2"], NAMES, 3, collapse)
    assert by_argmax.collapsed_matrix.tolist() == [[1, 0], [0, 1]]  # "a" predicted -> coarse "a"
    assert by_probability.collapsed_matrix.tolist() == [[0, 1], [0, 1]]  # P(rest) = 0.6 wins
    assert by_argmax.metrics["test/binary_acc"] == 1.0 and by_probability.metrics["test/binary_acc"] == 0.5
    with pytest.raises(ValueError, match="collapse_by"):
        Holdout(collapse_by="vote")
