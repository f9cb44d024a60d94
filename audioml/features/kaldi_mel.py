"""Pre-emphasised STFT with Kaldi-style mel filters: EfficientAT's input contract."""

from __future__ import annotations

import torch
from torch import nn

from audioml.features.sizes import check_spectral_sizes
from audioml.features.torchaudio_pair import require_torchaudio

__all__ = ["KaldiMelSpectrogram", "kaldi_mel_basis"]


def kaldi_mel_basis(n_mels: int, n_fft: int, sample_rate: int, f_min: float, f_max: float) -> torch.Tensor:
    """Kaldi triangular mel filters ``(n_mels, n_fft // 2 + 1)``.

    ``torchaudio.compliance.kaldi.get_mel_banks`` covers the first ``n_fft // 2`` FFT bins; the
    Nyquist bin gets a zero column, as in EfficientAT's front end. Raises ``ValueError`` for
    band edges outside ``[0, Nyquist]``, ``TorchaudioMismatch`` when torchaudio does not load with
    the installed torch.
    """
    require_torchaudio()
    from torchaudio.compliance.kaldi import get_mel_banks

    if not 0.0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"mel band edges f_min={f_min}, f_max={f_max} must satisfy "
                         f"0 <= f_min < f_max <= {sample_rate / 2} (Nyquist)")
    banks, _ = get_mel_banks(n_mels, n_fft, float(sample_rate), float(f_min), float(f_max),
                             100.0, -500.0, 1.0)
    return nn.functional.pad(banks.float(), (0, 1))


class KaldiMelSpectrogram(nn.Module):
    """Waveform ``(batch, time)`` -> normalised log-mel ``(batch, 1, n_mels, frames)``.

    Steps (EfficientAT's ``AugmentMelSTFT`` at evaluation): pre-emphasis
    ``y[t] = x[t + 1] - preemphasis * x[t]`` (one sample shorter, no padding); STFT with a
    symmetric Hann window of ``win_length`` centred in ``n_fft`` (``center=True``, reflect
    padding); power spectrum; Kaldi mel filters between ``f_min`` and ``f_max`` Hz;
    ``log(mel + log_offset)``; ``(x + shift) / scale``. ``frames = 1 + (time - 1) // hop_length``.

    Window, filters and the pre-emphasis kernel are buffers (they follow the module's device).

    Args:
        sample_rate: input rate in Hz (the data side resamples to it).
        n_fft, win_length, hop_length: STFT sizes in samples.
        n_mels, f_min, f_max: mel filterbank; ``f_max`` in Hz (EfficientAT: 15000 at 32 kHz).
        preemphasis: pre-emphasis coefficient (0 disables it, keeping the full length).
        log_offset: added before the natural log.
        shift, scale: fixed normalisation ``(log_mel + shift) / scale``.
    """

    def __init__(self, sample_rate: int = 32000, n_fft: int = 1024, win_length: int = 800,
                 hop_length: int = 320, n_mels: int = 128, f_min: float = 0.0, f_max: float = 15000.0,
                 preemphasis: float = 0.97, log_offset: float = 1e-5, shift: float = 4.5,
                 scale: float = 5.0) -> None:
        super().__init__()
        check_spectral_sizes(sample_rate, n_fft, hop_length, n_mels, win_length)
        self.sample_rate = int(sample_rate)
        self.n_fft = int(n_fft)
        self.win_length = int(win_length)
        self.hop_length = int(hop_length)
        self.n_mels = int(n_mels)
        self.log_offset = float(log_offset)
        self.shift = float(shift)
        self.scale = float(scale)
        self.preemphasis = float(preemphasis)
        self.register_buffer("preemphasis_kernel", torch.tensor([[[-self.preemphasis, 1.0]]]),
                             persistent=False)
        self.register_buffer("window", torch.hann_window(self.win_length, periodic=False), persistent=False)
        self.register_buffer("mel_basis", kaldi_mel_basis(self.n_mels, self.n_fft, self.sample_rate,
                                                          f_min, f_max), persistent=False)

    def frames(self, num_samples: int) -> int:
        """Number of output frames for an input of ``num_samples``."""
        length = num_samples - 1 if self.preemphasis else num_samples
        return 1 + length // self.hop_length

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() == 3:  # (batch, 1, time)
            waveform = waveform.squeeze(1)
        x = waveform.float()
        if self.preemphasis:
            x = nn.functional.conv1d(x.unsqueeze(1), self.preemphasis_kernel).squeeze(1)
        spec = torch.stft(x, self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
                          window=self.window, center=True, pad_mode="reflect", return_complex=True)
        power = spec.real.square() + spec.imag.square()
        mel = torch.matmul(self.mel_basis, power)
        return ((torch.log(mel + self.log_offset) + self.shift) / self.scale).unsqueeze(1)
