"""Batched Kaldi filterbank features (``torchaudio.compliance.kaldi.fbank``), AST's contract."""

from __future__ import annotations

import math

import torch
from torch import nn

from audioml.features.kaldi_mel import kaldi_mel_basis
from audioml.features.sizes import check_spectral_sizes

__all__ = ["KaldiFbank"]

_WINDOWS = ("hanning", "povey", "hamming")


class KaldiFbank(nn.Module):
    """Waveform ``(batch, time)`` -> Kaldi log filterbank ``(batch, 1, n_mels, frames)``.

    Numerically equal (float32 rounding aside) to ``torchaudio.compliance.kaldi.fbank`` applied
    to each clip with ``dither=0``, ``snip_edges=True``, ``remove_dc_offset=True``,
    ``round_to_power_of_two=True``, ``use_power=True``, ``use_energy=False`` and the given
    window, pre-emphasis and band edges, but batched and with its window and filters as buffers.
    Frames: ``1 + (time - frame_length) // frame_shift``.

    Then, for the Audio Spectrogram Transformer (HF ``ASTFeatureExtractor``): zero-pad or crop
    to ``target_frames`` (``None``: keep all) and normalise ``(x - mean) / std``
    (AST AudioSet: mean -4.2677393, std 2 x 4.5689974).

    Args:
        sample_rate: input rate in Hz.
        n_mels: mel bands; low_freq / high_freq their edges (``high_freq <= 0`` counts from Nyquist).
        frame_length_ms, frame_shift_ms: frame length and step.
        window: ``"hanning"`` (AST), ``"povey"`` (Kaldi default) or ``"hamming"``.
        preemphasis: per-frame pre-emphasis coefficient.
    Raises ``ValueError`` for clips shorter than one frame.
    """

    def __init__(self, sample_rate: int = 16000, n_mels: int = 128, frame_length_ms: float = 25.0,
                 frame_shift_ms: float = 10.0, window: str = "hanning", low_freq: float = 20.0,
                 high_freq: float = 0.0, preemphasis: float = 0.97, target_frames: int | None = 1024,
                 mean: float = 0.0, std: float = 1.0) -> None:
        super().__init__()
        if window not in _WINDOWS:
            raise ValueError(f"window={window!r}: use one of {_WINDOWS}")
        if std <= 0:
            raise ValueError(f"std={std} must be positive")
        self.sample_rate = int(sample_rate)
        self.n_mels = int(n_mels)
        self.frame_length = int(sample_rate * frame_length_ms * 0.001)
        self.frame_shift = int(sample_rate * frame_shift_ms * 0.001)
        if self.frame_length < 1 or self.frame_shift < 1:
            raise ValueError(f"frame_length_ms={frame_length_ms}, frame_shift_ms={frame_shift_ms} at {sample_rate} Hz: "
                             "frames must hold at least one sample")
        self.n_fft = 2 ** math.ceil(math.log2(self.frame_length))
        check_spectral_sizes(sample_rate, self.n_fft, self.frame_shift, self.n_mels, self.frame_length)
        if target_frames is not None and not 1 <= int(target_frames) <= 100_000:
            raise ValueError(f"target_frames={target_frames}: use 1 to 100000 frames, or null")
        self.preemphasis = float(preemphasis)
        self.target_frames = None if target_frames is None else int(target_frames)
        self.mean = float(mean)
        self.std = float(std)
        if window == "hamming":
            frame_window = torch.hamming_window(self.frame_length, periodic=False, alpha=0.54, beta=0.46)
        else:
            frame_window = torch.hann_window(self.frame_length, periodic=False, dtype=torch.float64)
            frame_window = (frame_window.pow(0.85) if window == "povey" else frame_window).float()
        self.register_buffer("window", frame_window, persistent=False)
        upper = high_freq if high_freq > 0 else sample_rate / 2 + high_freq
        self.register_buffer("mel_basis", kaldi_mel_basis(self.n_mels, self.n_fft, self.sample_rate,
                                                          low_freq, upper), persistent=False)

    def frames(self, num_samples: int) -> int:
        """Frames before padding/cropping to ``target_frames``."""
        return max(0, 1 + (num_samples - self.frame_length) // self.frame_shift)

    def fbank(self, waveform: torch.Tensor) -> torch.Tensor:
        """``(batch, time)`` -> log filterbank ``(batch, frames, n_mels)`` (Kaldi layout)."""
        if waveform.shape[-1] < self.frame_length:
            raise ValueError(f"Kaldi fbank needs at least {self.frame_length} samples; got {waveform.shape[-1]}")
        frames = waveform.float().unfold(-1, self.frame_length, self.frame_shift)
        frames = frames - frames.mean(dim=-1, keepdim=True)
        if self.preemphasis:
            previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
            frames = frames - self.preemphasis * previous
        power = torch.fft.rfft(frames * self.window, n=self.n_fft).abs().pow(2.0)
        mel = torch.matmul(power, self.mel_basis.T)
        return torch.clamp(mel, min=torch.finfo(torch.float32).eps).log()

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() == 3:
            waveform = waveform.squeeze(1)
        features = self.fbank(waveform)
        if self.target_frames is not None:
            missing = self.target_frames - features.shape[1]
            features = (nn.functional.pad(features, (0, 0, 0, missing)) if missing > 0
                        else features[:, : self.target_frames])
        features = (features - self.mean) / self.std
        return features.transpose(1, 2).unsqueeze(1)
