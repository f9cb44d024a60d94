"""The one CCC definition (``audioml.stats.concordance_cc``) on NumPy arrays and torch tensors,
against the textbook formula through NumPy's own correlation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audioml.metrics import concordance_cc as torch_ccc
from audioml.stats import concordance_cc, regression_point


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
