"""The one CCC definition (``audioml.stats.concordance_cc``) on NumPy arrays and torch tensors,
against the textbook formula through NumPy's own correlation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from audioml.losses import CCCLoss
from audioml.metrics import concordance_cc as torch_ccc
from audioml.stats import concordance_cc, paired_regression, regression_point


def reference_ccc(x: np.ndarray, y: np.ndarray) -> float:
    """Lin (1989): 2 rho s_x s_y / (s_x^2 + s_y^2 + (mean_x - mean_y)^2), population moments."""
    rho = np.corrcoef(x, y)[0, 1]
    return 2 * rho * x.std() * y.std() / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)


def test_one_definition_for_numpy_and_torch_equals_the_textbook_formula():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(300, 3))
    prediction = 0.6 * target + rng.normal(0.2, 0.5, size=(300, 3))
    expected = [reference_ccc(prediction[:, i], target[:, i]) for i in range(3)]
    assert np.allclose(concordance_cc(prediction, target), expected, atol=1e-12)
    assert np.allclose(concordance_cc(prediction.T, target.T, axis=1), expected, atol=1e-12)
    assert np.allclose(torch_ccc(torch.from_numpy(prediction), torch.from_numpy(target)).numpy(), expected, atol=1e-5)
    assert regression_point(prediction[:, 0], target[:, 0])["ccc"] == pytest.approx(expected[0], abs=1e-12)


def test_nothing_to_agree_on_is_zero_on_both_sides_and_the_tensor_stays_differentiable():
    constant = np.full(10, 0.5)
    assert float(concordance_cc(constant, constant)) == 0.0
    assert float(torch_ccc(torch.full((10,), 0.5), torch.full((10,), 0.5))) == 0.0
    varying = np.linspace(-1, 1, 10)
    assert float(concordance_cc(constant, varying)) == 0.0  # a constant prediction: no covariance
    prediction = torch.linspace(-1, 1, 10, requires_grad=True)
    torch_ccc(prediction, torch.linspace(-1, 1, 10) ** 3).backward()
    assert torch.isfinite(prediction.grad).all() and prediction.grad.abs().sum() > 0


def contract_ccc(x: np.ndarray, y: np.ndarray) -> float:
    """The edge-case contract on top of the textbook formula: NaN in, NaN out; 0 where a side does
    not vary (a constant, a single item)."""
    if np.isnan(x).any() or np.isnan(y).any():
        return math.nan
    if (x == x[0]).all() or (y == y[0]).all():
        return 0.0
    return reference_ccc(x, y)


_RNG = np.random.default_rng(3)
_TARGET = _RNG.normal(size=40)
CASES = {
    "random": (0.6 * _TARGET + _RNG.normal(0.2, 0.5, size=40), _TARGET),
    "constant prediction": (np.full(40, 0.1), _TARGET),
    "constant target": (_TARGET, np.full(40, 0.1)),
    "both constant, equal": (np.full(40, 0.1), np.full(40, 0.1)),
    "both constant, apart": (np.full(40, 0.1), np.full(40, 0.3)),
    "one item": (np.array([0.4]), np.array([0.9])),
    "one item, equal": (np.array([0.4]), np.array([0.4])),
    "a NaN prediction": (np.where(np.arange(40) == 5, np.nan, _TARGET), _TARGET),
    "a NaN target beside a constant": (np.full(40, 0.1), np.where(np.arange(40) == 5, np.nan, _TARGET)),
}


def _implementations(prediction: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Every CCC audioml computes: the NumPy statistics, the torch metric and loss (in float32)
    and the sums-based CCC of the paired bootstrap."""
    paired = paired_regression(target, prediction, prediction, np.arange(len(target)), metrics=["ccc"],
                               bootstrap_samples=0, permutations=0)[0]
    return {"numpy": float(concordance_cc(prediction, target)),
            "regression_point": regression_point(prediction, target)["ccc"],
            "torch": float(torch_ccc(torch.from_numpy(prediction), torch.from_numpy(target))),
            "loss": 1.0 - float(CCCLoss()(torch.from_numpy(prediction)[:, None], torch.from_numpy(target)[:, None])),
            "paired": paired.a}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_ccc_keeps_one_contract(case):
    prediction, target = CASES[case]
    expected = contract_ccc(prediction, target)
    for name, value in _implementations(prediction, target).items():
        if math.isnan(expected):
            assert math.isnan(value), (name, value)
        else:
            assert value == pytest.approx(expected, abs=1e-6 if name in ("torch", "loss") else 1e-12), (name, value)


def test_no_items_is_refused_and_a_constant_prediction_still_has_a_gradient():
    with pytest.raises(ValueError, match="no items"):
        concordance_cc(np.zeros(0), np.zeros(0))
    prediction = torch.full((10,), 0.1, requires_grad=True)  # a collapsed regressor can still learn
    torch_ccc(prediction, torch.linspace(-1, 1, 10)).backward()
    assert prediction.grad.abs().sum() > 0
