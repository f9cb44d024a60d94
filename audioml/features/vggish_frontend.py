"""VGGish's input contract: 64-band log-mel (125-7500 Hz) of 25 ms frames every 10 ms."""

from __future__ import annotations

import math

import torch
from torch import nn

from audioml.features.sizes import check_spectral_sizes

__all__ = ["VGGishLogMel", "vggish_mel_matrix", "hertz_to_mel"]


def hertz_to_mel(frequency: torch.Tensor) -> torch.Tensor:
    """HTK mel scale ``1127 ln(1 + f / 700)``."""
    return 1127.0 * torch.log1p(frequency / 700.0)


def vggish_mel_matrix(num_spectrogram_bins: int, sample_rate: int, num_mel_bins: int = 64,
                      lower_hz: float = 125.0, upper_hz: float = 7500.0) -> torch.Tensor:
    """Mel weights ``(num_mel_bins, num_spectrogram_bins)`` as in VGGish's ``mel_features``.

    Triangles are linear in **mel** (not Hz): band edges are equally spaced on the HTK mel
    scale between ``lower_hz`` and ``upper_hz``, each FFT bin weighted by its mel distance to
    the edges; the DC bin gets no weight. Raises ``ValueError`` for edges outside ``(0, Nyquist]``.
    """
    nyquist = sample_rate / 2.0
    if not 0.0 <= lower_hz < upper_hz <= nyquist:
        raise ValueError(f"mel edges {lower_hz}-{upper_hz} Hz must lie in [0, {nyquist}] (Nyquist)")
    bins_mel = hertz_to_mel(torch.linspace(0.0, nyquist, num_spectrogram_bins, dtype=torch.float64, device="cpu"))
    edges = torch.linspace(float(hertz_to_mel(torch.tensor(lower_hz, dtype=torch.float64, device="cpu"))),
                           float(hertz_to_mel(torch.tensor(upper_hz, dtype=torch.float64, device="cpu"))),
                           num_mel_bins + 2, dtype=torch.float64, device="cpu")
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins_mel[None] - lower) / (center - lower)
    falling = (upper - bins_mel[None]) / (upper - center)
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)
    weights[:, 0] = 0.0
    return weights.float()


class VGGishLogMel(nn.Module):
    """Waveform ``(batch, time)`` at 16 kHz -> ``log(mel + 0.01)`` ``(batch, 1, 64, frames)``.

    Frames of ``window_seconds`` (25 ms = 400 samples) every ``hop_seconds`` (10 ms), no
    padding (``frames = 1 + (time - 400) // 160``), periodic Hann window, magnitude of a
    512-point FFT, VGGish mel weights. The backbone cuts the frames into 0.96 s examples
    (96 frames x 64 bands). Raises ``ValueError`` for clips shorter than one window.

    Args:
        sample_rate: input rate in Hz (VGGish: 16000).
        n_mels, f_min, f_max: mel bands and edges in Hz.
        window_seconds, hop_seconds: frame length and step.
        log_offset: added to the mel magnitude before the natural log.
    """

    def __init__(self, sample_rate: int = 16000, n_mels: int = 64, f_min: float = 125.0, f_max: float = 7500.0,
                 window_seconds: float = 0.025, hop_seconds: float = 0.010, log_offset: float = 0.01) -> None:
        super().__init__()
        self.sample_rate = int(sample_rate)
        self.n_mels = int(n_mels)
        self.win_length = int(round(window_seconds * sample_rate))
        self.hop_length = int(round(hop_seconds * sample_rate))
        if self.win_length < 1 or self.hop_length < 1:
            raise ValueError(f"window_seconds={window_seconds}, hop_seconds={hop_seconds} at {sample_rate} Hz: "
                             "frames must hold at least one sample")
        self.n_fft = 2 ** math.ceil(math.log2(self.win_length))
        check_spectral_sizes(sample_rate, self.n_fft, self.hop_length, self.n_mels, self.win_length)
        self.log_offset = float(log_offset)
        self.register_buffer("window", torch.hann_window(self.win_length, periodic=True), persistent=False)
        self.register_buffer("mel_basis", vggish_mel_matrix(self.n_fft // 2 + 1, self.sample_rate, self.n_mels,
                                                            f_min, f_max), persistent=False)

    def frames(self, num_samples: int) -> int:
        """Number of output frames for an input of ``num_samples`` (0 when shorter than a window)."""
        return max(0, 1 + (num_samples - self.win_length) // self.hop_length)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() == 3:
            waveform = waveform.squeeze(1)
        if waveform.shape[-1] < self.win_length:
            raise ValueError(f"VGGish front end needs at least {self.win_length} samples; got {waveform.shape[-1]}")
        frames = waveform.float().unfold(-1, self.win_length, self.hop_length) * self.window
        magnitude = torch.fft.rfft(frames, n=self.n_fft).abs()          # (batch, frames, bins)
        mel = torch.matmul(magnitude, self.mel_basis.T)                  # (batch, frames, n_mels)
        return torch.log(mel + self.log_offset).transpose(1, 2).unsqueeze(1)
