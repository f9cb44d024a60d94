"""The one clip decoder: how a file becomes a model input, for training, evaluation, prediction
and export alike.

``ClipDecoder`` decodes a file (soundfile / PyAV), resamples it to the model's rate, downmixes
it, optionally trims leading and trailing silence and pads or crops it to the clip length.
Every DataModule decodes through its ``decoder``; the decoder's ``settings()`` enter the
waveform cache key and travel in every checkpoint, so ``audioml-predict`` rebuilds the exact
decoder the training data went through.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from audioml.data.audio import AudioDecodeError, fix_length, load_audio

__all__ = ["ClipDecoder"]

PAD_MODES = ("start", "center")
#: Upper bounds of a clip: a rate above any audio interface's, an hour of audio.
MAX_SAMPLE_RATE = 768_000
MAX_CLIP_SECONDS = 3600.0


@dataclass(frozen=True)
class ClipDecoder:
    """File -> float32 ``(num_samples,)`` mono clip at ``sample_rate``.

    Args:
        sample_rate: rate (Hz) the model declares.
        clip_seconds: the fixed length of every clip (padded with zeros or cropped).
        pad_mode: ``"start"`` (keep the beginning) or ``"center"``.
        trim_db: trim leading/trailing audio quieter than ``trim_db`` below the peak
            (``librosa.effects.trim``) before fixing the length; ``None`` keeps everything.
        min_seconds: after trimming, shorter audio is refused (``AudioDecodeError``) instead
            of padded; the data side skips and lists such files.
    """

    sample_rate: int
    clip_seconds: float
    pad_mode: str = "start"
    trim_db: float | None = None
    min_seconds: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.sample_rate, (int, np.integer)) or isinstance(self.sample_rate, bool) \
                or not 0 < self.sample_rate <= MAX_SAMPLE_RATE:
            raise ValueError(f"sample rate {self.sample_rate!r} (model.sample_rate / data.sample_rate): "
                             f"use a positive whole number of Hz up to {MAX_SAMPLE_RATE}, e.g. 16000")
        if not isinstance(self.clip_seconds, (int, float)) or isinstance(self.clip_seconds, bool) \
                or not 0 < self.clip_seconds <= MAX_CLIP_SECONDS:
            raise ValueError(f"clip length {self.clip_seconds!r} s (data.clip_seconds): use a positive "
                             f"number of seconds up to {MAX_CLIP_SECONDS:g}, e.g. 4.0")
        if self.pad_mode not in PAD_MODES:
            raise ValueError(f"data.pad_mode={self.pad_mode!r}: use one of {list(PAD_MODES)}")
        if self.trim_db is not None and (not isinstance(self.trim_db, (int, float)) or self.trim_db <= 0):
            raise ValueError(f"data.trim_db={self.trim_db!r}: use a positive number of dB, or null")
        if not isinstance(self.min_seconds, (int, float)) or self.min_seconds < 0:
            raise ValueError(f"data.min_seconds={self.min_seconds!r}: use a number >= 0")
        object.__setattr__(self, "sample_rate", int(self.sample_rate))
        object.__setattr__(self, "clip_seconds", float(self.clip_seconds))
        object.__setattr__(self, "trim_db", None if self.trim_db is None else float(self.trim_db))
        object.__setattr__(self, "min_seconds", float(self.min_seconds))

    @property
    def num_samples(self) -> int:
        return int(round(self.clip_seconds * self.sample_rate))

    def settings(self) -> dict:
        """The decoder as plain data (for cache keys and checkpoints)."""
        return asdict(self)

    @classmethod
    def from_settings(cls, settings: dict) -> ClipDecoder:
        """Rebuild from ``settings()`` (e.g. read from a checkpoint); unknown keys are refused."""
        if not isinstance(settings, dict):
            raise ValueError(f"decoder settings must be a mapping, got {type(settings).__name__}")
        unknown = sorted(set(settings) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown decoder settings {unknown}")
        return cls(**settings)

    def with_options(self, **changes) -> ClipDecoder:
        """A copy with some settings changed (e.g. ``min_seconds=0`` to score short files)."""
        return replace(self, **changes)

    def read(self, path: str | Path) -> np.ndarray:
        """The whole file, resampled and downmixed (no trimming, any length)."""
        return load_audio(path, self.sample_rate)

    def finish(self, audio: np.ndarray, source: str | Path = "") -> np.ndarray:
        """Trim, check and fix the length of decoded ``(time,)`` audio (a file or a segment)."""
        audio = self.trimmed(audio, source)
        return np.ascontiguousarray(fix_length(audio, self.num_samples, self.pad_mode), dtype=np.float32)

    def trimmed(self, audio: np.ndarray, source: str | Path = "") -> np.ndarray:
        """Decoded audio with the silence trimmed as ``finish`` trims it, at its own length
        (checked as ``finish`` checks it)."""
        if self.trim_db is not None:
            import librosa

            audio, _ = librosa.effects.trim(audio, top_db=self.trim_db)
        prefix = f"{source}: " if source else ""
        if audio.shape[0] < self.min_seconds * self.sample_rate:
            raise AudioDecodeError(f"{prefix}too short: {audio.shape[0] / self.sample_rate:.3f} s "
                                   f"< data.min_seconds={self.min_seconds}")
        if not np.any(audio):
            raise AudioDecodeError(f"{prefix}silent: all samples are zero")
        return audio

    def windows(self, audio: np.ndarray, hop_seconds: float | None = None,
                source: str | Path = "") -> tuple[np.ndarray, np.ndarray]:
        """Decoded ``(time,)`` audio as clips of the training length: ``(windows (n, num_samples),
        start seconds (n,))``.

        Audio no longer than a clip gives one clip exactly as ``finish`` makes it (trimmed,
        padded as in training). Longer audio is covered by windows every ``hop_seconds``
        (default: half a clip) from the start, plus one window ending at the end when the hop
        leaves a tail, so every sample is scored and no window is padded."""
        audio = self.trimmed(audio, source)
        size = self.num_samples
        if audio.shape[0] <= size:
            return fix_length(audio, size, self.pad_mode)[None].astype(np.float32, copy=False), np.zeros(1)
        hop = int(round((hop_seconds if hop_seconds is not None else self.clip_seconds / 2) * self.sample_rate))
        if hop <= 0:
            raise ValueError(f"hop_seconds={hop_seconds}: use a positive number of seconds")
        starts = list(range(0, audio.shape[0] - size + 1, hop))
        if starts[-1] != audio.shape[0] - size:
            starts.append(audio.shape[0] - size)
        starts = np.asarray(starts)
        index = starts[:, None] + np.arange(size)[None, :]
        return np.ascontiguousarray(audio[index], dtype=np.float32), starts / self.sample_rate

    def __call__(self, path: str | Path) -> np.ndarray:
        """``path`` as one model-ready clip; raises ``AudioDecodeError`` when unusable."""
        return self.finish(self.read(path))
