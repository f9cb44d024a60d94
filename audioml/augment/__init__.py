"""Training-time augmentation: waveform and spectrogram transforms, mixup, offline copies.

Recipes live in ``conf/augmentation/``; each transform is a class here with its probability and
ranges as constructor arguments.
"""

from audioml.augment.base import AugmentationChain, RandomTransform, derive_seed, seeded_randomness
from audioml.augment.offline import OfflineAugmentation, copies_per_clip
from audioml.augment.spectrogram import Mixup, SpecAugment, ZoomShift, zoom_shift
from audioml.augment.waveform import (
    AddBackgroundNoise,
    AddColoredNoise,
    AddGaussianNoise,
    ApplyImpulseResponse,
    ClippingDistortion,
    Gain,
    PitchShift,
    PolarityInversion,
    Shift,
    TimeStretch,
    pitch_shift,
    time_stretch,
)

__all__ = ["AugmentationChain", "RandomTransform", "derive_seed", "seeded_randomness",
           "OfflineAugmentation", "copies_per_clip", "Mixup", "SpecAugment", "ZoomShift", "zoom_shift", "AddBackgroundNoise",
           "AddColoredNoise", "AddGaussianNoise", "ApplyImpulseResponse", "ClippingDistortion", "Gain",
           "PitchShift", "PolarityInversion", "Shift", "TimeStretch", "pitch_shift", "time_stretch"]
