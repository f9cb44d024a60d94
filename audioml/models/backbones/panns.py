"""PANNs CNN14 (Kong et al., IEEE/ACM TASLP 2020): six double-conv blocks, 2048-d embedding.

Module names follow the published checkpoints (``bn0``, ``conv_block<i>.conv1`` ... ``fc1``);
their ``fc_audioset`` becomes ``head.fc`` and the front-end buffers they carry
(``spectrogram_extractor.*``, ``logmel_extractor.*``) are replaced by ``PannsLogMel``.
The 16 kHz checkpoint is the same network behind another front end (a YAML preset).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from audioml.models.backbones.base import Backbone, LayerStates

__all__ = ["Cnn14", "PannsConvBlock"]


class PannsConvBlock(nn.Module):
    """(Conv3x3 -> BN -> ReLU) x 2 -> average pool ``pool``."""

    def __init__(self, in_channels: int, out_channels: int, pool: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return nn.functional.avg_pool2d(x, self.pool) if self.pool > 1 else x


class Cnn14(Backbone):
    """PANNs CNN14: log-mel ``(batch, 1, n_mels, frames)`` -> time tokens
    ``(batch, frames / 32, channels[-1])``.

    As published: ``bn0`` normalises each mel band; the blocks run on ``(time, mel)`` images
    (kernels were trained in that orientation) with 2x2 average pooling except after the last
    block, dropout 0.2 after each; the mel axis is averaged away to give the tokens. ``pool``
    is ``max + mean`` over time -> dropout 0.5 -> ``fc1`` -> ReLU: the 2048-d embedding.

    Args:
        n_mels: mel bands of the front end (64 for the published weights).
        channels: output channels of the six blocks.
        num_classes: outputs of the native classifier (527 AudioSet classes).
        dropout: dropout after each conv block; ``embedding_dropout`` before ``fc1``.
        pretrained, weights, weights_dir: load registry checkpoint ``weights``
            (``panns_cnn14`` or ``panns_cnn14_16k``) from ``weights_dir``.
    """

    def __init__(self, n_mels: int | None = None, channels: Sequence[int] = (64, 128, 256, 512, 1024, 2048),
                 num_classes: int = 527, dropout: float = 0.2, embedding_dropout: float = 0.5,
                 pretrained: bool = False, weights: str | None = "panns_cnn14",
                 weights_dir: str | None = None) -> None:
        super().__init__()
        self.attach_pretrained_cfg(weights)
        if n_mels is None:  # the mel bands of the weights' front end
            n_mels = int(self.pretrained_cfg.frontend_args["n_mels"]) if self.pretrained_cfg else 64
        if len(channels) < 1:
            raise ValueError("model.backbone.channels must list at least one block")
        self.bn0 = nn.BatchNorm2d(n_mels)
        width = 1
        for index, out_channels in enumerate(channels, start=1):
            pool = 2 if index < len(channels) else 1
            self.add_module(f"conv_block{index}", PannsConvBlock(width, out_channels, pool))
            width = out_channels
        self.num_blocks = len(channels)
        self.fc1 = nn.Linear(width, width)
        self.num_features = int(width)
        self.dropout = nn.Dropout(dropout)
        self.embedding_dropout = nn.Dropout(embedding_dropout)
        self.reset_classifier(num_classes)
        self._init_weights()
        if pretrained:
            from audioml.models.pretrained import load_registered_weights

            load_registered_weights(self, weights, weights_dir)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_features(self, spec: torch.Tensor) -> torch.Tensor:
        return self.forward_layers(spec).layers[-1]

    def forward_layers(self, spec: torch.Tensor) -> LayerStates:
        """Each convolution block's output as time tokens ``(batch, frames', channels)`` (the
        mel axis averaged), input side first; the last block's are ``forward_features``."""
        if spec.shape[2] != self.bn0.num_features:
            raise ValueError(f"Cnn14 expects {self.bn0.num_features} mel bands, got {spec.shape[2]}")
        x = self.bn0(spec.transpose(1, 2)).permute(0, 2, 3, 1)     # (batch, 1, frames, mels)
        outputs = []
        for index in range(1, self.num_blocks + 1):
            x = self.dropout(getattr(self, f"conv_block{index}")(x))
            outputs.append(x.mean(dim=3).transpose(1, 2))          # (batch, frames', channels)
        return LayerStates(tuple(outputs))

    @property
    def layer_dims(self) -> tuple[int, ...]:
        return tuple(int(getattr(self, f"conv_block{i}").conv2.out_channels) for i in range(1, self.num_blocks + 1))

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        pooled = tokens.amax(dim=1) + tokens.mean(dim=1)
        return torch.relu(self.fc1(self.embedding_dropout(pooled)))
