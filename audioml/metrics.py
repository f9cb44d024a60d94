"""Regression metrics for continuous targets (valence, arousal): CCC, MSE, MAE per target."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from audioml.stats.regression import concordance_cc as stats_concordance_cc

__all__ = ["concordance_cc", "regression_metrics"]


def concordance_cc(prediction: torch.Tensor, target: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Lin's concordance correlation coefficient along ``dim`` of two float tensors,
    differentiable (used by ``audioml.losses.CCCLoss``): ``audioml.stats.concordance_cc``, the
    one definition and its edge cases (0 where a side does not vary, NaN for a NaN), on tensors.

    Args:
        prediction, target: tensors of the same shape.
        dim: the axis holding the samples; the result has the other axes.
    Raises ``ValueError`` for mismatched shapes.
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
    return stats_concordance_cc(prediction.float(), target.float(), axis=dim)


def regression_metrics(prediction: torch.Tensor, target: torch.Tensor,
                       target_names: Sequence[str] | None = None) -> dict[str, float]:
    """CCC, MSE, MAE per target and their means over targets.

    Args:
        prediction, target: ``(..., n_targets)``; all leading axes are samples (clips,
            windows), pooled before computing (CCC over the whole set, not averaged per batch).
        target_names: names of the targets (default ``"0"``, ``"1"`` ...).
    Returns ``{"ccc", "mse", "mae", "ccc_<name>", "mse_<name>", "mae_<name>"}``.
    """
    prediction = prediction.detach().float().reshape(-1, prediction.shape[-1])
    target = target.detach().float().reshape(-1, target.shape[-1])
    names = list(target_names) if target_names is not None else [str(i) for i in range(prediction.shape[1])]
    if len(names) != prediction.shape[1]:
        raise ValueError(f"{len(names)} target names for {prediction.shape[1]} targets")
    values = {"ccc": concordance_cc(prediction, target, dim=0),
              "mse": (prediction - target).square().mean(dim=0),
              "mae": (prediction - target).abs().mean(dim=0)}
    result: dict[str, float] = {}
    for metric, per_target in values.items():
        result[metric] = float(per_target.mean())
        for name, value in zip(names, per_target.tolist()):
            result[f"{metric}_{name}"] = float(value)
    return result
