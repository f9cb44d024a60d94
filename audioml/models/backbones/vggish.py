"""VGGish (Hershey et al., ICASSP 2017): a VGG on 0.96 s log-mel examples -> 128-d embeddings.

Module names follow the public PyTorch port's checkpoint (``features.<i>``, ``embeddings.<i>``).
Each 96-frame x 64-band example of ``VGGishLogMel`` output is one time token; the PCA and
8-bit quantisation applied to AudioSet's released embeddings are not part of the network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from audioml.models.backbones.base import Backbone, LayerStates

__all__ = ["VGGish"]

#: Conv widths; "M" = 2x2 max pool. Four pools turn a 96 x 64 example into 6 x 4.
_VGGISH_LAYERS: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M")


class VGGish(Backbone):
    """VGGish: log-mel ``(batch, 1, 64, frames)`` -> one token per 0.96 s example
    ``(batch, frames // 96, 128)``; ``pool`` averages the examples.

    Frames beyond the last whole example are dropped, as VGGish does; a clip shorter than one
    example is zero-padded (in log-mel units of the front end) to one. The conv output of an
    example ``(512, 6, 4)`` is flattened in (time, mel, channel) order, the layout the
    TensorFlow-trained weights expect, before ``embeddings`` (4096 -> 4096 -> 128, ReLU each).

    Args:
        example_frames: frames per example (96 = 0.96 s at a 10 ms hop).
        n_mels: bands per frame (64).
        embedding_sizes: widths of the fully connected layers (the last is ``num_features``).
        num_classes: classes of the initial linear head (the task module replaces it).
        pretrained, weights, weights_dir: load registry checkpoint ``weights`` (``vggish``).
    """

    def __init__(self, example_frames: int = 96, n_mels: int = 64,
                 embedding_sizes: Sequence[int] = (4096, 4096, 128), num_classes: int = 2,
                 pretrained: bool = False, weights: str | None = "vggish", weights_dir: str | None = None) -> None:
        super().__init__()
        self.attach_pretrained_cfg(weights)
        self.example_frames = int(example_frames)
        self.n_mels = int(n_mels)
        layers: list[nn.Module] = []
        width = 1
        for item in _VGGISH_LAYERS:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(width, int(item), 3, padding=1), nn.ReLU(inplace=True)]
                width = int(item)
        self.features = nn.Sequential(*layers)
        pools = _VGGISH_LAYERS.count("M")
        if self.example_frames % 2 ** pools or self.n_mels % 2 ** pools:
            raise ValueError(f"example_frames and n_mels must be multiples of {2 ** pools}")
        flat = width * (self.example_frames // 2 ** pools) * (self.n_mels // 2 ** pools)
        embedding: list[nn.Module] = []
        for size in embedding_sizes:
            embedding += [nn.Linear(flat, int(size)), nn.ReLU(inplace=True)]
            flat = int(size)
        self.embeddings = nn.Sequential(*embedding)
        self.num_features = flat
        self.reset_classifier(num_classes)
        if pretrained:
            from audioml.models.pretrained import load_registered_weights

            load_registered_weights(self, weights, weights_dir)

    def examples(self, spec: torch.Tensor) -> torch.Tensor:
        """``(batch, 1, n_mels, frames)`` -> ``(batch, n_examples, 1, example_frames, n_mels)``."""
        if spec.shape[2] != self.n_mels:
            raise ValueError(f"VGGish expects {self.n_mels} mel bands, got {spec.shape[2]}")
        frames = spec.shape[-1]
        if frames < self.example_frames:
            spec = nn.functional.pad(spec, (0, self.example_frames - frames))
        count = spec.shape[-1] // self.example_frames
        x = spec[..., : count * self.example_frames].reshape(spec.shape[0], self.n_mels, count, self.example_frames)
        return x.permute(0, 2, 3, 1).unsqueeze(2)

    def forward_features(self, spec: torch.Tensor) -> torch.Tensor:
        examples = self.examples(spec)
        batch, count = examples.shape[:2]
        x = self.features(examples.flatten(0, 1))          # (batch * count, 512, 6, 4)
        x = x.permute(0, 2, 3, 1).flatten(1)               # (time, mel, channel) order
        return self.embeddings(x).reshape(batch, count, -1)

    def forward_layers(self, spec: torch.Tensor) -> LayerStates:
        """Each convolution block's output (its channels averaged over the example's time and
        mel positions: one token per 0.96 s example), then the embedding; input side first."""
        examples = self.examples(spec)
        batch, count = examples.shape[:2]
        x, outputs = examples.flatten(0, 1), []
        for module in self.features:
            x = module(x)
            if isinstance(module, nn.MaxPool2d):  # the end of a block
                outputs.append(x.mean(dim=(2, 3)).reshape(batch, count, -1))
        x = x.permute(0, 2, 3, 1).flatten(1)
        outputs.append(self.embeddings(x).reshape(batch, count, -1))
        return LayerStates(tuple(outputs))

    @property
    def layer_dims(self) -> tuple[int, ...]:
        widths, width = [], 1
        for item in _VGGISH_LAYERS:
            if item == "M":
                widths.append(width)
            else:
                width = int(item)
        return (*widths, self.num_features)
