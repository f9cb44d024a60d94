"""Waveform augmentations on batches ``(batch, time)`` float32, on the batch's device.

Gain, PolarityInversion, Shift and AddColoredNoise wrap torch-audiomentations. The rest are
written here: AddGaussianNoise, ClippingDistortion and a batched TimeStretch are not in that
library; its PitchShift runs example by example (about 10 s for 32 clips of 7 s on a CPU) and
its AddBackgroundNoise / ApplyImpulseResponse read files with ``torchaudio.info``, which
torchaudio 2.11 no longer has. Noise and impulse-response files are decoded once, at
construction, with ``audioml.data.audio.load_audio`` and kept as buffers on the device.

Every class is a ``RandomTransform``: each example is changed with probability ``p``, the others
are returned unchanged, and random draws come from torch's generator of the batch's device
(seeded per batch when used inside an ``AugmentationChain``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from audioml.augment.base import RandomTransform
from audioml.features.torchaudio_pair import require_torchaudio

__all__ = ["AddGaussianNoise", "ClippingDistortion", "TimeStretch", "PitchShift", "Gain",
           "PolarityInversion", "Shift", "AddColoredNoise", "AddBackgroundNoise",
           "ApplyImpulseResponse", "time_stretch", "pitch_shift"]

_AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aif", ".aiff", ".caf", ".3gp", ".opus"}


def _uniform(n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, device=device)


def _check_range(name: str, low: float, high: float) -> None:
    if low > high:
        raise ValueError(f"{name}: min {low} is larger than max {high}")


# ----------------------------------------------------------------------------- own transforms
class AddGaussianNoise(RandomTransform):
    """Add white Gaussian noise whose standard deviation is drawn uniformly from
    ``[min_amplitude, max_amplitude]`` (full scale = 1.0) per example."""

    def __init__(self, min_amplitude: float = 0.001, max_amplitude: float = 0.015, p: float = 0.5) -> None:
        super().__init__(p)
        _check_range("AddGaussianNoise amplitude", min_amplitude, max_amplitude)
        self.min_amplitude = float(min_amplitude)
        self.max_amplitude = float(max_amplitude)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        amplitude = _uniform(x.shape[0], self.min_amplitude, self.max_amplitude, x.device)
        return x + amplitude[:, None] * torch.randn_like(x)


class ClippingDistortion(RandomTransform):
    """Hard-clip each example at its own percentiles: a share ``q`` (percent, drawn uniformly from
    ``[min_percentile_threshold, max_percentile_threshold]``) of the samples is clipped, half at the
    bottom (percentile ``q/2``) and half at the top (percentile ``100 - q/2``)."""

    def __init__(self, min_percentile_threshold: float = 0.0, max_percentile_threshold: float = 40.0,
                 p: float = 0.5) -> None:
        super().__init__(p)
        _check_range("ClippingDistortion percentile", min_percentile_threshold, max_percentile_threshold)
        if min_percentile_threshold < 0 or max_percentile_threshold > 100:
            raise ValueError("ClippingDistortion percentile thresholds must lie in [0, 100]")
        self.min_percentile_threshold = float(min_percentile_threshold)
        self.max_percentile_threshold = float(max_percentile_threshold)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        share = _uniform(x.shape[0], self.min_percentile_threshold, self.max_percentile_threshold,
                         x.device) / 100.0
        ordered = x.sort(dim=1).values
        last = x.shape[1] - 1
        low_index = (share / 2 * last).round().long().clamp(0, last)
        high_index = ((1 - share / 2) * last).round().long().clamp(0, last)
        low = ordered.gather(1, low_index[:, None])
        high = ordered.gather(1, high_index[:, None])
        return torch.minimum(torch.maximum(x, low), high)


def _phase_vocoder(spec: torch.Tensor, rates: torch.Tensor, hop_length: int, num_frames: int) -> torch.Tensor:
    """Batched phase vocoder with a rate per example.

    ``spec``: complex STFT ``(batch, freq, frames)``; ``rates``: ``(batch,)``, > 1 speeds up.
    Output frame ``t`` of example ``b`` reads input position ``t * rates[b]`` (magnitudes linearly
    interpolated, phases accumulated from the measured phase advance). Positions past the input
    are silent. Returns ``(batch, freq, num_frames)``.
    """
    batch, freq, frames = spec.shape
    # Frames as rows, so reading a frame copies one contiguous row of bins.
    magnitude = nn.functional.pad(spec.abs(), (0, 2)).transpose(1, 2)  # (batch, frames + 2, freq)
    angle = nn.functional.pad(spec.angle(), (0, 2)).transpose(1, 2)
    positions = torch.arange(num_frames, device=spec.device, dtype=torch.float32)[None] * rates[:, None]
    first = positions.floor().clamp(max=frames)
    fraction = (positions - first).clamp(0, 1)[..., None]
    rows = torch.arange(batch, device=spec.device)[:, None]
    index0 = first.long()
    magnitude0, magnitude1 = magnitude[rows, index0], magnitude[rows, index0 + 1]
    advance = angle[rows, index0 + 1] - angle[rows, index0]
    expected_advance = torch.linspace(0, math.pi * hop_length, freq, device=spec.device)
    advance = advance - expected_advance
    advance = advance - 2 * math.pi * torch.round(advance / (2 * math.pi)) + expected_advance
    phase = torch.cat([angle[:, :1], advance[:, :-1]], dim=1).cumsum(dim=1)
    out_magnitude = ((1 - fraction) * magnitude0 + fraction * magnitude1) * (positions < frames)[..., None]
    return torch.polar(out_magnitude, phase).transpose(1, 2)


def _stft(x: torch.Tensor, n_fft: int, hop_length: int) -> torch.Tensor:
    window = torch.hann_window(n_fft, device=x.device)
    return torch.stft(x, n_fft, hop_length, window=window, center=True, return_complex=True)


def _istft(spec: torch.Tensor, n_fft: int, hop_length: int, length: int) -> torch.Tensor:
    window = torch.hann_window(n_fft, device=spec.device)
    return torch.istft(spec, n_fft, hop_length, window=window, center=True, length=length)


def time_stretch(waveform: torch.Tensor, rates: torch.Tensor, n_fft: int = 512,
                 hop_length: int | None = None) -> torch.Tensor:
    """Change the tempo of each example by ``rates[b]`` (> 1 faster) keeping the pitch, with a
    phase vocoder. ``(batch, time) -> (batch, time)``: a sped-up clip ends in silence, a slowed
    one is cut at the original length."""
    hop_length = hop_length or n_fft // 4
    length = waveform.shape[1]
    spec = _stft(waveform, n_fft, hop_length)
    stretched = _phase_vocoder(spec, rates.to(waveform.device, torch.float32), hop_length, spec.shape[-1])
    return _istft(stretched, n_fft, hop_length, length)


def pitch_shift(waveform: torch.Tensor, semitones: torch.Tensor, n_fft: int = 512,
                hop_length: int | None = None) -> torch.Tensor:
    """Shift the pitch of each example by ``semitones[b]`` keeping the duration:
    time-stretch by ``2**(s/12)`` (phase vocoder, band-limited to the new Nyquist), then read the
    result back at the original length by linear interpolation. ``(batch, time) -> (batch, time)``."""
    hop_length = hop_length or n_fft // 4
    batch, length = waveform.shape
    ratio = torch.pow(2.0, semitones.to(waveform.device, torch.float32) / 12.0)
    stretched_length = int(math.ceil(length * max(1.0, float(ratio.max())))) + 1
    spec = _stft(waveform, n_fft, hop_length)
    stretched = _phase_vocoder(spec, 1.0 / ratio, hop_length, 1 + stretched_length // hop_length)
    freq = stretched.shape[1]
    # Reading the slowed signal `ratio` times faster maps bin k to k * ratio: drop bins that
    # would fold back above Nyquist.
    keep = torch.arange(freq, device=waveform.device)[None, :] <= (freq - 1) / ratio[:, None]
    long = _istft(stretched * keep[:, :, None], n_fft, hop_length, stretched_length)
    positions = torch.arange(length, device=waveform.device, dtype=torch.float32)[None] * ratio[:, None]
    base = positions.floor().long().clamp(max=stretched_length - 1)
    fraction = positions - positions.floor()
    upper = (base + 1).clamp(max=stretched_length - 1)
    return long.gather(1, base) * (1 - fraction) + long.gather(1, upper) * fraction


class TimeStretch(RandomTransform):
    """Tempo change without pitch change, rate drawn uniformly from ``[min_rate, max_rate]``
    (> 1 faster); the clip keeps its length (see ``time_stretch``)."""

    def __init__(self, min_rate: float = 0.8, max_rate: float = 1.25, n_fft: int = 512,
                 hop_length: int | None = None, p: float = 0.5) -> None:
        super().__init__(p)
        _check_range("TimeStretch rate", min_rate, max_rate)
        if min_rate <= 0:
            raise ValueError(f"TimeStretch min_rate={min_rate} must be > 0")
        self.min_rate, self.max_rate = float(min_rate), float(max_rate)
        self.n_fft, self.hop_length = int(n_fft), hop_length

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        rates = _uniform(x.shape[0], self.min_rate, self.max_rate, x.device)
        return time_stretch(x, rates, self.n_fft, self.hop_length)


class PitchShift(RandomTransform):
    """Pitch change without tempo change by a number of semitones drawn uniformly from
    ``[min_semitones, max_semitones]`` (see ``pitch_shift``); batched on the device."""

    def __init__(self, min_semitones: float = -4.0, max_semitones: float = 4.0, n_fft: int = 512,
                 hop_length: int | None = None, p: float = 0.5) -> None:
        super().__init__(p)
        _check_range("PitchShift semitones", min_semitones, max_semitones)
        self.min_semitones, self.max_semitones = float(min_semitones), float(max_semitones)
        self.n_fft, self.hop_length = int(n_fft), hop_length

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        semitones = _uniform(x.shape[0], self.min_semitones, self.max_semitones, x.device)
        return pitch_shift(x, semitones, self.n_fft, self.hop_length)


# ---------------------------------------------------------------- torch-audiomentations wrappers
class _LibraryTransform(RandomTransform):
    """Runs a torch-audiomentations transform (built with ``p=1``) on the selected examples."""

    def __init__(self, library_transform: nn.Module, sample_rate: int | None, p: float) -> None:
        super().__init__(p)
        self.library_transform = library_transform
        self.sample_rate = sample_rate

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        out = self.library_transform(x.unsqueeze(1), sample_rate=self.sample_rate)
        return out.samples.squeeze(1)


def _library(name: str, **kwargs) -> nn.Module:
    require_torchaudio()  # torch-audiomentations imports torchaudio: a broken pair is said here, in one line
    import torch_audiomentations

    return getattr(torch_audiomentations, name)(p=1.0, mode="per_example", p_mode="per_example",
                                                output_type="dict", **kwargs)


class Gain(_LibraryTransform):
    """Multiply by a gain drawn uniformly (in dB) from ``[min_gain_db, max_gain_db]``."""

    def __init__(self, min_gain_db: float = -18.0, max_gain_db: float = 6.0, p: float = 0.5) -> None:
        _check_range("Gain dB", min_gain_db, max_gain_db)
        super().__init__(_library("Gain", min_gain_in_db=min_gain_db, max_gain_in_db=max_gain_db), None, p)


class PolarityInversion(_LibraryTransform):
    """Multiply by -1."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__(_library("PolarityInversion"), None, p)


