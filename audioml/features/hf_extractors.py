"""The input contracts of the ``transformers`` audio encoders as batched ``nn.Module``s.

Each module reproduces one Hugging Face feature extractor on the device (window and filterbank
as buffers, computed once with ``transformers.audio_utils``) for a batch of waveforms with a
valid length per row: ``forward(waveform (batch, time), lengths (batch,)) -> (values, lengths)``
where ``values`` is what the encoder takes and ``lengths`` the number of valid positions along
its time axis (samples or frames). Each row is processed as the Hugging Face extractor
processes that clip alone (``tests/models/test_hf_extractors.py`` compares them).

``valid_span`` finds the valid part of a padded waveform: the data side pads clips with zeros
(``ClipDecoder``), so the span between the first and last non-zero sample is the clip.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["EncoderWaveform", "valid_span", "left_aligned", "length_mask", "EncoderExtractor", "WaveformNormalize", "WhisperLogMel",
           "ClapLogMel", "SeamlessFbank"]


def valid_span(waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(start, length)`` (int64, ``(batch,)``) of the span from the first to the last non-zero
    sample of each row of ``(batch, time)``; an all-zero row counts as valid throughout."""
    nonzero = waveform != 0
    time = waveform.shape[1]
    any_nonzero = nonzero.any(dim=1)
    first = nonzero.int().argmax(dim=1)
    last = time - 1 - nonzero.flip(1).int().argmax(dim=1)
    start = torch.where(any_nonzero, first, torch.zeros_like(first))
    length = torch.where(any_nonzero, last - first + 1, torch.full_like(first, time))
    return start, length


def left_aligned(waveform: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Rows of ``(batch, time)`` shifted left by ``start`` samples (what was before the start,
    zeros by ``valid_span``, moves to the end): a centred clip becomes a right-padded one."""
    time = waveform.shape[1]
    index = torch.arange(time, device=waveform.device)[None, :] + start[:, None]
    index = torch.where(index >= time, index - time, index)  # no modulo: ONNX exports this
    return torch.gather(waveform, 1, index)


def length_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """``(batch, size)`` bool, True for the first ``lengths[b]`` positions of row ``b``."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


class EncoderExtractor(nn.Module):
    """Base of the extractors: ``config()`` gives the module as a config (``_target_`` and its
    plain arguments) for a checkpoint record; ``sampling_rate`` is the input rate in Hz."""

    sampling_rate: int

    def __init__(self, **settings: Any) -> None:
        super().__init__()
        self._settings = dict(settings)

    def config(self) -> dict[str, Any]:
        return {"_target_": f"{type(self).__module__}.{type(self).__qualname__}", **self._settings}

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value!r}" for key, value in self._settings.items())


class EncoderWaveform(nn.Module):
    """The front end of a transformers encoder model: waveforms ``(batch, time)`` (or
    ``(batch, 1, time)``) pass through at ``sample_rate``; the encoder's extractor runs inside
    its backbone (``audioml.models.backbones.hf_encoder``)."""

    def __init__(self, sample_rate: int = 16000) -> None:
        super().__init__()
        self.sample_rate = int(sample_rate)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.dim() == 3 and waveform.shape[1] == 1:
            waveform = waveform[:, 0]
        if waveform.dim() != 2:
            raise ValueError(f"an encoder model takes waveforms (batch, time), got {tuple(waveform.shape)}")
        return waveform

    def extra_repr(self) -> str:
        return f"sample_rate={self.sample_rate}"


