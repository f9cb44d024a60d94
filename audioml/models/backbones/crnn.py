"""CRNN with additive attention for continuous emotion over a sequence of short windows (the
MuSe-Stress study): a small CNN per window, a BiLSTM across windows, attention over the
sequence."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from audioml.models.backbones.base import Backbone

__all__ = ["CRNNAttention", "AdditiveAttention"]


class AdditiveAttention(nn.Module):
    """Bahdanau attention over a sequence: ``score_t = v . tanh(W h_t + b)``; returns the
    context ``sum_t softmax(score)_t h_t`` ``(batch, dim)`` and the weights ``(batch, steps)``."""

    def __init__(self, dim: int, attention_dim: int = 128) -> None:
        super().__init__()
        self.project = nn.Linear(dim, attention_dim)
        self.score = nn.Linear(attention_dim, 1, bias=False)

    def forward(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = self.score(torch.tanh(self.project(states))).squeeze(-1).softmax(dim=1)
        return torch.einsum("bt,btd->bd", weights, states), weights


class CRNNAttention(Backbone):
    """Window sequences ``(batch, windows, 1, n_mels, frames)`` -> per-window deep features
    ``(batch, windows, 4 * lstm_hidden)`` (512 by default).

    Per window: conv blocks ``[Conv3x3 -> BN -> ELU -> MaxPool 2x2]`` (8, 16, 32 channels),
    mean over time -> (channels x frequency) vector. Across windows: a 2-layer bidirectional
    LSTM gives ``h_t`` (``2 * lstm_hidden``); additive attention gives the sequence context
    ``c``. Token ``t`` is ``[c; h_t]``; ``pool`` returns the last token ``[c; h_last]``, the
    sequence-level vector. A 4-D input ``(batch, 1, n_mels, frames)`` is one window per item.
    Set ``sequence_input`` for task modules: the backbone wants whole window sequences.

    Args:
        n_mels: mel bands per window (fixes the LSTM input width).
        channels: conv block widths.
        lstm_hidden, lstm_layers: BiLSTM size per direction and depth.
        attention_dim: hidden width of the attention scorer.
        dropout: between LSTM layers and on the conv output.
    """

    sequence_input = True

    def __init__(self, n_mels: int = 128, channels: Sequence[int] = (8, 16, 32), lstm_hidden: int = 128,
                 lstm_layers: int = 2, attention_dim: int = 128, dropout: float = 0.2, num_classes: int = 1) -> None:
        super().__init__()
        if n_mels < 2 ** len(channels):
            raise ValueError(f"n_mels={n_mels} is too small for {len(channels)} pooling blocks")
        layers: list[nn.Module] = []
        width = 1
        for out_channels in channels:
            layers += [nn.Conv2d(width, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ELU(inplace=True),
                       nn.MaxPool2d(2)]
            width = out_channels
        self.cnn = nn.Sequential(*layers)
        self.cnn_dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(width * (n_mels // 2 ** len(channels)), lstm_hidden, num_layers=lstm_layers,
                            batch_first=True, bidirectional=True, dropout=dropout if lstm_layers > 1 else 0.0)
        self.attention = AdditiveAttention(2 * lstm_hidden, attention_dim)
        self.num_features = 4 * int(lstm_hidden)
        #: Attention weights ``(batch, windows)`` of the last forward pass (for inspection).
        self.last_attention: torch.Tensor | None = None
        self.reset_classifier(num_classes)

    def window_embeddings(self, spec: torch.Tensor) -> torch.Tensor:
        """``(batch, windows, 1, n_mels, frames)`` -> CNN vectors ``(batch, windows, features)``."""
        batch, windows = spec.shape[:2]
        x = self.cnn(spec.flatten(0, 1))                      # (batch * windows, channels, mels', frames')
        x = self.cnn_dropout(x.mean(dim=3).flatten(1))
        return x.reshape(batch, windows, -1)

    def forward_features(self, spec: torch.Tensor) -> torch.Tensor:
        if spec.dim() == 4:
            spec = spec.unsqueeze(1)
        if spec.dim() != 5:
            raise ValueError(f"CRNNAttention expects (batch, windows, 1, n_mels, frames), got {tuple(spec.shape)}")
        states, _ = self.lstm(self.window_embeddings(spec))      # (batch, windows, 2 * hidden)
        context, weights = self.attention(states)
        self.last_attention = weights.detach()
        return torch.cat([context[:, None].expand_as(states), states], dim=-1)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, -1]
