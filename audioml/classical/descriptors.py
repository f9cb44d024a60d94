"""Handcrafted audio descriptors (librosa), summarised over time into one named row per clip.

Frame-level descriptors are summarised by the configured statistics into columns named
``<descriptor>[_<index>]_<statistic>`` (``mfcc_03_mean``); clip-level ones (``tempo``,
``onset_rate``, ``low_energy``) are one column each. The sets ``mir`` and ``full`` are
``audioml/conf/descriptors/``; what each descriptor means is ``DOCUMENTATION``. Silence and clips
shorter than a frame give finite values (0 where undefined); a clip holding NaN or infinite
samples raises ``DescriptorError``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

__all__ = ["DESCRIPTORS", "STATISTICS", "DescriptorSettings", "DescriptorError", "describe", "column_names",
           "DOCUMENTATION"]


class DescriptorError(ValueError):
    """A clip that cannot give descriptors (non-finite samples)."""


@dataclass(frozen=True)
class DescriptorSettings:
    """What is computed: descriptor names (``DESCRIPTORS``), the statistics over frames
    (``STATISTICS``), the STFT (``n_fft``, ``hop_length`` in samples), ``n_mfcc``, and the
    ``brightness_hz`` cut-off (MIRtoolbox's 1500 Hz)."""

    descriptors: tuple[str, ...] = ("rms", "zcr", "spectral_centroid", "mfcc")
    statistics: tuple[str, ...] = ("mean", "std")
    n_fft: int = 2048
    hop_length: int = 512
    n_mfcc: int = 13
    brightness_hz: float = 1500.0
    #: Name of the tables these settings make (``<cache>/features/handcrafted-<key>``).
    kind: ClassVar[str] = "handcrafted"

    def __post_init__(self) -> None:
        unknown = [d for d in self.descriptors if d not in DESCRIPTORS]
        if unknown:
            raise ValueError(f"descriptors.names: unknown {unknown}; known: {sorted(DESCRIPTORS)}")
        bad = [s for s in self.statistics if s not in STATISTICS]
        if bad:
            raise ValueError(f"descriptors.statistics: unknown {bad}; known: {sorted(STATISTICS)}")
        if not self.descriptors or not self.statistics:
            raise ValueError("descriptors.names and descriptors.statistics must not be empty")
        if self.n_fft < 16 or self.hop_length < 1 or self.n_mfcc < 1:
            raise ValueError(f"descriptors: n_fft={self.n_fft}, hop_length={self.hop_length}, n_mfcc={self.n_mfcc} "
                             "must be >= 16, >= 1, >= 1")

    def as_dict(self) -> dict:
        return {"descriptors": list(self.descriptors), "statistics": list(self.statistics), "n_fft": self.n_fft,
                "hop_length": self.hop_length, "n_mfcc": self.n_mfcc, "brightness_hz": self.brightness_hz}

    def columns(self) -> list[str]:
        """``column_names(self)``."""
        return column_names(self)

    def describe(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        """``describe(waveform, sample_rate, self)``."""
        return describe(waveform, sample_rate, self)


class _Frames:
    """The spectra one clip's descriptors share, computed once on first use."""

    def __init__(self, y: np.ndarray, sr: int, settings: DescriptorSettings) -> None:
        self.y, self.sr, self.settings = y, sr, settings
        self._cache: dict[str, np.ndarray] = {}

    def get(self, name: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        if name not in self._cache:
            self._cache[name] = compute()
        return self._cache[name]

    @property
    def power(self) -> np.ndarray:
        import librosa

        s = self.settings
        return self.get("power", lambda: np.abs(librosa.stft(self.y, n_fft=s.n_fft, hop_length=s.hop_length)) ** 2)

    @property
    def magnitude(self) -> np.ndarray:
        return self.get("magnitude", lambda: np.sqrt(self.power))

    @property
    def frequencies(self) -> np.ndarray:
        import librosa

        return librosa.fft_frequencies(sr=self.sr, n_fft=self.settings.n_fft)

    @property
    def mfcc(self) -> np.ndarray:
        import librosa

        s = self.settings
        return self.get("mfcc", lambda: librosa.feature.mfcc(
            S=librosa.power_to_db(librosa.feature.melspectrogram(S=self.power, sr=self.sr)), n_mfcc=s.n_mfcc))

    @property
    def rms(self) -> np.ndarray:
        import librosa

        return self.get("rms", lambda: librosa.feature.rms(S=self.magnitude, frame_length=self.settings.n_fft))

    @property
    def onset_envelope(self) -> np.ndarray:
        import librosa

        return self.get("onset", lambda: librosa.onset.onset_strength(S=librosa.power_to_db(
            librosa.feature.melspectrogram(S=self.power, sr=self.sr)), sr=self.sr, hop_length=self.settings.hop_length))

    @property
    def chroma(self) -> np.ndarray:
        import librosa

        return self.get("chroma", lambda: librosa.feature.chroma_stft(S=self.power, sr=self.sr))


def _moments(f: _Frames) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame spectral distribution: centroid, spread, and the normalised spectrum."""
    weights = f.magnitude / np.maximum(f.magnitude.sum(axis=0, keepdims=True), 1e-12)
    centroid = (f.frequencies[:, None] * weights).sum(axis=0)
    spread = np.sqrt((((f.frequencies[:, None] - centroid) ** 2) * weights).sum(axis=0))
    return centroid, spread, weights


def _skewness(f: _Frames) -> np.ndarray:
    centroid, spread, weights = _moments(f)
    third = (((f.frequencies[:, None] - centroid) ** 3) * weights).sum(axis=0)
    return np.where(spread > 0, third / np.maximum(spread, 1e-12) ** 3, 0.0)[None]


def _kurtosis(f: _Frames) -> np.ndarray:
    centroid, spread, weights = _moments(f)
    fourth = (((f.frequencies[:, None] - centroid) ** 4) * weights).sum(axis=0)
    return np.where(spread > 0, fourth / np.maximum(spread, 1e-12) ** 4, 0.0)[None]


def _entropy(f: _Frames) -> np.ndarray:
    """Shannon entropy of each frame's normalised power spectrum, divided by its maximum
    (log of the number of bins): 1 = white noise, 0 = one sinusoid or silence."""
    power = f.power
    total = power.sum(axis=0, keepdims=True)
    p = np.where(total > 0, power / np.maximum(total, 1e-30), 0.0)
    entropy = -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=0)
    return (entropy / np.log(power.shape[0]))[None]


def _brightness(f: _Frames) -> np.ndarray:
    """Share of each frame's spectral energy above ``brightness_hz`` (0 for a silent frame)."""
    total = f.power.sum(axis=0)
    high = f.power[f.frequencies >= f.settings.brightness_hz].sum(axis=0)
    return np.where(total > 0, high / np.maximum(total, 1e-30), 0.0)[None]


def _low_energy(f: _Frames) -> np.ndarray:
    """Share of frames whose RMS is below the clip's mean RMS (0 for a silent clip)."""
    rms = f.rms[0]
    return np.array(float((rms < rms.mean()).mean()) if rms.max() > 0 else 0.0)


def _tempo(f: _Frames) -> np.ndarray:
    import librosa

    if f.onset_envelope.max() <= 0:
        return np.array(0.0)
    return np.array(float(np.atleast_1d(librosa.feature.tempo(onset_envelope=f.onset_envelope, sr=f.sr,
                                                              hop_length=f.settings.hop_length))[0]))


def _onset_rate(f: _Frames) -> np.ndarray:
    """Detected onsets per second (MIRtoolbox's event density)."""
    import librosa

    onsets = librosa.onset.onset_detect(onset_envelope=f.onset_envelope, sr=f.sr, hop_length=f.settings.hop_length)
    return np.array(len(onsets) / max(len(f.y) / f.sr, 1e-9))


def _feature(name: str, **kwargs) -> Callable[[_Frames], np.ndarray]:
    def compute(f: _Frames) -> np.ndarray:
        import librosa

        function = getattr(librosa.feature, name)
        if name in ("spectral_centroid", "spectral_bandwidth", "spectral_rolloff", "spectral_contrast"):
            return function(S=f.magnitude, sr=f.sr, **kwargs)
        return function(S=f.magnitude, **kwargs)
    return compute


def _zcr(f: _Frames) -> np.ndarray:
    import librosa

    return librosa.feature.zero_crossing_rate(f.y, frame_length=f.settings.n_fft, hop_length=f.settings.hop_length)


def _delta(order: int) -> Callable[[_Frames], np.ndarray]:
    def compute(f: _Frames) -> np.ndarray:
        import librosa

        mfcc = f.mfcc
        width = min(9, mfcc.shape[1] if mfcc.shape[1] % 2 else mfcc.shape[1] - 1)
        if width < 3:  # too few frames for a derivative: no change
            return np.zeros_like(mfcc)
        return librosa.feature.delta(mfcc, order=order, width=width)
    return compute


def _tonnetz(f: _Frames) -> np.ndarray:
    import librosa

    return librosa.feature.tonnetz(chroma=f.chroma, sr=f.sr)


#: name -> (function of the shared frames, one-line meaning). Frame-level functions return
#: ``(rows, frames)``; clip-level ones a 0-d array.
DESCRIPTORS: dict[str, tuple[Callable[[_Frames], np.ndarray], str]] = {
    "rms": (lambda f: f.rms, "root-mean-square energy per frame (dynamics)"),
    "low_energy": (_low_energy, "share of frames below the clip's mean RMS (clip-level)"),
    "zcr": (_zcr, "zero-crossing rate per frame (noisiness)"),
    "spectral_centroid": (_feature("spectral_centroid"), "spectral centroid in Hz (brightness of timbre)"),
    "spectral_bandwidth": (_feature("spectral_bandwidth"), "spectral spread around the centroid in Hz"),
    "spectral_rolloff": (_feature("spectral_rolloff", roll_percent=0.85), "frequency below which 85 % of the energy lies"),
    "spectral_flatness": (lambda f: _feature("spectral_flatness")(f), "Wiener entropy: 1 noise-like, 0 tonal"),
    "spectral_entropy": (_entropy, "normalised Shannon entropy of the power spectrum"),
    "spectral_skewness": (_skewness, "third standardised moment of the spectrum"),
    "spectral_kurtosis": (_kurtosis, "fourth standardised moment of the spectrum"),
    "spectral_contrast": (_feature("spectral_contrast"), "peak-valley contrast in 7 octave bands (dB)"),
    "spectral_flux": (lambda f: f.onset_envelope[None], "onset strength: positive spectral change per frame"),
    "brightness": (_brightness, "share of the energy above brightness_hz (1500 Hz)"),
    "mfcc": (lambda f: f.mfcc, "mel-frequency cepstral coefficients 0..n_mfcc-1"),
    "mfcc_delta": (_delta(1), "first derivative of the MFCCs over time"),
    "mfcc_delta2": (_delta(2), "second derivative of the MFCCs over time"),
    "chroma": (lambda f: f.chroma, "energy of the 12 pitch classes C..B (tonality)"),
    "tonnetz": (_tonnetz, "6 tonal-centroid coordinates (fifths, minor and major thirds)"),
    "tempo": (_tempo, "estimated tempo in beats per minute (clip-level; 0 without onsets)"),
    "onset_rate": (_onset_rate, "detected onsets per second (clip-level event density)"),
}

#: statistic -> reduction over frames (axis 1).
STATISTICS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean": lambda x: x.mean(axis=1),
    "std": lambda x: x.std(axis=1),
    "min": lambda x: x.min(axis=1),
    "max": lambda x: x.max(axis=1),
    "median": lambda x: np.median(x, axis=1),
}

DOCUMENTATION = {name: meaning for name, (_, meaning) in DESCRIPTORS.items()}


def _rows_of(name: str, settings: DescriptorSettings) -> int | None:
    """Rows of a frame-level descriptor (``None``: clip-level)."""
    fixed = {"mfcc": settings.n_mfcc, "mfcc_delta": settings.n_mfcc, "mfcc_delta2": settings.n_mfcc, "chroma": 12,
             "tonnetz": 6, "spectral_contrast": 7}
    if name in ("low_energy", "tempo", "onset_rate"):
        return None
    return fixed.get(name, 1)


def column_names(settings: DescriptorSettings) -> list[str]:
    """The names of ``describe``'s values, in order."""
    names = []
    for name in settings.descriptors:
        rows = _rows_of(name, settings)
        if rows is None:
            names.append(name)
            continue
        for row in range(rows):
            base = f"{name}_{row:02d}" if rows > 1 else name
            names.extend(f"{base}_{statistic}" for statistic in settings.statistics)
    return names


def describe(waveform: np.ndarray, sample_rate: int, settings: DescriptorSettings) -> np.ndarray:
    """One float64 row (``column_names(settings)`` order) for a mono waveform."""
    y = np.asarray(waveform, dtype=np.float32).reshape(-1)
    if not np.all(np.isfinite(y)):
        raise DescriptorError(f"{int((~np.isfinite(y)).sum())} non-finite samples")
    if len(y) < settings.n_fft:  # shorter than one frame: zero-padded to one
        y = np.pad(y, (0, settings.n_fft - len(y)))
    frames = _Frames(y, int(sample_rate), settings)
    values: list[np.ndarray] = []
    for name in settings.descriptors:
        raw = np.asarray(DESCRIPTORS[name][0](frames), dtype=np.float64)
        if _rows_of(name, settings) is None:
            values.append(raw.reshape(1))
            continue
        raw = np.nan_to_num(raw.reshape(raw.shape[0], -1), nan=0.0, posinf=0.0, neginf=0.0)
        values.append(np.stack([STATISTICS[s](raw) for s in settings.statistics], axis=1).reshape(-1))
    row = np.concatenate(values)
    return np.nan_to_num(row, nan=0.0, posinf=0.0, neginf=0.0)

