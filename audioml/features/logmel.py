"""Log-mel spectrogram front end, numerically equal to ``librosa.feature.melspectrogram``; optionally
the spectrogram as a fixed-size image scaled to [0, 1] (``features=logmel_image``)."""

from __future__ import annotations

from collections.abc import Sequence

import librosa
import torch
from torch import nn

from audioml.features.sizes import check_spectral_sizes

__all__ = ["LogMel"]


class LogMel(nn.Module):
    """Waveform ``(batch, time)`` -> log-mel ``(batch, 1, n_mels, frames)``, or
    ``(batch, 1, height, width)`` with ``image_size``.

    STFT (Hann window, ``center=True``, zero padding) and a Slaney mel filterbank as librosa's
    defaults, so before the log the output equals ``librosa.feature.melspectrogram`` with the
    same arguments. Window and filterbank are buffers: they move with the module to the device.

    Args:
        sample_rate: input rate in Hz; the data side resamples to it.
        n_fft, win_length, hop_length: STFT sizes in samples (``win_length`` defaults to n_fft).
        n_mels, f_min, f_max: mel filterbank (``f_max`` defaults to Nyquist).
        power: 2.0 power spectrogram, 1.0 magnitude.
        log: ``"log"`` (natural log of ``mel + log_offset``), ``"db"`` (10 log10, clamped at
            ``log_offset``; ``top_db`` optional), or ``"none"``.
        normalize: ``"none"``, ``"instance"`` (each clip to zero mean, unit variance),
            ``"global"`` (``(x - mean) / std`` with the given constants) or ``"minmax"`` (each
            clip to [0, 1]: ``(x - min) / (max - min)``, a constant clip to 0).
        mean, std: constants for ``normalize="global"``.
        htk: HTK mel scale instead of Slaney.
        image_size: ``(height, width)``: after the log, resize the spectrogram to this size
            (bilinear, half-pixel centres: ``interpolate(align_corners=False)``, no antialiasing),
            before ``normalize``; ``None`` keeps ``(n_mels, frames)``.
    """

    def __init__(self, sample_rate: int = 16000, n_fft: int = 1024, hop_length: int = 256,
                 win_length: int | None = None, n_mels: int = 64, f_min: float = 0.0,
                 f_max: float | None = None, power: float = 2.0, log: str = "log",
                 log_offset: float = 1e-6, top_db: float | None = None, normalize: str = "none",
                 mean: float = 0.0, std: float = 1.0, htk: bool = False,
                 image_size: Sequence[int] | None = None) -> None:
        super().__init__()
        if log not in ("log", "db", "none"):
            raise ValueError(f"features.log={log!r}: use 'log', 'db' or 'none'")
        if normalize not in ("none", "instance", "global", "minmax"):
            raise ValueError(f"features.normalize={normalize!r}: use 'none', 'instance', 'global' or 'minmax'")
        if image_size is not None and (len(image_size) != 2 or min(int(v) for v in image_size) < 1):
            raise ValueError(f"features.image_size={list(image_size)}: use [height, width] in pixels, or null")
        check_spectral_sizes(sample_rate, n_fft, hop_length, n_mels, win_length or n_fft)
        if image_size is not None and max(int(v) for v in image_size) > 4096:
            raise ValueError(f"features.image_size={list(image_size)}: at most 4096 pixels a side")
        if f_max is not None and f_max > sample_rate / 2:
            raise ValueError(f"features.f_max={f_max} is above Nyquist ({sample_rate / 2} Hz)")
        self.sample_rate = int(sample_rate)
        self.n_fft = int(n_fft)
        self.hop_length = int(hop_length)
        self.win_length = int(win_length or n_fft)
        self.n_mels = int(n_mels)
        self.power = float(power)
        self.log = log
        self.log_offset = float(log_offset)
        self.top_db = top_db
        self.normalize = normalize
        self.mean = float(mean)
        self.std = float(std)
        self.image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
        window = torch.hann_window(self.win_length, periodic=True)
        if self.win_length < self.n_fft:  # centre the window in the frame, as librosa does
            left = (self.n_fft - self.win_length) // 2
            window = nn.functional.pad(window, (left, self.n_fft - self.win_length - left))
        self.register_buffer("window", window, persistent=False)
        mel = librosa.filters.mel(sr=self.sample_rate, n_fft=self.n_fft, n_mels=self.n_mels,
                                  fmin=f_min, fmax=f_max, htk=htk)
        self.register_buffer("mel_basis", torch.from_numpy(mel).float(), persistent=False)

    def frames(self, num_samples: int) -> int:
        """Number of output frames (image width with ``image_size``) for ``num_samples``."""
        return self.image_size[1] if self.image_size else 1 + num_samples // self.hop_length

    def mel_power(self, waveform: torch.Tensor) -> torch.Tensor:
        """``(batch, time)`` -> mel power ``(batch, n_mels, frames)`` (before the log)."""
        spec = torch.stft(waveform.float(), n_fft=self.n_fft, hop_length=self.hop_length,
                          win_length=self.n_fft, window=self.window, center=True,
                          pad_mode="constant", return_complex=True)
        magnitude = spec.abs()
        if self.power != 1.0:
            magnitude = magnitude.pow(self.power)
        return torch.matmul(self.mel_basis, magnitude)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() == 3:  # (batch, 1, time)
            waveform = waveform.squeeze(1)
        mel = self.mel_power(waveform)
        if self.log == "log":
            mel = torch.log(mel + self.log_offset)
        elif self.log == "db":
            mel = 10.0 * torch.log10(torch.clamp(mel, min=self.log_offset))
            if self.top_db is not None:
                peak = mel.amax(dim=(-2, -1), keepdim=True)
                mel = torch.maximum(mel, peak - self.top_db)
        if self.image_size is not None:
            mel = nn.functional.interpolate(mel.unsqueeze(1), size=self.image_size, mode="bilinear",
                                            align_corners=False, antialias=False).squeeze(1)
        if self.normalize == "instance":
            mean = mel.mean(dim=(-2, -1), keepdim=True)
            std = mel.std(dim=(-2, -1), keepdim=True)
            mel = (mel - mean) / (std + 1e-5)
        elif self.normalize == "global":
            mel = (mel - self.mean) / self.std
        elif self.normalize == "minmax":
            low = mel.amin(dim=(-2, -1), keepdim=True)
            span = mel.amax(dim=(-2, -1), keepdim=True) - low
            mel = torch.where(span > 0, (mel - low) / span.clamp(min=1e-12), torch.zeros_like(mel))
        return mel.unsqueeze(1)
