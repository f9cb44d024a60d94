"""Feature front ends: ``nn.Module``s mapping waveforms ``(batch, time)`` to spectrograms, and the
waveform preprocessing that runs before them (``model.preprocess``)."""

from audioml.features.logmel import LogMel
from audioml.features.preprocess import PeakNormalize, PreEmphasis, Preprocessed, WaveformPreprocess, ZScore

__all__ = ["LogMel", "PeakNormalize", "PreEmphasis", "Preprocessed", "WaveformPreprocess", "ZScore"]
