"""Calibration of a classifier's probabilities: does a predicted 0.8 come true 80 % of the time?

``expected_calibration_error`` (top-label, equal-width bins), ``brier_score`` and
``negative_log_likelihood``; ``calibration_scores``: the three with group-bootstrap intervals and
the reliability diagram's bins; ``fit_temperature`` / ``apply_temperature``: temperature scaling,
which never changes the predicted class. All take probabilities ``(n, C)`` (rows summing to 1) and
true class ids ``(n,)``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from audioml.stats.resampling import group_bootstrap_draws

__all__ = ["DEFAULT_BINS", "TEMPERATURE_RANGE", "Reliability", "reliability_bins", "expected_calibration_error",
           "brier_score", "negative_log_likelihood", "calibration_scores", "fit_temperature", "apply_temperature",
           "is_hard"]

#: Equal-width confidence bins of the ECE and the reliability diagram (Guo et al. use 15).
DEFAULT_BINS = 15
#: Probabilities are clipped here before the log (sklearn's ``log_loss`` clips at float eps).
_EPS = 1e-15
#: Range of temperatures searched (a model 20 times too sure or too unsure is beyond rescue).
TEMPERATURE_RANGE = (0.05, 20.0)


@dataclass(frozen=True)
class Reliability:
    """A reliability diagram's bins: ``edges`` ``(bins + 1,)``, and per bin the number of items
    ``counts``, their mean top-class probability ``confidence`` and the share predicted right
    ``accuracy`` (NaN for an empty bin)."""

    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray


def _checked(probabilities: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    if probabilities.ndim != 2 or targets.shape != probabilities.shape[:1]:
        raise ValueError(f"probabilities {probabilities.shape} and targets {targets.shape}: expected (n, C) and (n,)")
    return probabilities, targets


def _per_item(probabilities: np.ndarray, targets: np.ndarray, bins: int) -> tuple[np.ndarray, ...]:
    """Per item: its bin, confidence, correctness, squared error summed over classes and NLL."""
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == targets).astype(np.float64)
    # bin b holds (b/bins, (b+1)/bins]; a confidence of exactly 0 goes to the first bin
    bin_index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    onehot = np.zeros_like(probabilities)
    onehot[np.arange(len(targets)), targets] = 1.0
    squared = ((probabilities - onehot) ** 2).sum(axis=1)
    true_probability = probabilities[np.arange(len(targets)), targets]
    nll = -np.log(np.clip(true_probability, _EPS, 1.0))
    return bin_index, confidence, correct, squared, nll


def _sums(probabilities: np.ndarray, targets: np.ndarray, bins: int, group_index: np.ndarray,
          n_groups: int) -> np.ndarray:
    """Per group the sums every score here is made of ``(groups, 3 * bins + 3)``: per bin the
    count, confidence and correct items, then the items, squared errors and NLL."""
    bin_index, confidence, correct, squared, nll = _per_item(probabilities, targets, bins)
    sums = np.zeros((n_groups, 3 * bins + 3))
    for offset, values in enumerate((np.ones_like(confidence), confidence, correct)):
        np.add.at(sums, (group_index, offset * bins + bin_index), values)
    for offset, values in enumerate((np.ones_like(confidence), squared, nll)):
        np.add.at(sums[:, 3 * bins + offset], group_index, values)
    return sums


def _scores_of_sums(sums: np.ndarray, bins: int) -> dict[str, np.ndarray]:
    """ECE, Brier and NLL of summed statistics ``(..., 3 * bins + 3)``."""
    confidence, correct = sums[..., bins:2 * bins], sums[..., 2 * bins:3 * bins]
    items = sums[..., 3 * bins]
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"ece": np.abs(correct - confidence).sum(axis=-1) / items,
                "brier": sums[..., 3 * bins + 1] / items, "nll": sums[..., 3 * bins + 2] / items}


def reliability_bins(probabilities: np.ndarray, targets: np.ndarray, bins: int = DEFAULT_BINS) -> Reliability:
    """The reliability diagram of top-label confidence in ``bins`` equal-width bins."""
    probabilities, targets = _checked(probabilities, targets)
    sums = _sums(probabilities, targets, bins, np.zeros(len(targets), dtype=np.int64), 1)[0]
    counts = sums[:bins]
    with np.errstate(invalid="ignore", divide="ignore"):
        return Reliability(np.linspace(0.0, 1.0, bins + 1), counts.astype(np.int64),
                           np.where(counts > 0, sums[bins:2 * bins] / counts, np.nan),
                           np.where(counts > 0, sums[2 * bins:3 * bins] / counts, np.nan))


def expected_calibration_error(probabilities: np.ndarray, targets: np.ndarray, bins: int = DEFAULT_BINS) -> float:
    """``sum_b (n_b / n) |accuracy_b - confidence_b|`` over equal-width bins of the top-class
    probability; 0 for a calibrated predictor. NaN for no items."""
    probabilities, targets = _checked(probabilities, targets)
    sums = _sums(probabilities, targets, bins, np.zeros(len(targets), dtype=np.int64), 1)[0]
    return float(_scores_of_sums(sums, bins)["ece"])


def brier_score(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """Mean over items of ``sum_c (p_c - [c is true])**2`` (0 best, 2 worst)."""
    probabilities, targets = _checked(probabilities, targets)
    return float(_per_item(probabilities, targets, 1)[3].mean())


def negative_log_likelihood(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """Mean ``-log p(true class)`` (probabilities clipped at 1e-15, as sklearn's ``log_loss``)."""
    probabilities, targets = _checked(probabilities, targets)
    return float(_per_item(probabilities, targets, 1)[4].mean())


def is_hard(probabilities: np.ndarray) -> bool:
    """Whether every probability is exactly 0 or 1: hard predictions (a classical model's class
    as one-hot rows) state no confidence, so calibration does not apply to them."""
    probabilities = np.asarray(probabilities)
    return bool(np.all((probabilities == 0) | (probabilities == 1)))


def calibration_scores(probabilities: np.ndarray, targets: np.ndarray, groups: Sequence, bins: int = DEFAULT_BINS,
                       bootstrap_samples: int = 1000, confidence: float = 0.95, seed: int = 0,
                       strata: np.ndarray | None = None) -> tuple[dict[str, float], Reliability]:
    """``({"ece", "brier", "nll", "<m>_ci_low", "<m>_ci_high"}, reliability bins)``.

    The intervals resample whole groups (``groups``: ``(n,)``) with replacement, within
    ``strata`` (one id per sorted unique group, as ``audioml.stats.scoring.group_strata``
    gives them; ``None``: all groups together), percentile method at ``confidence``; none with
    ``bootstrap_samples=0`` or fewer than two groups.
    """
    probabilities, targets = _checked(probabilities, targets)
    _, group_index = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    n_groups = int(group_index.max()) + 1 if len(group_index) else 0
    per_group = _sums(probabilities, targets, bins, group_index, max(n_groups, 1))
    scores = {name: float(value) for name, value in _scores_of_sums(per_group.sum(axis=0), bins).items()}
    if bootstrap_samples and n_groups >= 2:
        draws = group_bootstrap_draws(np.zeros(n_groups, np.int64) if strata is None else strata,
                                      bootstrap_samples, seed)
        resampled = _scores_of_sums(draws @ per_group, bins)
        tail = (1 - confidence) / 2 * 100
        for name, values in resampled.items():
            low, high = np.nanpercentile(values, [tail, 100 - tail])
            scores[f"{name}_ci_low"], scores[f"{name}_ci_high"] = float(low), float(high)
    return scores, reliability_bins(probabilities, targets, bins)


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)``: the probabilities of the logits divided by ``temperature``."""
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature={temperature!r}: use a finite number > 0")
    with np.errstate(divide="ignore"):
        scaled = np.log(np.asarray(probabilities, dtype=np.float64)) / float(temperature)
    scaled -= scaled.max(axis=1, keepdims=True)
    exponent = np.exp(scaled)
    return exponent / exponent.sum(axis=1, keepdims=True)


def fit_temperature(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """The temperature ``T`` that minimises the NLL of ``apply_temperature(probabilities, T)``
    on these (validation) items, within [0.05, 20]. The NLL is convex in ``1 / T``, so a
    bounded scalar search finds the minimum. ``T > 1`` softens an over-confident model.

    Raises ``ValueError`` for no items."""
    from scipy.optimize import minimize_scalar

    probabilities, targets = _checked(probabilities, targets)
    if not len(targets):
        raise ValueError("temperature scaling needs validation items; the validation split is empty")
    with np.errstate(divide="ignore"):
        log_p = np.log(probabilities)
    log_p = np.maximum(log_p, np.log(_EPS))  # an exact 0 (float32 underflow) as a very small probability
    rows = np.arange(len(targets))

    def nll(inverse: float) -> float:
        scaled = log_p * inverse
        top = scaled.max(axis=1)
        log_norm = top + np.log(np.exp(scaled - top[:, None]).sum(axis=1))
        return float((log_norm - scaled[rows, targets]).mean())

    low, high = 1.0 / TEMPERATURE_RANGE[1], 1.0 / TEMPERATURE_RANGE[0]
    found = minimize_scalar(nll, bounds=(low, high), method="bounded", options={"xatol": 1e-6})
    return float(1.0 / found.x)
