"""A user's own model code, as a lab package would hold it (trusted by name with
``trusted_modules=[helpers]``): two layers ONNX cannot express, for the export tests."""

from __future__ import annotations

import torch
from torch import nn

from audioml.features import LogMel
from audioml.models.backbones.cnn import ScratchCNN


class MedianTimePool(nn.Module):
    """Median over time: ``aten.median`` has no ONNX translation."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.median(dim=1).values


class MedianPoolCNN(ScratchCNN):
    """The scratch CNN pooling its time tokens with ``MedianTimePool``."""

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.time_pool = MedianTimePool()

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.time_pool(tokens)


class SilenceGatedLogMel(LogMel):
    """Log-mel that answers silence (zeros) for a quiet batch: a Python branch on tensor values,
    which torch.export refuses and a trace freezes."""

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        spec = super().forward(waveform)
        if waveform.abs().amax() < 0.05:
            return torch.zeros_like(spec)
        return spec
