"""Scores of a regressor's predictions: Lin's concordance correlation coefficient (the one
definition audioml uses, for NumPy arrays and torch tensors alike: metrics, the CCC loss and the
honest scores), MSE and MAE, with group-bootstrap intervals and the mean baseline."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["concordance_cc", "regression_point", "regression_scores"]

Array = TypeVar("Array")  # a numpy.ndarray or a torch.Tensor


def concordance_cc(prediction: Array, target: Array, axis: int = 0) -> Array:
    """Lin's concordance correlation coefficient along ``axis``:
    ``2 cov(x, y) / (var(x) + var(y) + (mean(x) - mean(y))**2)`` with population (biased)
    moments, as the MuSe challenge computes it; the result has the other axes. 1 = perfect
    agreement, 0 = none, -1 = inverted.

    Edge cases (the contract every CCC of audioml keeps, ``paired_regression`` included): a side
    that does not vary along ``axis`` (a constant prediction or target, a single item) gives
    exactly 0, in float32 too; a NaN gives NaN. Raises ``ValueError`` for no items.

    Written once for both array kinds (``.mean``, ``.swapaxes`` and arithmetic only), so a
    torch tensor stays differentiable (the CCC loss) and NumPy needs no torch (the statistics).
    The caller checks shapes and dtypes.
    """
    if prediction.shape[axis] == 0:
        raise ValueError("the CCC of no items is undefined: pass at least one")
    if axis != 0:
        prediction, target = prediction.swapaxes(0, axis), target.swapaxes(0, axis)
    # Moments of the values shifted by their first item: a constant side is exactly 0 after the
    # shift, so its variance and covariance are exactly 0 (a rounded mean would leave residues
    # whose ratio is arbitrary: two equal constant series came out as CCC 1).
    first_p, first_t = prediction[:1], target[:1]
    shifted_p, shifted_t = prediction - first_p, target - first_t
    mean_p, mean_t = shifted_p.mean(0), shifted_t.mean(0)
    centred_p, centred_t = shifted_p - mean_p, shifted_t - mean_t
    covariance = (centred_p * centred_t).mean(0)
    bias = (mean_p - mean_t) + (first_p[0] - first_t[0])
    denominator = (centred_p ** 2).mean(0) + (centred_t ** 2).mean(0) + bias ** 2
    return 2 * covariance / (denominator + (denominator == 0))


def regression_point(prediction: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """``ccc``, ``mse`` and ``mae`` of one set of predictions (flattened)."""
    prediction = np.asarray(prediction, dtype=np.float64).reshape(-1)
    target = np.asarray(target, dtype=np.float64).reshape(-1)
    error = prediction - target
    return {"ccc": float(concordance_cc(prediction, target)), "mse": float((error ** 2).mean()),
            "mae": float(np.abs(error).mean())}


def regression_scores(prediction: np.ndarray, target: np.ndarray, groups: Sequence, baseline: np.ndarray | float,
                      bootstrap_samples: int = 1000, confidence: float = 0.95,
                      seed: int = 0) -> tuple[dict[str, float], str]:
    """Test scores of a regressor as ``HonestScoring.score`` gives them for classes: the point
    ``test/{ccc,mse,mae}``, group-bootstrap intervals (whole recordings / speakers resampled),
    and the mean baseline ``baseline/*`` (``baseline``: the training mean, per row or one value)."""
    prediction = np.asarray(prediction, dtype=np.float64).reshape(-1)
    target = np.asarray(target, dtype=np.float64).reshape(-1)
    base = np.broadcast_to(np.asarray(baseline, dtype=np.float64), target.shape)
    metrics = {f"test/{k}": v for k, v in regression_point(prediction, target).items()}
    metrics.update({f"baseline/{k}": v for k, v in regression_point(base, target).items()})
    names, index = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    if bootstrap_samples and len(names) >= 2:
        members = [np.flatnonzero(index == g) for g in range(len(names))]
        rng = np.random.default_rng(seed)
        draws = {k: np.empty(bootstrap_samples) for k in ("ccc", "mse", "mae")}
        for b in range(bootstrap_samples):
            rows = np.concatenate([members[g] for g in rng.integers(0, len(names), len(names))])
            for k, v in regression_point(prediction[rows], target[rows]).items():
                draws[k][b] = v
        tail = (1 - confidence) / 2 * 100
        for k, values in draws.items():
            low, high = np.nanpercentile(values, [tail, 100 - tail])
            metrics[f"test/{k}_ci_low"], metrics[f"test/{k}_ci_high"] = float(low), float(high)
    elif bootstrap_samples:
        log.warning("bootstrap: the test rows hold a single group; no intervals")
    text = f"ccc {metrics['test/ccc']:.3f}"
    if "test/ccc_ci_low" in metrics:
        text += f" [{confidence:.0%} CI {metrics['test/ccc_ci_low']:.3f}-{metrics['test/ccc_ci_high']:.3f}]"
    text += f", mse {metrics['test/mse']:.3f} vs mean baseline ccc {metrics['baseline/ccc']:.3f}, mse {metrics['baseline/mse']:.3f}"
    return metrics, text
