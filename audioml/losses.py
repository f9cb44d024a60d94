"""Losses. Every class accepts ``class_counts`` (clips per class in the training split) so the
entry point can pass it uniformly; losses that do not weight classes ignore it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["class_weights_from_counts", "CrossEntropyLoss", "FocalLoss", "BinaryCrossEntropyLoss", "CCCLoss",
           "MSELoss", "RegressionLoss"]


def class_weights_from_counts(class_counts: Sequence[int], scheme: str = "balanced") -> torch.Tensor:
    """Weights ``(num_classes,)`` from training counts.

    ``"balanced"``: ``n_total / (n_classes * n_c)`` (scikit-learn's rule; mean weight over clips
    is 1). ``"inverse_sqrt"``: ``1 / sqrt(n_c)`` rescaled to the same mean. A class with no
    training clip gets weight 0.
    """
    # on the CPU whatever the default device: counts are data (a model shell built on the meta
    # device to check a checkpoint's shapes still computes its loss's weights)
    counts = torch.as_tensor(list(class_counts), dtype=torch.float64, device="cpu")
    if counts.numel() == 0 or counts.sum() <= 0:
        raise ValueError("class weights need non-empty training class counts")
    present = counts > 0
    weights = torch.zeros_like(counts)
    if scheme == "balanced":
        weights[present] = counts.sum() / (present.sum() * counts[present])
    elif scheme == "inverse_sqrt":
        weights[present] = counts[present].rsqrt()
        weights *= counts.sum() / (weights * counts).sum()
    else:
        raise ValueError(f"loss.weighting={scheme!r}: use 'balanced' or 'inverse_sqrt'")
    return weights.float()


class CrossEntropyLoss(nn.Module):
    """Cross-entropy on logits ``(batch, classes)`` and class ids ``(batch,)`` or soft targets
    ``(batch, classes)``.

    Args:
        weighting: ``None`` (plain CE) or a scheme of ``class_weights_from_counts``.
        class_counts: training counts, required when ``weighting`` is set.
        label_smoothing: as ``torch.nn.CrossEntropyLoss``.
    """

    def __init__(self, weighting: str | None = None, class_counts: Sequence[int] | None = None,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("weight", _counted_weights(weighting, class_counts))
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, target, weight=self.weight,
                                           label_smoothing=self.label_smoothing)


def _counted_weights(weighting: str | None, class_counts: Sequence[int] | None) -> torch.Tensor | None:
    """Class weights of scheme ``weighting`` from the training counts (``None``: unweighted)."""
    if weighting is None:
        return None
    if not class_counts:
        raise ValueError(f"loss.weighting={weighting!r} needs the training class counts; "
                         "this dataset provides none (is it a regression task?)")
    return class_weights_from_counts(class_counts, weighting)


def _probability_targets(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class ids ``(batch,)`` or probabilities ``(batch, classes)`` -> float ``(batch, classes)``."""
    if target.dim() == 1:
        return nn.functional.one_hot(target.long(), num_classes).float()
    return target.float()


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017) on logits ``(batch, classes)``, for class ids ``(batch,)`` or
    probabilities ``(batch, classes)`` (mixup):

    ``loss_i = -sum_c y_ic * alpha_c * (1 - p_ic) ** gamma * log p_ic``, averaged over the batch,
    with ``p = softmax(logits)``. ``gamma=0`` without class weights is cross-entropy.

    Args:
        gamma: focusing exponent (>= 0); larger values down-weight well-classified clips.
        alpha: per-class weights (a list, one per class) or ``None``.
        weighting: derive ``alpha`` from the training counts instead (a scheme of
            ``class_weights_from_counts``); exclusive with ``alpha``.
        class_counts: training counts, required with ``weighting``.

    Raises ``ValueError`` for ``gamma < 0``, both ``alpha`` and ``weighting``, or a missing count.
    """

    def __init__(self, gamma: float = 2.0, alpha: Sequence[float] | None = None,
                 weighting: str | None = None, class_counts: Sequence[int] | None = None) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"loss.gamma={gamma} must be >= 0")
        if alpha is not None and weighting is not None:
            raise ValueError("set either loss.alpha (explicit class weights) or loss.weighting, not both")
        weight = _counted_weights(weighting, class_counts)
        if alpha is not None:
            weight = torch.as_tensor(list(alpha), dtype=torch.float32)
            if class_counts and len(weight) != len(class_counts):
                raise ValueError(f"loss.alpha has {len(weight)} values for {len(class_counts)} classes")
        self.gamma = float(gamma)
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = nn.functional.log_softmax(logits.float(), dim=1)
        focus = (1 - log_p.exp()).clamp_min(0).pow(self.gamma)
        per_class = -_probability_targets(target, logits.shape[1]) * focus * log_p
        if self.weight is not None:
            per_class = per_class * self.weight.to(per_class.device)
        return per_class.sum(dim=1).mean()


class BinaryCrossEntropyLoss(nn.Module):
    """Binary cross-entropy for two-class tasks, on the classifier's two logits.

    Class 1 is the positive class (for donateacry ``labels=binary``: ``not_hungry``). Its
    log-odds are ``logits[:, 1] - logits[:, 0]``, so ``sigmoid`` of them equals the softmax
    probability the classifier reports; without ``pos_weight`` the loss equals two-class
    cross-entropy. What it adds is the usual binary weighting: ``pos_weight`` multiplies the
    positive term, ``-(pos_weight * y * log q + (1 - y) * log(1 - q))``, averaged over the batch.

    Args:
        pos_weight: weight of positive clips, or ``None``.
        weighting: ``"balanced"`` sets ``pos_weight = n_negative / n_positive`` from the
            training counts; exclusive with ``pos_weight``.
        class_counts: training counts ``[n_class0, n_class1]``, required with ``weighting``.
        label_smoothing: targets become ``y * (1 - s) + s / 2``.

    Targets: class ids ``(batch,)`` in {0, 1} or probabilities ``(batch, 2)``.
    Raises ``ValueError`` for logits that are not ``(batch, 2)`` or inconsistent weights.
    """

    def __init__(self, pos_weight: float | None = None, weighting: str | None = None,
                 class_counts: Sequence[int] | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if pos_weight is not None and weighting is not None:
            raise ValueError("set either loss.pos_weight or loss.weighting, not both")
        if class_counts and len(class_counts) != 2:
            raise ValueError(f"loss=bce is for two-class tasks; this dataset has {len(class_counts)} "
                             "classes (use loss=ce, weighted_ce or focal)")
        if weighting is not None:
            if weighting != "balanced":
                raise ValueError(f"loss.weighting={weighting!r}: bce supports 'balanced' or null")
            if not class_counts or min(class_counts) <= 0:
                raise ValueError(f"loss.weighting=balanced needs both classes in the training split, "
                                 f"got counts {class_counts}")
            pos_weight = class_counts[0] / class_counts[1]
        self.register_buffer("pos_weight", None if pos_weight is None
                             else torch.tensor([float(pos_weight)]))
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 2 or logits.shape[1] != 2:
            raise ValueError(f"loss=bce needs two logits per clip, got shape {tuple(logits.shape)}; "
                             "use loss=ce, weighted_ce or focal for more classes")
        positive = _probability_targets(target, 2)[:, 1]
        positive = positive * (1 - self.label_smoothing) + self.label_smoothing / 2
        log_odds = logits[:, 1].float() - logits[:, 0].float()
        return nn.functional.binary_cross_entropy_with_logits(log_odds, positive, pos_weight=self.pos_weight)


class RegressionLoss(nn.Module):
    """Base of the regression losses: ``task = "regression"``, ``class_counts`` accepted and
    ignored (regression has no classes), predictions and targets of equal shape."""

    task = "regression"

    def __init__(self, class_counts: Sequence[int] | None = None) -> None:
        super().__init__()

    @staticmethod
    def check_shapes(prediction: torch.Tensor, target: torch.Tensor) -> None:
        if prediction.shape != target.shape:
            raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ")


class CCCLoss(RegressionLoss):
    """``1 - CCC`` for continuous targets (MuSe valence/arousal), averaged over targets.

    Predictions and targets ``(batch, [windows,] n_targets)``; every leading axis counts as
    samples of one CCC per target (``audioml.metrics.concordance_cc``), so the loss rewards
    agreement over the whole batch of sequences, as the challenge metric does.
    """

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from audioml.metrics import concordance_cc

        self.check_shapes(prediction, target)
        width = prediction.shape[-1] if prediction.dim() > 1 else 1
        ccc = concordance_cc(prediction.reshape(-1, width), target.reshape(-1, width), dim=0)
        return 1.0 - ccc.mean()


class MSELoss(RegressionLoss):
    """Mean squared error for continuous targets (any equal shapes)."""

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.check_shapes(prediction, target)
        return nn.functional.mse_loss(prediction.float(), target.float())
