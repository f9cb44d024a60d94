"""Convolutional autoencoder on spectrograms; its latent code is the embedding a small
feed-forward classifier is trained on (``audioml.models.autoencoder``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from audioml.models.backbones.base import Backbone

__all__ = ["ConvAutoencoder"]


class ConvAutoencoder(Backbone):
    """Spectrogram ``(batch, 1, n_mels, frames)`` -> latent token ``(batch, 1, latent_dim)``.

    The spectrogram is resized (bilinear) to ``input_size``; the encoder is
    ``[Conv3x3 stride 2 -> BN -> ReLU]`` per channel width, flatten, Linear -> latent; the
    decoder mirrors it with transposed convolutions back to ``input_size``. Encoder parameters
    come first, so ``freeze("from_latent")`` freezes the encoder only.

    Args:
        input_size: (height, width) the spectrogram is resized to (none when it has that size
            already, e.g. ``features=logmel_image``); multiples of ``2 ** len(channels)``.
            ``None``: 64 x 64 (the config passes ``features.image_size``, null for features
            that do not make an image).
        channels: encoder widths (the decoder reverses them).
        latent_dim: size of the code (= ``num_features``).
    """

    def __init__(self, input_size: Sequence[int] | None = None, channels: Sequence[int] = (16, 32, 64, 128),
                 latent_dim: int = 128, num_classes: int = 2) -> None:
        super().__init__()
        input_size = (64, 64) if input_size is None else input_size
        height, width = (int(v) for v in input_size)
        factor = 2 ** len(channels)
        if height % factor or width % factor:
            raise ValueError(f"input_size={list(input_size)} must be multiples of {factor} for {len(channels)} "
                             "stride-2 layers")
        self.input_size = (height, width)
        self.code_shape = (int(channels[-1]), height // factor, width // factor)
        encoder: list[nn.Module] = []
        in_channels = 1
        for out_channels in channels:
            encoder += [nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False),
                        nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
            in_channels = out_channels
        self.encoder = nn.Sequential(*encoder)
        flat = self.code_shape[0] * self.code_shape[1] * self.code_shape[2]
        self.to_latent = nn.Linear(flat, latent_dim)
        self.from_latent = nn.Linear(latent_dim, flat)
        decoder: list[nn.Module] = []
        widths = list(channels[::-1]) + [1]
        for index, (in_channels, out_channels) in enumerate(zip(widths[:-1], widths[1:])):
            decoder.append(nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1,
                                              bias=index == len(widths) - 2))
            if index < len(widths) - 2:
                decoder += [nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]
        self.decoder = nn.Sequential(*decoder)
        self.num_features = int(latent_dim)
        self.reset_classifier(num_classes)

    def resize(self, spec: torch.Tensor) -> torch.Tensor:
        """``(batch, 1, n_mels, frames)`` -> ``(batch, 1, *input_size)`` (the reconstruction target)."""
        if tuple(spec.shape[-2:]) == self.input_size:
            return spec
        return nn.functional.interpolate(spec, size=self.input_size, mode="bilinear", align_corners=False)

    def encode(self, spec: torch.Tensor) -> torch.Tensor:
        """Spectrogram -> latent code ``(batch, latent_dim)``."""
        return self.to_latent(self.encoder(self.resize(spec)).flatten(1))

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent code -> reconstruction ``(batch, 1, *input_size)``."""
        return self.decoder(self.from_latent(latent).reshape(-1, *self.code_shape))

    def reconstruction_loss(self, spec: torch.Tensor) -> torch.Tensor:
        """Mean squared error between the resized spectrogram and its reconstruction."""
        target = self.resize(spec)
        return nn.functional.mse_loss(self.decode(self.encode(target)), target)

    def forward_features(self, spec: torch.Tensor) -> torch.Tensor:
        return self.encode(spec).unsqueeze(1)
