"""Deterministic waveform preprocessing that belongs to a model's input contract.

``model.preprocess`` (config group ``preprocess``) is a ``WaveformPreprocess``; the model runs it
on every waveform before its front end, in training, evaluation, prediction and export alike,
and checkpoints carry it with the rest of the model's constructor config. Training-time
augmentation (``on_after_batch_transfer``) runs before it, so the model always sees inputs with
the declared level or statistics.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PeakNormalize", "PreEmphasis", "ZScore", "WaveformPreprocess", "Preprocessed"]


def _as_batch(waveform: torch.Tensor) -> torch.Tensor:
    if waveform.dim() == 3:  # (batch, 1, time)
        waveform = waveform.squeeze(1)
    if waveform.dim() != 2:
        raise ValueError(f"waveform preprocessing expects (batch, time), got {tuple(waveform.shape)}")
    return waveform


class PeakNormalize(nn.Module):
    """Scale each example so that its largest absolute sample is ``10 ** (level_db / 20)``
    (``level_db`` in dBFS, full scale = 1.0): ``(batch, time) -> (batch, time)``.
    All-zero examples are returned unchanged.

    Raises ``ValueError`` for ``level_db > 0`` (above full scale).
    """

    def __init__(self, level_db: float = -3.0) -> None:
        super().__init__()
        if level_db > 0:
            raise ValueError(f"preprocess peak level {level_db} dBFS is above full scale: use a value <= 0")
        self.level_db = float(level_db)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        waveform = _as_batch(waveform)
        peak = waveform.abs().amax(dim=1, keepdim=True)
        target = 10.0 ** (self.level_db / 20.0)
        return torch.where(peak > 0, waveform * (target / peak.clamp(min=torch.finfo(waveform.dtype).tiny)),
                           waveform)

    def extra_repr(self) -> str:
        return f"level_db={self.level_db}"


class PreEmphasis(nn.Module):
    """First-order high-pass ``y[n] = x[n] - coefficient * x[n - 1]``, ``y[0] = x[0]``, per
    example: ``(batch, time) -> (batch, time)``.

    Raises ``ValueError`` for a coefficient outside ``[0, 1)``.
    """

    def __init__(self, coefficient: float = 0.97) -> None:
        super().__init__()
        if not 0.0 <= coefficient < 1.0:
            raise ValueError(f"preprocess pre_emphasis={coefficient}: use a coefficient in [0, 1), e.g. 0.97")
        self.coefficient = float(coefficient)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        waveform = _as_batch(waveform)
        return torch.cat([waveform[:, :1], waveform[:, 1:] - self.coefficient * waveform[:, :-1]], dim=1)

    def extra_repr(self) -> str:
        return f"coefficient={self.coefficient}"


class ZScore(nn.Module):
    """Each example to zero mean and unit (population) standard deviation:
    ``(x - mean(x)) / (std(x) + eps)``, ``(batch, time) -> (batch, time)``."""

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = float(eps)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        waveform = _as_batch(waveform)
        mean = waveform.mean(dim=1, keepdim=True)
        std = waveform.std(dim=1, keepdim=True, correction=0)
        return (waveform - mean) / (std + self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class WaveformPreprocess(nn.Module):
    """The enabled steps in a fixed order: peak normalisation, pre-emphasis, z-scoring.

    A fixed order lets the ``preprocess`` config choices merge (``preprocess=[pre_emphasis,zscore]``
    sets two keys of one module). ``(batch, time) -> (batch, time)`` float32.

    Args:
        peak_dbfs: peak level in dBFS (``PeakNormalize``), or ``None``.
        pre_emphasis: coefficient of ``PreEmphasis``, or ``None``.
        zscore: per-example standardisation (``ZScore``).
    """

    def __init__(self, peak_dbfs: float | None = None, pre_emphasis: float | None = None,
                 zscore: bool = False) -> None:
        super().__init__()
        steps: list[nn.Module] = []
        if peak_dbfs is not None:
            steps.append(PeakNormalize(peak_dbfs))
        if pre_emphasis is not None:
            steps.append(PreEmphasis(pre_emphasis))
        if zscore:
            steps.append(ZScore())
        self.steps = nn.Sequential(*steps)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.steps(_as_batch(waveform).float())


class Preprocessed(nn.Module):
    """A front end behind waveform preprocessing: ``frontend(preprocess(waveform))``.

    Built by the task modules when ``model.preprocess`` is set, so everything that uses
    ``model.frontend`` (training, embedding caches, prediction, export) sees the same input.
    """

    def __init__(self, preprocess: nn.Module, frontend: nn.Module) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.frontend = frontend

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.frontend(self.preprocess(waveform))
