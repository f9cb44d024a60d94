"""The encoders' input contracts against the trusted reference, the ``transformers`` feature
extractors themselves: each row of a padded batch equals that extractor on the clip alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import (
    ClapFeatureExtractor,
    SeamlessM4TFeatureExtractor,
    Wav2Vec2FeatureExtractor,
    WhisperFeatureExtractor,
)

from audioml.features.hf_extractors import (
    ClapLogMel,
    SeamlessFbank,
    WaveformNormalize,
    WhisperLogMel,
    left_aligned,
    valid_span,
)


def clips(rate: int, seconds: list[float], seed: int = 0) -> list[np.ndarray]:
    """Noisy tones of the given lengths (no exact zeros inside)."""
    generator = np.random.default_rng(seed)
    out = []
    for index, length in enumerate(seconds):
        t = np.arange(int(length * rate)) / rate
        out.append((0.3 * np.sin(2 * np.pi * (220 + 110 * index) * t) + 0.05 * generator.standard_normal(t.size)
                    + 0.01).astype(np.float32))
    return out


def padded(batch: list[np.ndarray], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    waveform = torch.zeros(len(batch), size)
    for row, clip in enumerate(batch):
        waveform[row, : clip.size] = torch.from_numpy(clip)
    return waveform, valid_span(waveform)[1]


def test_valid_span_and_left_alignment() -> None:
    waveform = torch.tensor([[0.0, 0.0, 1.0, 0.0, 2.0, 0.0], [3.0, 1.0, 1.0, 1.0, 1.0, 4.0], [0.0] * 6])
    start, length = valid_span(waveform)
    assert start.tolist() == [2, 0, 0] and length.tolist() == [3, 6, 6]
    assert left_aligned(waveform, start)[0].tolist() == [1.0, 0.0, 2.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("do_normalize", [True, False])
def test_waveform_normalize_equals_wav2vec2_extractor(do_normalize: bool) -> None:
    reference = Wav2Vec2FeatureExtractor(do_normalize=do_normalize)
    batch = clips(16000, [0.5, 0.31, 0.12])
    waveform, lengths = padded(batch, 8000)
    values, out_lengths = WaveformNormalize(do_normalize=do_normalize)(waveform, lengths)
    assert out_lengths.tolist() == [clip.size for clip in batch]
    for row, clip in enumerate(batch):
        expected = reference(clip, sampling_rate=16000, return_tensors="np").input_values[0]
        np.testing.assert_allclose(values[row, : clip.size].numpy(), expected, rtol=1e-4, atol=1e-4)
        assert torch.all(values[row, clip.size:] == 0)


def test_whisper_log_mel_equals_whisper_extractor() -> None:
    reference = WhisperFeatureExtractor(feature_size=80, chunk_length=2)
    batch = clips(16000, [1.5, 0.7])
    waveform, lengths = padded(batch, 24000)
    values, frames = WhisperLogMel(chunk_length=2)(waveform, lengths)
    assert values.shape == (2, 80, 200) and frames.tolist() == [150, 70]
    for row, clip in enumerate(batch):
        expected = reference(clip, sampling_rate=16000, return_tensors="np").input_features[0]
        np.testing.assert_allclose(values[row].numpy(), expected, rtol=1e-4, atol=2e-4)


def test_clap_log_mel_equals_clap_extractor() -> None:
    reference = ClapFeatureExtractor(feature_size=64, sampling_rate=48000, max_length_s=1, frequency_min=50,
                                     frequency_max=14000, truncation="rand_trunc", padding="repeatpad")
    batch = clips(48000, [0.4, 0.22])
    waveform, lengths = padded(batch, 48000)
    values, _ = ClapLogMel(max_length_s=1)(waveform, lengths)
    for row, clip in enumerate(batch):
        expected = reference(clip, sampling_rate=48000, return_tensors="np").input_features[0]
        assert values[row].shape == expected.shape
        np.testing.assert_allclose(values[row].numpy(), expected, rtol=1e-4, atol=2e-3)


def test_seamless_fbank_equals_w2v_bert_extractor() -> None:
    reference = SeamlessM4TFeatureExtractor(padding_value=1.0)
    batch = clips(16000, [0.5, 0.23])
    waveform, lengths = padded(batch, 8000)
    values, out_lengths = SeamlessFbank()(waveform, lengths)
    for row, clip in enumerate(batch):
        features = reference(clip, sampling_rate=16000, return_tensors="np")
        valid = int(features.attention_mask[0].sum())  # it pads to an even frame count, masked
        assert out_lengths[row] == valid
        np.testing.assert_allclose(values[row, :valid].numpy(), features.input_features[0, :valid], rtol=1e-3,
                                   atol=2e-3)