class Shift(_LibraryTransform):
    """Shift in time by an amount drawn from ``[min_shift, max_shift]`` in ``shift_unit``
    (``"fraction"`` of the clip, ``"samples"`` or ``"seconds"``); wraps around when ``rollover``,
    else fills with zeros."""

    def __init__(self, min_shift: float = -0.5, max_shift: float = 0.5, shift_unit: str = "fraction",
                 rollover: bool = True, sample_rate: int | None = None, p: float = 0.5) -> None:
        if shift_unit not in ("fraction", "samples", "seconds"):
            raise ValueError(f"Shift shift_unit={shift_unit!r}: use 'fraction', 'samples' or 'seconds'")
        if shift_unit == "seconds" and sample_rate is None:
            raise ValueError("Shift with shift_unit='seconds' needs sample_rate")
        _check_range("Shift", min_shift, max_shift)
        super().__init__(_library("Shift", min_shift=min_shift, max_shift=max_shift, shift_unit=shift_unit,
                                  rollover=rollover), sample_rate, p)


class AddColoredNoise(_LibraryTransform):
    """Add noise with a ``1/f**decay`` power spectrum (decay 0 white, 1 pink, 2 brown; negative
    values blue/violet) at an SNR drawn from ``[min_snr_db, max_snr_db]``."""

    def __init__(self, sample_rate: int, min_snr_db: float = 3.0, max_snr_db: float = 30.0,
                 min_f_decay: float = -2.0, max_f_decay: float = 2.0, p: float = 0.5) -> None:
        _check_range("AddColoredNoise SNR", min_snr_db, max_snr_db)
        _check_range("AddColoredNoise f_decay", min_f_decay, max_f_decay)
        super().__init__(_library("AddColoredNoise", min_snr_in_db=min_snr_db, max_snr_in_db=max_snr_db,
                                  min_f_decay=min_f_decay, max_f_decay=max_f_decay), int(sample_rate), p)