def _buffer(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


class WaveformNormalize(EncoderExtractor):
    """Wav2Vec2 / HuBERT / WavLM / Data2VecAudio (``Wav2Vec2FeatureExtractor``): the waveform
    itself, with ``do_normalize`` zero mean and unit variance over each clip's valid samples
    (``(x - mean) / sqrt(var + 1e-7)``) and ``padding_value`` after them.

    ``return_attention_mask``: whether the encoder was trained with (and takes) an attention
    mask; the backbone reads it. ``max_length_s``: longer clips are cropped (``None``: any).
    Output ``(batch, time)``; lengths in samples.
    """

    def __init__(self, sampling_rate: int = 16000, do_normalize: bool = True, padding_value: float = 0.0,
                 return_attention_mask: bool = False, max_length_s: float | None = None) -> None:
        super().__init__(sampling_rate=int(sampling_rate), do_normalize=bool(do_normalize),
                         padding_value=float(padding_value), return_attention_mask=bool(return_attention_mask),
                         max_length_s=max_length_s)
        self.sampling_rate = int(sampling_rate)
        self.do_normalize = bool(do_normalize)
        self.padding_value = float(padding_value)
        self.return_attention_mask = bool(return_attention_mask)
        self.max_samples = None if max_length_s is None else int(round(max_length_s * sampling_rate))

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.max_samples is not None and waveform.shape[1] > self.max_samples:
            waveform = waveform[:, : self.max_samples]
            lengths = lengths.clamp(max=self.max_samples)
        mask = length_mask(lengths, waveform.shape[1])
        if self.do_normalize:
            weights = mask.to(waveform.dtype)
            count = lengths.to(waveform.dtype).clamp(min=1.0)[:, None]
            mean = (waveform * weights).sum(dim=1, keepdim=True) / count
            variance = ((waveform - mean).square() * weights).sum(dim=1, keepdim=True) / count
            waveform = (waveform - mean) / torch.sqrt(variance + 1e-7)
        values = torch.where(mask, waveform, torch.full_like(waveform, self.padding_value))
        return values, lengths


class WhisperLogMel(EncoderExtractor):
    """Whisper (``WhisperFeatureExtractor``): each clip zero-padded (or cropped) to
    ``chunk_length`` seconds, Hann STFT (``n_fft``, ``hop_length``, last frame dropped), power,
    Slaney mel (``feature_size`` bands, 0-8 kHz), ``log10(max(mel, 1e-10))`` floored 8 below the
    clip's maximum, ``(x + 4) / 4``. Output ``(batch, feature_size, chunk frames)``; lengths:
    frames that start inside the clip (``ceil(samples / hop)``)."""

    def __init__(self, sampling_rate: int = 16000, feature_size: int = 80, n_fft: int = 400, hop_length: int = 160,
                 chunk_length: int = 30) -> None:
        super().__init__(sampling_rate=int(sampling_rate), feature_size=int(feature_size), n_fft=int(n_fft),
                         hop_length=int(hop_length), chunk_length=int(chunk_length))
        from transformers.audio_utils import mel_filter_bank

        self.sampling_rate, self.n_fft, self.hop_length = int(sampling_rate), int(n_fft), int(hop_length)
        self.n_samples = int(chunk_length) * self.sampling_rate
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        filters = mel_filter_bank(num_frequency_bins=1 + n_fft // 2, num_mel_filters=feature_size, min_frequency=0.0,
                                  max_frequency=8000.0, sampling_rate=sampling_rate, norm="slaney", mel_scale="slaney")
        self.register_buffer("mel_filters", _buffer(filters.T), persistent=False)  # (mels, freqs)

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        time = waveform.shape[1]
        if time >= self.n_samples:
            waveform = waveform[:, : self.n_samples]
        else:
            waveform = nn.functional.pad(waveform, (0, self.n_samples - time))
        lengths = lengths.clamp(max=self.n_samples)
        stft = torch.stft(waveform, self.n_fft, self.hop_length, window=self.window, return_complex=True)
        power = stft[..., :-1].abs().square()
        log_spec = torch.clamp(self.mel_filters @ power, min=1e-10).log10()
        peak = log_spec.amax(dim=(1, 2), keepdim=True)
        log_spec = (torch.maximum(log_spec, peak - 8.0) + 4.0) / 4.0
        frames = torch.div(lengths + self.hop_length - 1, self.hop_length, rounding_mode="floor")
        return log_spec, frames.clamp(max=log_spec.shape[-1])


class ClapLogMel(EncoderExtractor):
    """CLAP's audio tower (``ClapFeatureExtractor``, unfused): each clip repeated to
    ``max_length_s`` (``padding="repeatpad"``: whole repeats, then zeros; ``"repeat"``: repeats
    cut at the end; ``"pad"``: zeros), longer clips cropped to their first ``max_length_s``
    seconds (the Hugging Face extractor crops at random: a training-time choice), centred Hann
    STFT (reflect padding), power, Slaney mel (``feature_size`` bands,
    ``frequency_min``-``frequency_max``), ``10 log10(max(mel, 1e-10))``.
    Output ``(batch, 1, frames, feature_size)``; every frame is valid (no padding left)."""

    def __init__(self, sampling_rate: int = 48000, feature_size: int = 64, fft_window_size: int = 1024,
                 hop_length: int = 480, max_length_s: float = 10, frequency_min: float = 50.0,
                 frequency_max: float = 14000.0, padding: str = "repeatpad") -> None:
        if padding not in ("repeatpad", "repeat", "pad"):
            raise ValueError(f"CLAP padding={padding!r}: use 'repeatpad', 'repeat' or 'pad'")
        super().__init__(sampling_rate=int(sampling_rate), feature_size=int(feature_size),
                         fft_window_size=int(fft_window_size), hop_length=int(hop_length),
                         max_length_s=max_length_s, frequency_min=float(frequency_min),
                         frequency_max=float(frequency_max), padding=padding)
        from transformers.audio_utils import mel_filter_bank

        self.sampling_rate, self.n_fft, self.hop_length = int(sampling_rate), int(fft_window_size), int(hop_length)
        self.max_samples = int(round(max_length_s * sampling_rate))
        self.padding = padding
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        filters = mel_filter_bank(num_frequency_bins=1 + self.n_fft // 2, num_mel_filters=feature_size,
                                  min_frequency=frequency_min, max_frequency=frequency_max,
                                  sampling_rate=sampling_rate, norm="slaney", mel_scale="slaney")
        self.register_buffer("mel_filters", _buffer(filters), persistent=False)  # (freqs, mels)

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if waveform.shape[1] < self.max_samples:
            waveform = nn.functional.pad(waveform, (0, self.max_samples - waveform.shape[1]))
        lengths = lengths.clamp(min=1, max=self.max_samples)
        positions = torch.arange(self.max_samples, device=waveform.device)[None, :]
        index = positions % lengths[:, None]
        if self.padding == "repeatpad":
            repeats = torch.div(torch.full_like(lengths, self.max_samples), lengths, rounding_mode="floor")
            keep = positions < (repeats * lengths)[:, None]
        elif self.padding == "pad":
            keep = positions < lengths[:, None]
        else:
            keep = torch.ones_like(index, dtype=torch.bool)
        filled = torch.gather(waveform, 1, index) * keep.to(waveform.dtype)
        stft = torch.stft(filled, self.n_fft, self.hop_length, window=self.window, center=True, pad_mode="reflect",
                          return_complex=True)
        mel = stft.abs().square().transpose(1, 2) @ self.mel_filters        # (batch, frames, mels)
        log_mel = 10.0 * torch.clamp(mel, min=1e-10).log10()
        return log_mel.unsqueeze(1), torch.full_like(lengths, log_mel.shape[1])


class SeamlessFbank(EncoderExtractor):
    """Wav2Vec2-BERT (``SeamlessM4TFeatureExtractor``): Kaldi log filterbank of the clip scaled
    to 16-bit range (25 ms Povey frames every 10 ms without edge padding, DC removal,
    pre-emphasis 0.97, 512-point FFT, ``num_mel_bins`` Kaldi mel bands from 20 Hz), normalised
    per band over the clip's frames (unbiased variance), padded frames set to ``padding_value``,
    then every ``stride`` frames stacked. Output ``(batch, frames // stride, stride * num_mel_bins)``;
    lengths in stacked frames."""

    def __init__(self, sampling_rate: int = 16000, num_mel_bins: int = 80, stride: int = 2,
                 padding_value: float = 1.0) -> None:
        super().__init__(sampling_rate=int(sampling_rate), num_mel_bins=int(num_mel_bins), stride=int(stride),
                         padding_value=float(padding_value))
        from transformers.audio_utils import mel_filter_bank, window_function

        self.sampling_rate, self.stride, self.padding_value = int(sampling_rate), int(stride), float(padding_value)
        self.frame_length, self.hop_length, self.fft_length = 400, 160, 512
        self.register_buffer("window", _buffer(window_function(400, "povey", periodic=False)), persistent=False)
        filters = mel_filter_bank(num_frequency_bins=257, num_mel_filters=num_mel_bins, min_frequency=20,
                                  max_frequency=sampling_rate // 2, sampling_rate=sampling_rate, norm=None,
                                  mel_scale="kaldi", triangularize_in_mel_space=True)
        self.register_buffer("mel_filters", _buffer(filters), persistent=False)  # (freqs, mels)

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if waveform.shape[1] < self.frame_length:
            waveform = nn.functional.pad(waveform, (0, self.frame_length - waveform.shape[1]))
        frames = (waveform * 32768.0).unfold(1, self.frame_length, self.hop_length)  # (batch, frames, 400)
        frames = frames - frames.mean(dim=2, keepdim=True)
        frames = torch.cat([frames[..., :1] * (1 - 0.97), frames[..., 1:] - 0.97 * frames[..., :-1]], dim=2)
        spectrum = torch.fft.rfft(frames * self.window, n=self.fft_length).abs().square()
        features = torch.clamp(spectrum @ self.mel_filters, min=1.192092955078125e-07).log()
        valid = torch.div(lengths - self.frame_length, self.hop_length, rounding_mode="floor") + 1
        valid = valid.clamp(min=1, max=features.shape[1])
        mask = length_mask(valid, features.shape[1]).unsqueeze(-1)
        weights = mask.to(features.dtype)
        count = valid.to(features.dtype)[:, None, None]
        mean = (features * weights).sum(dim=1, keepdim=True) / count
        variance = ((features - mean).square() * weights).sum(dim=1, keepdim=True) / (count - 1).clamp(min=1.0)
        features = (features - mean) / torch.sqrt(variance + 1e-7)
        features = torch.where(mask, features, torch.full_like(features, self.padding_value))
        usable = features.shape[1] - features.shape[1] % self.stride
        stacked = features[:, :usable].reshape(features.shape[0], -1, self.stride * features.shape[2])
        return stacked, torch.div(valid, self.stride, rounding_mode="floor")
