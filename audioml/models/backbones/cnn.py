"""Scratch CNNs: the RAVDESS study's small CNN and a deeper configurable variant (presets)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from audioml.models.backbones.base import Backbone, LayerStates

__all__ = ["ScratchCNN"]


class ScratchCNN(Backbone):
    """Conv blocks ``[Conv3x3 (+BN) + ReLU (+Conv3x3 ...) + MaxPool]`` -> frequency pooling ->
    per-frame dense layer (``dense`` units, ReLU, dropout) -> time tokens; or, with
    ``input_size``, the whole conv map flattened into the dense layer (one token).

    ``forward_layers`` gives each block's output (after its max-pool) averaged over frequency,
    ``(batch, frames_l, channels_l)``, then the dense layer's tokens (``forward_features``).

    The RAVDESS study's network is ``channels=[32, 64]``, ``dense=128``: two conv + max-pool
    blocks, dense 128, dropout; on its fixed-size spectrogram images it flattens
    (``model=cnn_image``). Deeper presets add channels and ``convs_per_block``.

    Args:
        channels: output channels of each block (one max-pool per block).
        convs_per_block: convolutions in each block.
        batch_norm: BatchNorm after every convolution.
        dense: width of the dense layer (= ``num_features``).
        dropout: dropout after the dense layer.
        pool: max-pool kernel (frequency and time).
        input_size: ``(n_mels, frames)`` of a fixed-size input (e.g. ``features.image_size``):
            the conv output is flattened (Keras ``Flatten`` -> ``Dense``), so every input must
            have exactly this size (``ValueError`` otherwise); ``None``: any size, pooled.
        flatten: require ``input_size`` (``ValueError`` naming the fix when it is ``None``), so
            a flattening preset never falls back to pooling without saying so.
    """

    def __init__(self, channels: Sequence[int] = (32, 64), convs_per_block: int = 1,
                 batch_norm: bool = False, dense: int = 128, dropout: float = 0.3,
                 pool: int = 2, in_channels: int = 1, input_size: Sequence[int] | None = None,
                 flatten: bool = False) -> None:
        super().__init__()
        if not channels:
            raise ValueError("model.backbone.channels must list at least one block")
        if flatten and input_size is None:
            raise ValueError("model.backbone.flatten=true (model=cnn_image) flattens a fixed-size spectrogram image, "
                             "and model.backbone.input_size is null: use features=logmel_image, or set "
                             "features.image_size=[H,W] (or model.backbone.input_size)")
        layers: list[nn.Module] = []
        width = in_channels
        for out_channels in channels:
            for _ in range(convs_per_block):
                layers.append(nn.Conv2d(width, out_channels, 3, padding=1, bias=not batch_norm))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(out_channels))
                layers.append(nn.ReLU(inplace=True))
                width = out_channels
            layers.append(nn.MaxPool2d(pool))
        self.features = nn.Sequential(*layers)
        self._block_channels = tuple(int(c) for c in channels)
        self.input_size = None if input_size is None else (int(input_size[0]), int(input_size[1]))
        if self.input_size is not None:
            with torch.no_grad():
                out = self.features(torch.zeros(1, in_channels, *self.input_size))
            if out.numel() == 0:
                raise ValueError(f"model.backbone.input_size={list(self.input_size)} is too small for "
                                 f"{len(channels)} pooling blocks")
            width = out.numel()
        self.dense = nn.Sequential(nn.Linear(width, dense), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.num_features = int(dense)
        self.reset_classifier(2)

    def _check_size(self, spec: torch.Tensor) -> None:
        if self.input_size is not None and tuple(spec.shape[-2:]) != self.input_size:
            raise ValueError(f"ScratchCNN flattens inputs of {list(self.input_size)}, got "
                             f"{list(spec.shape[-2:])}: set model.backbone.input_size to the front end's "
                             "output size (features.image_size)")

    def _dense_tokens(self, maps: torch.Tensor) -> torch.Tensor:
        """Conv output ``(batch, channels, mels', frames')`` -> dense tokens."""
        if self.input_size is not None:
            return self.dense(maps.flatten(1)).unsqueeze(1)          # (batch, 1, dense)
        return self.dense(maps.mean(dim=2).transpose(1, 2))         # (batch, frames', dense)

    def forward_features(self, spec: torch.Tensor) -> torch.Tensor:
        self._check_size(spec)
        return self._dense_tokens(self.features(spec))

    def forward_layers(self, spec: torch.Tensor) -> LayerStates:
        self._check_size(spec)
        outputs = []
        x = spec
        for module in self.features:
            x = module(x)
            if isinstance(module, nn.MaxPool2d):  # the end of a block
                outputs.append(x.mean(dim=2).transpose(1, 2))
        outputs.append(self._dense_tokens(x))
        return LayerStates(tuple(outputs))

    @property
    def layer_dims(self) -> tuple[int, ...]:
        return (*self._block_channels, self.num_features)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        # Mean and max over time: the max keeps short events (a cry burst) visible.
        return 0.5 * (tokens.mean(dim=1) + tokens.amax(dim=1))
