"""Pretrained models' front ends against trusted references: AST against transformers'
``ASTFeatureExtractor`` and torchaudio's Kaldi fbank, PANNs against librosa, EfficientAT against
a NumPy transcription of its contract; VGGish's mel weights and framing by their definition."""

from __future__ import annotations

import math

import librosa
import numpy as np
import pytest
import torch
import torchaudio.compliance.kaldi as kaldi
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from audioml.config import CONFIG_DIR
from audioml.features.kaldi_fbank import KaldiFbank
from audioml.features.kaldi_mel import KaldiMelSpectrogram
from audioml.features.panns_logmel import PannsLogMel
from audioml.features.vggish_frontend import VGGishLogMel, hertz_to_mel, vggish_mel_matrix
from audioml.models.pretrained import get_pretrained_cfg


def noisy_tones(batch: int, seconds: float, sample_rate: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    time = np.arange(int(seconds * sample_rate)) / sample_rate
    clips = [0.3 * np.sin(2 * np.pi * rng.uniform(200, 3000) * time) + rng.normal(0, 0.05, time.size)
             for _ in range(batch)]
    return torch.from_numpy(np.stack(clips).astype(np.float32))


def yaml_frontend(model: str):
    """The front end ``model=<model>`` runs: its own, or (``frontend: null``) its weights record's."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        model_cfg = compose("train", overrides=[f"model={model}"]).model
    if model_cfg.frontend is not None:
        return instantiate(model_cfg.frontend)
    return get_pretrained_cfg(model_cfg.backbone.weights).build_frontend()


@pytest.mark.parametrize("window", ["hanning", "povey", "hamming"])
def test_kaldi_fbank_equals_torchaudio(window: str) -> None:
    waveform = noisy_tones(3, 1.3, 16000)
    ours = KaldiFbank(window=window, target_frames=None)(waveform)[:, 0].transpose(1, 2)
    reference = torch.stack([kaldi.fbank(clip[None], sample_frequency=16000, num_mel_bins=128, window_type=window,
                                         dither=0.0, frame_shift=10, use_energy=False, htk_compat=True)
                             for clip in waveform])
    assert ours.shape == reference.shape
    assert torch.allclose(ours, reference, atol=2e-3)


def test_ast_front_end_equals_hf_feature_extractor() -> None:
    from transformers import ASTFeatureExtractor

    waveform = noisy_tones(2, 3.0, 16000, seed=1)
    ours = yaml_frontend("ast")(waveform)                          # (batch, 1, 128, 1024)
    extractor = ASTFeatureExtractor()
    reference = extractor([clip.numpy() for clip in waveform], sampling_rate=16000,
                          return_tensors="pt")["input_values"]     # (batch, 1024, 128)
    assert ours.shape == (2, 1, 128, 1024)
    assert torch.allclose(ours[:, 0].transpose(1, 2), reference, atol=1e-3)


def test_panns_front_end_equals_librosa() -> None:
    waveform = noisy_tones(2, 1.0, 32000, seed=2)
    frontend = PannsLogMel()
    ours = frontend(waveform)[:, 0].numpy()
    for clip, mel in zip(waveform.numpy(), ours):
        power = librosa.feature.melspectrogram(y=clip, sr=32000, n_fft=1024, hop_length=320, win_length=1024,
                                               window="hann", center=True, pad_mode="reflect", power=2.0,
                                               n_mels=64, fmin=50, fmax=14000)
        reference = librosa.power_to_db(power, ref=1.0, amin=1e-10, top_db=None)
        assert mel.shape == reference.shape
        assert np.allclose(mel, reference, atol=2e-3)
    with pytest.raises(ValueError, match="samples"):
        frontend(torch.zeros(1, 300))


def test_efficientat_front_end_equals_numpy_transcription() -> None:
    waveform = noisy_tones(2, 1.0, 32000, seed=3)
    frontend = yaml_frontend("efficientat_mn04")
    assert isinstance(frontend, KaldiMelSpectrogram)
    ours = frontend(waveform)[:, 0].numpy()
    banks, _ = kaldi.get_mel_banks(128, 1024, 32000.0, 0.0, 15000.0, 100.0, -500.0, 1.0)
    banks = np.pad(banks.numpy(), ((0, 0), (0, 1)))
    window = np.zeros(1024)
    window[112:912] = np.hanning(800)                   # symmetric Hann, centred in n_fft
    for clip, mel in zip(waveform.numpy().astype(np.float64), ours):
        emphasised = clip[1:] - 0.97 * clip[:-1]
        padded = np.pad(emphasised, 512, mode="reflect")
        count = 1 + len(emphasised) // 320
        frames = np.stack([padded[i * 320: i * 320 + 1024] for i in range(count)])
        power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
        reference = (np.log(banks @ power.T + 1e-5) + 4.5) / 5.0
        assert mel.shape == reference.shape == (128, frontend.frames(clip.size))
        assert np.allclose(mel, reference, atol=1e-3)


def test_vggish_front_end_by_definition() -> None:
    frontend = VGGishLogMel()
    assert (frontend.win_length, frontend.hop_length, frontend.n_fft) == (400, 160, 512)
    weights = vggish_mel_matrix(257, 16000)
    assert weights.shape == (64, 257) and torch.all(weights[:, 0] == 0) and torch.all(weights.sum(dim=1) > 0)
    edges = np.linspace(1127 * math.log1p(125 / 700), 1127 * math.log1p(7500 / 700), 66)
    # Each band peaks at the FFT bin nearest (in mel) to its centre, with weight <= 1.
    bins_mel = hertz_to_mel(torch.linspace(0, 8000, 257, dtype=torch.float64)).numpy()
    for band in (0, 20, 63):
        peak = int(weights[band].argmax())
        assert abs(bins_mel[peak] - edges[band + 1]) <= np.abs(bins_mel - edges[band + 1]).min() + 1e-6
        assert float(weights[band].max()) <= 1.0
    time = np.arange(16000) / 16000
    tone = torch.from_numpy((0.5 * np.sin(2 * np.pi * 1000 * time)).astype(np.float32))[None]
    spec = frontend(tone)
    assert spec.shape == (1, 1, 64, 1 + (16000 - 400) // 160)
    centre_band = int(np.argmin(np.abs(edges[1:-1] - 1127 * math.log1p(1000 / 700))))
    assert abs(int(spec[0, 0].mean(dim=1).argmax()) - centre_band) <= 1
    silence = frontend(torch.zeros(1, 1600))
    assert torch.allclose(silence, torch.full_like(silence, math.log(0.01)))
