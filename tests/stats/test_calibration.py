"""Calibration scores and temperature scaling (``audioml.stats.calibration``) against sklearn's
reliability curve, Brier score and log loss, and scipy's softmax."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, log_loss

from audioml.stats import (
    apply_temperature,
    brier_score,
    calibration_scores,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_bins,
)
from audioml.stats.calibration import is_hard


def _predictor(n: int, sharpen: float, seed: int = 0):
    """Logits whose softmax is the true class distribution (labels drawn from it), then
    multiplied by ``sharpen``: 1 is calibrated, > 1 over-confident."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, size=(n, 4))
    targets = np.array([rng.choice(4, p=p) for p in softmax(logits, axis=1)])
    return softmax(sharpen * logits, axis=1), targets, logits


def test_ece_is_near_zero_when_calibrated_and_large_when_over_confident():
    calibrated, targets, _ = _predictor(20000, 1.0)
    over_confident, _, _ = _predictor(20000, 4.0)
    assert expected_calibration_error(calibrated, targets) < 0.015
    assert expected_calibration_error(over_confident, targets) > 0.15


def test_ece_equals_the_count_weighted_gap_of_sklearns_reliability_curve():
    probabilities, targets, _ = _predictor(3000, 2.0, seed=1)
    confidence, correct = probabilities.max(axis=1), probabilities.argmax(axis=1) == targets
    accuracy, mean_confidence = calibration_curve(correct, confidence, n_bins=15, strategy="uniform")
    edges = np.linspace(0, 1, 16)
    counts = np.bincount(np.searchsorted(edges[1:-1], confidence), minlength=15)
    counts = counts[counts > 0]
    assert expected_calibration_error(probabilities, targets, bins=15) == pytest.approx(
        float(np.sum(counts / counts.sum() * np.abs(accuracy - mean_confidence))), abs=1e-12)
    bins = reliability_bins(probabilities, targets, bins=15)
    filled = bins.counts > 0
    assert np.allclose(bins.accuracy[filled], accuracy) and np.allclose(bins.confidence[filled], mean_confidence)


def test_brier_and_nll_equal_sklearn():
    probabilities, targets, _ = _predictor(500, 1.5, seed=2)
    assert brier_score(probabilities, targets) == pytest.approx(brier_score_loss(targets, probabilities,
                                                                                 labels=range(4)), abs=1e-12)
    assert negative_log_likelihood(probabilities, targets) == pytest.approx(log_loss(targets, probabilities,
                                                                                     labels=range(4)), abs=1e-10)


def test_group_bootstrap_intervals_hold_the_estimates():
    probabilities, targets, _ = _predictor(600, 3.0, seed=3)
    groups = np.repeat(np.arange(60), 10)
    scores, bins = calibration_scores(probabilities, targets, groups, bootstrap_samples=300, seed=0)
    for name in ("ece", "brier", "nll"):
        assert scores[f"{name}_ci_low"] <= scores[name] <= scores[f"{name}_ci_high"]
    assert scores["ece"] == pytest.approx(expected_calibration_error(probabilities, targets))
    assert bins.counts.sum() == 600
    assert "ece_ci_low" not in calibration_scores(probabilities, targets, np.zeros(600), bootstrap_samples=300)[0]
    assert is_hard(np.eye(4)[targets]) and not is_hard(probabilities)


def test_temperature_scaling_lowers_validation_nll_and_keeps_every_prediction():
    probabilities, targets, logits = _predictor(4000, 3.0, seed=4)
    validation, test = slice(0, 2000), slice(2000, None)
    temperature = fit_temperature(probabilities[validation], targets[validation])
    assert temperature == pytest.approx(3.0, rel=0.15)  # undoes the sharpening
    scaled = apply_temperature(probabilities, temperature)
    assert np.allclose(scaled, softmax(3.0 * logits / temperature, axis=1), atol=1e-9)
    assert (scaled.argmax(axis=1) == probabilities.argmax(axis=1)).all()  # accuracy unchanged
    assert negative_log_likelihood(scaled[validation], targets[validation]) < \
        negative_log_likelihood(probabilities[validation], targets[validation])
    assert expected_calibration_error(scaled[test], targets[test]) < \
        0.3 * expected_calibration_error(probabilities[test], targets[test])  # and it carries over to unseen items
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(probabilities, 0.0)
