"""Loss numerics against NumPy reference formulas, and the loss configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from audioml import losses
from audioml.config import CONFIG_DIR

CONF = Path(CONFIG_DIR) / "loss"


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def focal_reference(logits, targets, gamma, alpha=None) -> float:
    """-sum_c y_c alpha_c (1 - p_c)^gamma log p_c, mean over the batch (NumPy, float64)."""
    p = softmax(np.asarray(logits, np.float64))
    y = np.eye(p.shape[1])[targets] if np.ndim(targets) == 1 else np.asarray(targets, np.float64)
    alpha = np.ones(p.shape[1]) if alpha is None else np.asarray(alpha, np.float64)
    return float((-(y * alpha * (1 - p) ** gamma * np.log(p)).sum(axis=1)).mean())


@pytest.fixture
def logits_and_targets():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(12, 4, generator=generator) * 2, torch.randint(0, 4, (12,), generator=generator)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
def test_focal_loss_matches_the_reference_formula(logits_and_targets, gamma):
    logits, targets = logits_and_targets
    ours = losses.FocalLoss(gamma=gamma)(logits, targets)
    assert ours.item() == pytest.approx(focal_reference(logits.numpy(), targets.numpy(), gamma), rel=1e-5)


def test_focal_loss_with_class_weights_and_soft_targets(logits_and_targets):
    logits, targets = logits_and_targets
    counts = [6, 3, 2, 1]
    weights = losses.class_weights_from_counts(counts).numpy()
    weighted = losses.FocalLoss(gamma=2.0, weighting="balanced", class_counts=counts)(logits, targets)
    assert weighted.item() == pytest.approx(focal_reference(logits.numpy(), targets.numpy(), 2.0, weights), rel=1e-5)
    explicit = losses.FocalLoss(gamma=1.0, alpha=[0.1, 0.2, 0.3, 0.4])(logits, targets)
    assert explicit.item() == pytest.approx(
        focal_reference(logits.numpy(), targets.numpy(), 1.0, [0.1, 0.2, 0.3, 0.4]), rel=1e-5)
    soft = torch.softmax(torch.randn(12, 4), dim=1)
    assert losses.FocalLoss(gamma=2.0)(logits, soft).item() == pytest.approx(
        focal_reference(logits.numpy(), soft.numpy(), 2.0), rel=1e-5)


def test_focal_loss_without_focusing_is_cross_entropy(logits_and_targets):
    logits, targets = logits_and_targets
    assert losses.FocalLoss(gamma=0.0)(logits, targets).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, targets).item(), rel=1e-6)


def test_focal_loss_rejects_conflicting_settings():
    with pytest.raises(ValueError, match="either"):
        losses.FocalLoss(alpha=[1, 1], weighting="balanced", class_counts=[1, 1])
    with pytest.raises(ValueError, match="class counts"):
        losses.FocalLoss(weighting="balanced")
    with pytest.raises(ValueError, match=">= 0"):
        losses.FocalLoss(gamma=-1)


def bce_reference(logits, positive, pos_weight=1.0) -> float:
    q = 1 / (1 + np.exp(-(logits[:, 1] - logits[:, 0]).astype(np.float64)))
    return float((-(pos_weight * positive * np.log(q) + (1 - positive) * np.log(1 - q))).mean())


def test_binary_cross_entropy_matches_the_reference_formula():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(16, 2, generator=generator) * 3
    targets = torch.randint(0, 2, (16,), generator=generator)
    plain = losses.BinaryCrossEntropyLoss()(logits, targets)
    assert plain.item() == pytest.approx(bce_reference(logits.numpy(), targets.numpy()), rel=1e-5)
    # Unweighted, it is two-class cross-entropy: sigmoid(l1 - l0) is softmax's P(class 1).
    assert plain.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, targets).item(), rel=1e-5)
    balanced = losses.BinaryCrossEntropyLoss(weighting="balanced", class_counts=[30, 10])(logits, targets)
    assert balanced.item() == pytest.approx(bce_reference(logits.numpy(), targets.numpy(), 3.0), rel=1e-5)
    soft = torch.softmax(torch.randn(16, 2, generator=generator), dim=1)
    assert losses.BinaryCrossEntropyLoss()(logits, soft).item() == pytest.approx(
        bce_reference(logits.numpy(), soft[:, 1].numpy()), rel=1e-5)


def test_binary_cross_entropy_refuses_more_than_two_classes():
    with pytest.raises(ValueError, match="two-class"):
        losses.BinaryCrossEntropyLoss(class_counts=[3, 2, 1])
    with pytest.raises(ValueError, match="two logits"):
        losses.BinaryCrossEntropyLoss()(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))


def test_ccc_loss_matches_the_reference_formula():
    """Lin's CCC with population moments (NumPy) against the models helper's CCCLoss."""
    rng = np.random.default_rng(2)
    target = rng.normal(size=(64, 2))
    prediction = 0.6 * target + rng.normal(scale=0.5, size=(64, 2)) + 0.2
    reference = []
    for column in range(2):
        x, y = prediction[:, column], target[:, column]
        covariance = ((x - x.mean()) * (y - y.mean())).mean()
        reference.append(2 * covariance / (x.var() + y.var() + (x.mean() - y.mean()) ** 2))
    loss = losses.CCCLoss()(torch.tensor(prediction), torch.tensor(target))
    assert loss.item() == pytest.approx(1 - np.mean(reference), rel=1e-5)


@pytest.mark.parametrize("name", ["ce", "weighted_ce", "focal", "bce"])
def test_loss_configs_instantiate_with_class_counts(name):
    config = OmegaConf.load(CONF / f"{name}.yaml")
    loss = instantiate(config, class_counts=[8, 2])
    logits, targets = torch.randn(5, 2), torch.tensor([0, 1, 1, 0, 0])
    value = loss(logits, targets)
    assert value.ndim == 0 and torch.isfinite(value)


@pytest.mark.parametrize("name", ["ce", "weighted_ce", "focal", "bce"])
def test_loss_configs_instantiate_on_the_meta_device(name):
    """A checkpoint's model is first built on the meta device to compare its shapes with the file's
    weights (audioml.run.use.checkpoint): a class-weighted loss must build there too (its weights from
    the counts), with the weights it has on the CPU."""
    config = OmegaConf.load(CONF / f"{name}.yaml")
    with torch.device("meta"):
        shell = instantiate(config, class_counts=[8, 2])
    built = instantiate(config, class_counts=[8, 2])
    assert {k: tuple(v.shape) for k, v in shell.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in built.state_dict().items()}