# ------------------------------------------------------------------------- file-based transforms
def _audio_files(paths: str | Path | Sequence[str | Path], what: str) -> list[Path]:
    """Files named in ``paths`` (files, or folders searched recursively for audio files)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: list[Path] = []
    for entry in paths:
        entry = Path(entry).expanduser()
        if entry.is_dir():
            found.extend(sorted(p for p in entry.rglob("*") if p.suffix.lower() in _AUDIO_SUFFIXES))
        elif entry.is_file():
            found.append(entry)
        else:
            raise FileNotFoundError(f"{what}: {entry} does not exist; point the recipe at a folder "
                                    "of audio files")
    if not found:
        raise FileNotFoundError(f"{what}: no audio files ({', '.join(sorted(_AUDIO_SUFFIXES))}) "
                                f"under {[str(p) for p in paths]}")
    return found


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).mean(dim=-1, keepdim=True).sqrt()


class AddBackgroundNoise(RandomTransform):
    """Mix in a random excerpt of a random noise file at an SNR drawn from
    ``[min_snr_db, max_snr_db]``. Excerpts start at a random sample and wrap around short files.

    Args:
        paths: a folder (searched recursively), a file, or a list of them.
        sample_rate: rate of the waveforms (noise is resampled to it when decoded).

    Raises ``FileNotFoundError`` when no audio file is found.
    """

    def __init__(self, paths: str | Path | Sequence[str | Path], sample_rate: int,
                 min_snr_db: float = 3.0, max_snr_db: float = 30.0, p: float = 0.5) -> None:
        super().__init__(p)
        from audioml.data.audio import load_audio

        _check_range("AddBackgroundNoise SNR", min_snr_db, max_snr_db)
        self.min_snr_db, self.max_snr_db = float(min_snr_db), float(max_snr_db)
        self.files = [str(f) for f in _audio_files(paths, "AddBackgroundNoise")]
        clips = [torch.from_numpy(load_audio(f, sample_rate)) for f in self.files]
        clips = [c for c in clips if c.numel() > 0 and float(c.abs().max()) > 0]
        if not clips:
            raise ValueError(f"AddBackgroundNoise: every noise file is silent or empty: {self.files}")
        lengths = torch.tensor([c.numel() for c in clips])
        self.register_buffer("bank", torch.cat(clips), persistent=False)
        self.register_buffer("starts", torch.cumsum(lengths, 0) - lengths, persistent=False)
        self.register_buffer("lengths", lengths, persistent=False)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        batch, length = x.shape
        which = torch.randint(len(self.lengths), (batch,), device=x.device)
        file_length = self.lengths.to(x.device)[which]
        offset = (torch.rand(batch, device=x.device) * file_length).long()
        index = (offset[:, None] + torch.arange(length, device=x.device)[None]) % file_length[:, None]
        noise = self.bank.to(x.device)[self.starts.to(x.device)[which][:, None] + index]
        noise = noise / _rms(noise).clamp_min(1e-8)
        snr_db = _uniform(batch, self.min_snr_db, self.max_snr_db, x.device)
        return x + noise * _rms(x) / torch.pow(10.0, snr_db[:, None] / 20.0)


class ApplyImpulseResponse(RandomTransform):
    """Convolve with a random impulse response (room, phone, ...) by FFT, keeping the length and
    the RMS level of each example. With ``compensate_delay`` the output is advanced by the
    position of the IR's peak, so the direct sound stays where it was.

    Args:
        paths: a folder (searched recursively), a file, or a list of them.
        sample_rate: rate of the waveforms (IRs are resampled to it when decoded).
        max_seconds: IRs are cut to this length.

    Raises ``FileNotFoundError`` when no audio file is found.
    """

    def __init__(self, paths: str | Path | Sequence[str | Path], sample_rate: int,
                 compensate_delay: bool = True, max_seconds: float = 2.0, p: float = 0.5) -> None:
        super().__init__(p)
        from audioml.data.audio import load_audio

        self.files = [str(f) for f in _audio_files(paths, "ApplyImpulseResponse")]
        max_length = max(1, int(max_seconds * sample_rate))
        responses = [torch.from_numpy(load_audio(f, sample_rate))[:max_length] for f in self.files]
        responses = [r for r in responses if r.numel() > 0 and float(r.abs().max()) > 0]
        if not responses:
            raise ValueError(f"ApplyImpulseResponse: every impulse response is silent: {self.files}")
        longest = max(r.numel() for r in responses)
        bank = torch.zeros(len(responses), longest)
        for row, response in enumerate(responses):
            bank[row, : response.numel()] = response / response.norm()
        self.compensate_delay = bool(compensate_delay)
        self.register_buffer("responses", bank, persistent=False)
        self.register_buffer("delays", bank.abs().argmax(dim=1), persistent=False)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        batch, length = x.shape
        which = torch.randint(self.responses.shape[0], (batch,), device=x.device)
        response = self.responses.to(x.device)[which]
        size = 1 << math.ceil(math.log2(length + response.shape[1] - 1))
        wet = torch.fft.irfft(torch.fft.rfft(x, size) * torch.fft.rfft(response, size), size)
        start = self.delays.to(x.device)[which] if self.compensate_delay else torch.zeros_like(which)
        index = start[:, None] + torch.arange(length, device=x.device)[None]
        wet = wet.gather(1, index)
        return wet * _rms(x) / _rms(wet).clamp_min(1e-8)
