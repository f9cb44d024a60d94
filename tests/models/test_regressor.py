"""CCC metric and losses against NumPy formulas; the sequence regressor's contract; and the
CRNN-attention model learning a generated MuSe-like signal (valence drives a tone's loudness
and pitch) with 1 - CCC in a short real Lightning run."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch.utils.data import DataLoader, TensorDataset

from audioml.config import CONFIG_DIR
from audioml.features import LogMel
from audioml.losses import CCCLoss, CrossEntropyLoss, MSELoss
from audioml.metrics import concordance_cc, regression_metrics
from audioml.models.regressor import SequenceRegressor
from audioml.run.fit.compose import build_model

SAMPLE_RATE = 16000
WINDOW = 8000                # 0.5 s, the MuSe label step
WINDOWS = 8


def numpy_ccc(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x.astype(np.float64), y.astype(np.float64)
    covariance = np.mean((x - x.mean()) * (y - y.mean()))
    return 2 * covariance / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)


def test_ccc_matches_numpy_formula() -> None:
    rng = np.random.default_rng(0)
    target = rng.normal(size=(200, 2))
    prediction = 0.7 * target + rng.normal(0.3, 0.5, size=(200, 2))
    ours = concordance_cc(torch.from_numpy(prediction), torch.from_numpy(target), dim=0)
    for column in range(2):
        assert ours[column].item() == pytest.approx(numpy_ccc(prediction[:, column], target[:, column]), abs=1e-5)
    series = torch.linspace(-1, 1, 50)
    assert concordance_cc(series, series).item() == pytest.approx(1.0, abs=1e-6)
    assert concordance_cc(-series, series).item() == pytest.approx(-1.0, abs=1e-6)
    assert concordance_cc(series + 0.5, series).item() < 1.0  # a bias is penalised, unlike Pearson
    with pytest.raises(ValueError, match="shape"):
        concordance_cc(series, series[:10])


def test_regression_losses_and_metrics() -> None:
    rng = np.random.default_rng(1)
    target = torch.from_numpy(rng.normal(size=(4, 10, 2)).astype(np.float32))
    prediction = (target * 0.5 + 0.1).requires_grad_(True)
    loss = CCCLoss(class_counts=None)(prediction, target)
    flat_p, flat_t = prediction.detach().reshape(-1, 2).numpy(), target.reshape(-1, 2).numpy()
    expected = 1 - np.mean([numpy_ccc(flat_p[:, i], flat_t[:, i]) for i in range(2)])
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    loss.backward()
    assert torch.isfinite(prediction.grad).all() and prediction.grad.abs().sum() > 0
    assert MSELoss()(prediction, target).item() == pytest.approx(float(np.mean((flat_p - flat_t) ** 2)), rel=1e-5)
    metrics = regression_metrics(prediction, target, ["valence", "arousal"])
    assert set(metrics) == {f"{m}{s}" for m in ("ccc", "mse", "mae") for s in ("", "_valence", "_arousal")}
    assert metrics["mae_arousal"] == pytest.approx(float(np.mean(np.abs(flat_p[:, 1] - flat_t[:, 1]))), rel=1e-5)
    assert metrics["ccc"] == pytest.approx(1 - expected, abs=1e-5)


def compose_crnn(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=["model=crnn_attention", "loss=ccc", f"paths.output_dir={tmp_path}",
                                           "model.frontend.n_mels=32", "model.frontend.n_fft=512", *overrides])


def valence_sequences(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` sequences of WINDOWS windows: a smooth valence curve in [-0.9, 0.9] per
    sequence; each window is a tone whose loudness and pitch rise with valence, in noise."""
    rng = np.random.default_rng(seed)
    time = np.arange(WINDOW) / SAMPLE_RATE
    waves = np.zeros((count, WINDOWS, WINDOW), dtype=np.float32)
    valence = np.zeros((count, WINDOWS, 1), dtype=np.float32)
    for item in range(count):
        phase, speed = rng.uniform(0, 2 * math.pi), rng.uniform(0.3, 0.9)
        for step in range(WINDOWS):
            value = 0.9 * math.sin(phase + speed * step)
            valence[item, step, 0] = value
            frequency = 400.0 * 2 ** value
            gain = 0.02 + 0.15 * (value + 1)
            waves[item, step] = gain * np.sin(2 * math.pi * frequency * time + rng.uniform(0, 6.3)) \
                + rng.normal(0, 0.01, WINDOW)
    return torch.from_numpy(waves), torch.from_numpy(valence)


class SequenceData(L.LightningDataModule):
    def __init__(self, train, val, batch_size: int = 8) -> None:
        super().__init__()
        self.train, self.val, self.batch_size = train, val, batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(*self.train), batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(*self.val), batch_size=self.batch_size)


def test_crnn_attention_learns_valence(tmp_path: Path) -> None:
    L.seed_everything(0)
    train, val = valence_sequences(32, seed=0), valence_sequences(16, seed=1)
    # Normalisation statistics of the training split only, as the MuSe DataModule provides.
    frontend = LogMel(sample_rate=SAMPLE_RATE, n_mels=32, n_fft=512, hop_length=256)
    with torch.no_grad():
        mel = frontend(train[0].flatten(0, 1)).squeeze(1)
    stats = {"feature_mean": mel.mean(dim=(0, 2)), "feature_std": mel.std(dim=(0, 2))}
    cfg = compose_crnn(tmp_path, "model.optimizer.lr=3e-3")
    model = build_model(cfg, ["valence"])
    model.fit_feature_statistics(train[0].flatten(0, 1).split(64))
    assert torch.allclose(model.feature_mean, stats["feature_mean"], atol=1e-4)  # buffers, saved in checkpoints
    assert "feature_mean" in model.state_dict()
    trainer = L.Trainer(max_epochs=5, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=SequenceData(train, val))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert metrics["val/ccc"] > 0.5, metrics
    assert metrics["val/ccc_valence"] == pytest.approx(metrics["val/ccc"])
    assert {"val/mse", "val/mae", "train/loss", "val/loss"} <= set(metrics)
    model.eval()
    with torch.no_grad():
        features = model.deep_features(val[0][:2])
    assert features.shape == (2, WINDOWS, 512)
    assert model.backbone.last_attention.shape == (2, WINDOWS)


def test_regressor_contract(tmp_path: Path) -> None:
    cfg = compose_crnn(tmp_path, "model.output=per_sequence")
    model = build_model(cfg, ["valence", "arousal"]).eval()
    waveform, valence = valence_sequences(3, seed=2)
    with torch.no_grad():
        assert model(waveform).shape == (3, 2)
    target = torch.cat([valence, -valence], dim=-1)
    assert model._align(model(waveform), target).shape == (3, 2)  # last window's targets
    with pytest.raises(ValueError, match="classification loss"):
        SequenceRegressor(model.backbone, model.frontend, 1, loss=CrossEntropyLoss())
    with pytest.raises(ValueError, match="mixup"):
        SequenceRegressor(model.backbone, model.frontend, 1, mixup=torch.nn.Identity())
    with pytest.raises(ValueError, match="positive"):
        SequenceRegressor(model.backbone, model.frontend, 1, feature_std=torch.zeros(32))
    with pytest.raises(ValueError, match="windows"):
        model(waveform[0])
