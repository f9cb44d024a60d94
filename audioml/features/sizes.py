"""Sane ranges of a spectral front end's sizes, checked before any window or filterbank is built
(a setting from a command line typo, or from a checkpoint record, must not allocate without bound)."""

from __future__ import annotations

__all__ = ["check_spectral_sizes", "MAX_SAMPLE_RATE", "MAX_FFT", "MAX_MELS"]

MAX_SAMPLE_RATE = 768_000
MAX_FFT = 65_536
MAX_MELS = 1_024


def check_spectral_sizes(sample_rate: float, n_fft: int, hop_length: int, n_mels: int,
                         win_length: int | None = None) -> None:
    """Raise ``ValueError`` naming the setting that is out of range: ``sample_rate`` 1 kHz to
    768 kHz, ``n_fft`` 8 to 65,536 samples, ``hop_length`` and ``win_length`` 1 to ``n_fft``
    (the hop at most 65,536), ``n_mels`` 1 to 1,024."""
    checks = [("sample_rate", sample_rate, 1_000, MAX_SAMPLE_RATE, "Hz, e.g. 16000"),
              ("n_fft", n_fft, 8, MAX_FFT, "samples, e.g. 1024"),
              ("hop_length", hop_length, 1, MAX_FFT, "samples, e.g. 256"),
              ("n_mels", n_mels, 1, MAX_MELS, "bands, e.g. 64")]
    if win_length is not None:
        checks.append(("win_length", win_length, 1, n_fft, f"samples, at most n_fft={n_fft}"))
    for name, value, low, high, unit in checks:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ValueError(f"features.{name}={value!r}: use {low} to {high} {unit}")
