"""Audio decoding: soundfile for PCM/FLAC/OGG, PyAV (bundled FFmpeg) for everything else.

All functions return float32 NumPy arrays in [-1, 1] of shape ``(time,)`` (mono) unless stated.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["AUDIO_EXTENSIONS", "is_audio_file", "AudioDecodeError", "load_audio", "fix_length", "resample", "to_mono",
           "audio_info"]

# Extensions soundfile (libsndfile) reads natively; anything else goes through PyAV.
#: File name endings the decoder reads (soundfile or FFmpeg), matched case-insensitively.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".m4a", ".aac", ".aiff", ".aif", ".3gp",
                    ".amr", ".caf", ".wma", ".webm", ".mp4")


def is_audio_file(path: str | Path) -> bool:
    """Whether ``path`` ends in one of ``AUDIO_EXTENSIONS`` (any letter case)."""
    return Path(path).suffix.lower() in AUDIO_EXTENSIONS


_SOUNDFILE_EXTENSIONS = {".wav", ".flac", ".ogg", ".aiff", ".aif"}


class AudioDecodeError(RuntimeError):
    """A file could not be decoded, or decoded to nothing usable (empty, NaN)."""


def _read_soundfile(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    data, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)
    return data.T, int(sample_rate)  # (channels, time)


def _read_pyav(path: Path) -> tuple[np.ndarray, int]:
    import av

    chunks: list[np.ndarray] = []
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise AudioDecodeError(f"{path}: no audio stream")
        stream = container.streams.audio[0]
        sample_rate = int(stream.codec_context.sample_rate or stream.rate)
        channels = stream.codec_context.channels or 1
        # Resample every frame to planar float32 at the native rate: one layout for all codecs.
        resampler = av.AudioResampler(format="fltp", layout="mono" if channels == 1 else "stereo",
                                      rate=sample_rate)
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray())
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray())
    if not chunks:
        return np.zeros((1, 0), dtype=np.float32), sample_rate
    return np.concatenate(chunks, axis=1).astype(np.float32, copy=False), sample_rate


def to_mono(audio: np.ndarray) -> np.ndarray:
    """``(channels, time)`` or ``(time,)`` -> ``(time,)`` by averaging channels."""
    if audio.ndim == 1:
        return audio
    return audio.mean(axis=0).astype(np.float32, copy=False)


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited resampling of a ``(time,)`` or ``(channels, time)`` array (polyphase)."""
    if orig_sr == target_sr:
        return audio
    from math import gcd

    from scipy.signal import resample_poly

    divisor = gcd(orig_sr, target_sr)
    up, down = target_sr // divisor, orig_sr // divisor
    return resample_poly(audio, up, down, axis=-1).astype(np.float32, copy=False)


def fix_length(audio: np.ndarray, num_samples: int, mode: str = "start") -> np.ndarray:
    """Pad with zeros or crop a ``(time,)`` array to exactly ``num_samples``.

    ``mode="start"`` keeps the beginning (crop the tail, pad the end); ``"center"`` crops or pads
    symmetrically.
    """
    length = audio.shape[-1]
    if length == num_samples:
        return audio
    if length > num_samples:
        offset = 0 if mode == "start" else (length - num_samples) // 2
        return audio[..., offset:offset + num_samples]
    pad = num_samples - length
    left = 0 if mode == "start" else pad // 2
    widths = [(0, 0)] * (audio.ndim - 1) + [(left, pad - left)]
    return np.pad(audio, widths)


#: Float files may exceed full scale (1.0) a little; a sample beyond this is not audio but a corrupt
#: or mis-scaled file, whose clips would turn the loss into NaN.
MAX_AMPLITUDE = 1000.0


def _why_not_a_file(path: Path) -> str:
    """Why ``path`` cannot be opened as a file, in the words of ``skipped_files.csv``."""
    import errno
    import os

    if path.is_symlink():
        try:
            os.stat(path)
        except OSError as error:
            if error.errno == errno.ELOOP:
                return "symbolic link loop"
            return f"broken symbolic link (to {os.readlink(path)}, which does not exist)"
    if path.is_dir():
        return "a folder, not a file"
    return "file not found"


def load_audio(path: str | Path, sample_rate: int | None = None, mono: bool = True,
               offset_seconds: float = 0.0, duration_seconds: float | None = None) -> np.ndarray:
    """Decode ``path`` to float32, optionally resampled to ``sample_rate`` and downmixed.

    Returns ``(time,)`` when ``mono`` else ``(channels, time)``.
    Raises ``AudioDecodeError`` when the file is unreadable, empty or holds NaN/inf samples.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioDecodeError(f"{path}: {_why_not_a_file(path)}")
    suffix = path.suffix.lower()
    try:
        if suffix in _SOUNDFILE_EXTENSIONS:
            try:
                audio, native_sr = _read_soundfile(path)
            except Exception:  # e.g. WAV with a codec libsndfile lacks: FFmpeg knows more
                audio, native_sr = _read_pyav(path)
        else:
            audio, native_sr = _read_pyav(path)
    except AudioDecodeError:
        raise
    except Exception as error:  # decoder libraries raise many types; report them uniformly
        raise AudioDecodeError(f"{path}: cannot decode ({type(error).__name__}: {error})") from error
    if offset_seconds or duration_seconds is not None:
        start = int(round(offset_seconds * native_sr))
        stop = None if duration_seconds is None else start + int(round(duration_seconds * native_sr))
        audio = audio[:, start:stop]
    if audio.shape[-1] == 0:
        raise AudioDecodeError(f"{path}: no samples")
    if not np.isfinite(audio).all():
        raise AudioDecodeError(f"{path}: contains NaN or infinite samples")
    peak = float(np.abs(audio).max())
    if peak > MAX_AMPLITUDE:
        raise AudioDecodeError(f"{path}: samples reach {peak:.3g}, {MAX_AMPLITUDE:g} times full scale (1.0): a corrupt "
                               "or mis-scaled float file (rescale it to [-1, 1])")
    if mono:
        audio = to_mono(audio)
    if sample_rate is not None:
        audio = resample(audio, native_sr, sample_rate)
    return np.ascontiguousarray(audio, dtype=np.float32)


def audio_info(path: str | Path) -> tuple[int, float]:
    """``(sample_rate, duration_seconds)`` of a file, decoding it when the header cannot tell."""
    path = Path(path)
    if path.suffix.lower() in _SOUNDFILE_EXTENSIONS:
        import soundfile as sf

        try:
            info = sf.info(str(path))
        except RuntimeError:  # a header libsndfile cannot read: FFmpeg decodes the file below
            info = None
        if info is not None and info.samplerate > 0:
            return int(info.samplerate), float(info.frames) / float(info.samplerate)
    audio, native_sr = _read_pyav(path)
    return native_sr, audio.shape[-1] / native_sr
