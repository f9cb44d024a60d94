"""Temperature scaling of a tested classifier (``evaluation.temperature_scaling=true``): one
temperature ``T`` dividing the logits, fitted by minimum negative log-likelihood on the
validation split (never on the test split), applied to the test probabilities the run reports
and written into the tested checkpoint's model record (``temperature``, a plain float), so
``audioml-eval``, ``audioml-predict``, ``audioml-export`` and the MLflow model answer with it.
The predicted classes do not change, so neither does any metric of the confusion matrix.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from audioml.files import atomic_write_bytes
from audioml.run.use.checkpoint import RECORD_KEY
from audioml.stats.calibration import TEMPERATURE_RANGE, apply_temperature, fit_temperature, negative_log_likelihood

log = logging.getLogger(__name__)

__all__ = ["TemperatureFit", "validation_probabilities", "temperature_scale", "write_temperature"]


@dataclass(frozen=True)
class TemperatureFit:
    """A fitted temperature and the validation NLL before and after it, on ``items`` clips."""

    temperature: float
    val_nll_before: float
    val_nll_after: float
    items: int

    def metrics(self) -> dict[str, float]:
        """``calibration/temperature``, ``calibration/val_nll_before``, ``calibration/val_nll_after``."""
        return {"calibration/temperature": self.temperature, "calibration/val_nll_before": self.val_nll_before,
                "calibration/val_nll_after": self.val_nll_after}


@torch.no_grad()
def validation_probabilities(model: torch.nn.Module, loader) -> tuple[np.ndarray, np.ndarray]:
    """``(softmax of the logits (n, C), true class ids (n,))`` of a loader's batches, in eval
    mode on the model's device, without any temperature."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    probabilities, targets = [], []
    for waveform, target in loader:
        logits = model(waveform.to(device)).float()
        probabilities.append(logits.softmax(dim=1).cpu())
        targets.append(target.argmax(dim=1) if target.dim() == 2 else target)
    model.train(was_training)
    if not probabilities:
        return np.zeros((0, 0)), np.zeros(0, dtype=np.int64)
    return torch.cat(probabilities).double().numpy(), torch.cat(targets).numpy().astype(np.int64)


def temperature_scale(model, datamodule, checkpoint: Path | None, record: dict) -> TemperatureFit | None:
    """Fit the temperature of ``model`` (an ``AudioClassifier`` holding the tested weights) on
    ``datamodule``'s validation split, ``model.calibrate`` with it, set ``record["temperature"]``
    and write it into ``checkpoint``'s record (the tested checkpoint; ``None``: no file).
    ``None`` with a warning when the validation split is empty (the run's numbers stand unscaled)."""
    probabilities, targets = validation_probabilities(model, datamodule.val_dataloader())
    if not len(targets):
        log.warning("evaluation.temperature_scaling: the validation split is empty, so no temperature is fitted "
                    "(the test split is never used for it); give the data a validation split (val_fraction)")
        return None
    temperature = fit_temperature(probabilities, targets)
    if not TEMPERATURE_RANGE[0] * 1.01 < temperature < TEMPERATURE_RANGE[1] * 0.99:
        log.warning("temperature scaling: T=%.3g is at the end of the range searched (%g-%g): on validation the "
                    "model's probabilities are %s; it needs more training, which a temperature cannot replace",
                    temperature, *TEMPERATURE_RANGE, "no better than uniform" if temperature > 1 else "far too unsure")
    fit = TemperatureFit(temperature, negative_log_likelihood(probabilities, targets),
                         negative_log_likelihood(apply_temperature(probabilities, temperature), targets), len(targets))
    model.calibrate(temperature)
    record["temperature"] = temperature
    if checkpoint is not None and checkpoint.is_file():
        write_temperature(checkpoint, temperature)
    log.info("temperature scaling: T=%.3f fitted on %d validation clips (NLL %.4f -> %.4f)%s", temperature, fit.items,
             fit.val_nll_before, fit.val_nll_after, f"; recorded in {checkpoint.name}" if checkpoint else "")
    return fit


def write_temperature(checkpoint: Path, temperature: float) -> None:
    """Set ``temperature`` in the model record of ``checkpoint`` (rewritten atomically; read
    with ``weights_only=True``, as every checkpoint is)."""
    content = torch.load(checkpoint, map_location="cpu", weights_only=True)
    content[RECORD_KEY]["temperature"] = float(temperature)
    buffer = io.BytesIO()
    torch.save(content, buffer)
    atomic_write_bytes(checkpoint, buffer.getvalue())
