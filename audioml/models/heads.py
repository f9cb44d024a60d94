"""Classifier heads with the factory signature ``Head(in_features, num_classes, **options)``."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LinearHead", "MLPHead", "TransformerHead"]


class LinearHead(nn.Module):
    """Embedding ``(batch, in_features)`` -> logits ``(batch, num_classes)``."""

    uses_tokens = False

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(embedding))


class MLPHead(nn.Module):
    """Embedding -> [Linear, BatchNorm, ReLU, Dropout] per hidden size -> Linear -> logits."""

    uses_tokens = False

    def __init__(self, in_features: int, num_classes: int, hidden: int | list[int] = 256,
                 dropout: float = 0.3) -> None:
        super().__init__()
        sizes = [hidden] if isinstance(hidden, int) else list(hidden)
        layers: list[nn.Module] = []
        width = in_features
        for size in sizes:
            layers += [nn.Linear(width, size), nn.BatchNorm1d(size), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.net(embedding)


class TransformerHead(nn.Module):
    """Time tokens ``(batch, tokens, in_features)`` -> logits: projection, learned positions, a
    small Transformer encoder, linear classifier on the [CLS] output (``pooling="cls"``, a
    learned token prepended) or on the mean of the encoded tokens (``pooling="mean"``).

    Raises ``ValueError`` for another ``pooling``."""

    uses_tokens = True

    def __init__(self, in_features: int, num_classes: int, d_model: int = 128, num_layers: int = 2,
                 num_heads: int = 4, dropout: float = 0.1, max_tokens: int = 512,
                 pooling: str = "cls") -> None:
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"TransformerHead pooling={pooling!r}: use 'cls' or 'mean'")
        self.pooling = pooling
        self.project = nn.Linear(in_features, d_model)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model))
        self.positions = nn.Parameter(torch.randn(1, max_tokens + 1, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(d_model, num_heads, dim_feedforward=2 * d_model,
                                           dropout=dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] + 1 > self.positions.shape[1]:
            raise ValueError(f"TransformerHead got {tokens.shape[1]} tokens; raise max_tokens "
                             f"(now {self.positions.shape[1] - 1})")
        x = self.project(tokens)
        if self.pooling == "cls":
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.encoder(x + self.positions[:, : x.shape[1]])
        return self.fc(self.norm(x[:, 0] if self.pooling == "cls" else x.mean(dim=1)))
