"""EfficientAT MobileNetV3 audio taggers (``mn01`` ... ``mn40``: one class, width presets).

MobileNetV3-Large layout with one input channel, as trained by Schmid et al. (ICASSP 2023) on
AudioSet by knowledge distillation from transformers. Module names follow the published
checkpoints (``features.<i>.block.<j>``, ``conc_se_layers``) so their state dicts load strictly;
the published ``classifier.2`` / ``classifier.5`` layers become ``head.hidden`` / ``head.fc``
(see the registry record in ``audioml.models.pretrained``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from audioml.models.backbones.base import Backbone, LayerStates

__all__ = ["EfficientATMobileNet", "MobileNetClassifier", "make_divisible", "MOBILENET_V3_LARGE"]

#: Inverted-residual settings at width 1.0: (kernel, expanded, out, squeeze-excite, activation,
#: stride). Input channels chain from the previous block (16 after the stem).
MOBILENET_V3_LARGE: tuple[tuple[int, int, int, bool, str, int], ...] = (
    (3, 16, 16, False, "relu", 1),
    (3, 64, 24, False, "relu", 2),
    (3, 72, 24, False, "relu", 1),
    (5, 72, 40, True, "relu", 2),
    (5, 120, 40, True, "relu", 1),
    (5, 120, 40, True, "relu", 1),
    (3, 240, 80, False, "hardswish", 2),
    (3, 200, 80, False, "hardswish", 1),
    (3, 184, 80, False, "hardswish", 1),
    (3, 184, 80, False, "hardswish", 1),
    (3, 480, 112, True, "hardswish", 1),
    (3, 672, 112, True, "hardswish", 1),
    (5, 672, 160, True, "hardswish", 2),
    (5, 960, 160, True, "hardswish", 1),
    (5, 960, 160, True, "hardswish", 1),
)
_STEM_CHANNELS = 16
_HEAD_HIDDEN = 1280
_ACTIVATIONS = {"relu": nn.ReLU, "hardswish": nn.Hardswish}
_BatchNorm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to a multiple of ``divisor`` (at least ``divisor``), never more than
    10 % below ``value`` (the MobileNet channel rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class _ConvBNAct(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> optional activation; keys ``0.weight``, ``1.*``."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1,
                 groups: int = 1, activation: str | None = None) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            _BatchNorm(out_channels)]
        if activation is not None:
            layers.append(_ACTIVATIONS[activation](inplace=True))
        super().__init__(*layers)


class _ChannelExcitation(nn.Module):
    """Channel squeeze-and-excitation: mean over (freq, time) -> fc1 -> ReLU -> fc2 -> sigmoid
    -> rescale channels."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, squeeze)
        self.fc2 = nn.Linear(squeeze, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3))))))
        return x * scale[:, :, None, None]


class _SqueezeExcite(nn.Module):
    """Holds the channel excitation in ``conc_se_layers.0`` (the published key layout; the
    checkpoints use only the channel variant, so no aggregation over variants is needed)."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.conc_se_layers = nn.ModuleList([_ChannelExcitation(channels, make_divisible(channels // reduction))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conc_se_layers[0](x)


class _InvertedResidual(nn.Module):
    """[expand 1x1] -> depthwise kxk -> [squeeze-excite] -> project 1x1 (+ identity shortcut)."""

    def __init__(self, in_channels: int, kernel: int, expanded: int, out_channels: int, use_se: bool,
                 activation: str, stride: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if expanded != in_channels:
            layers.append(_ConvBNAct(in_channels, expanded, 1, activation=activation))
        layers.append(_ConvBNAct(expanded, expanded, kernel, stride, groups=expanded, activation=activation))
        if use_se:
            layers.append(_SqueezeExcite(expanded))
        layers.append(_ConvBNAct(expanded, out_channels, 1))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.residual else out


class MobileNetClassifier(nn.Module):
    """EfficientAT's AudioSet classifier on the pooled embedding: Linear -> Hardswish ->
    Dropout -> Linear. Factory signature ``(in_features, num_classes, hidden, dropout)``."""

    uses_tokens = False

    def __init__(self, in_features: int, num_classes: int, hidden: int = 512, dropout: float = 0.2) -> None:
        super().__init__()
        self.hidden = nn.Linear(in_features, hidden)
        self.activation = nn.Hardswish()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.activation(self.hidden(embedding))))


class EfficientATMobileNet(Backbone):
    """EfficientAT MobileNetV3: log-mel ``(batch, 1, n_mels, frames)`` -> time tokens
    ``(batch, frames / 32, 6 * last_block_channels)`` (384 for width 0.4).

    ``pool`` is the global average over frequency and time, as in EfficientAT; the native
    classifier is ``MobileNetClassifier`` (hidden ``make_divisible(1280 * width_mult)``).
    ``forward_layers`` gives the 17 outputs of ``features.0`` (stem) .. ``features.16`` (the
    last 1x1 conv), each averaged over frequency: ``(batch, frames / stride_l, channels_l)``.

    Args:
        width_mult: channel multiplier (0.4 for ``mn04``, 1.0 for ``mn10``).
        in_channels: input channels of the stem (1 for spectrograms).
        num_classes: outputs of the native classifier (527 AudioSet classes); the task
            module replaces the classifier with its own head.
        dropout: dropout of the native classifier.
        pretrained: load the checkpoint ``weights`` of ``audioml.models.pretrained``.
        weights: registry name of the checkpoint (e.g. ``"efficientat_mn04_as"``).
        weights_dir: folder for the checkpoint file (``None``: torch hub cache).
        strides: strides of the four down-sampling blocks.
    """

    def __init__(self, width_mult: float = 0.4, in_channels: int = 1, num_classes: int = 527,
                 dropout: float = 0.2, pretrained: bool = False, weights: str | None = "efficientat_mn04_as",
                 weights_dir: str | None = None, strides: Sequence[int] = (2, 2, 2, 2)) -> None:
        super().__init__()
        self.attach_pretrained_cfg(weights)
        if len(strides) != 4:
            raise ValueError(f"strides={list(strides)}: give the strides of the 4 down-sampling blocks")
        channels = make_divisible(_STEM_CHANNELS * width_mult)
        layers: list[nn.Module] = [_ConvBNAct(in_channels, channels, 3, stride=2, activation="hardswish")]
        widths = [channels]
        down = iter(strides)
        for kernel, expanded, out, use_se, activation, stride in MOBILENET_V3_LARGE:
            out_channels = make_divisible(out * width_mult)
            layers.append(_InvertedResidual(channels, kernel, make_divisible(expanded * width_mult), out_channels,
                                            use_se, activation, next(down) if stride == 2 else 1))
            channels = out_channels
            widths.append(channels)
        layers.append(_ConvBNAct(channels, 6 * channels, 1, activation="hardswish"))
        widths.append(6 * channels)
        self.features = nn.Sequential(*layers)
        self._layer_dims = tuple(widths)
        self.num_features = 6 * channels
        self.native_head = partial(MobileNetClassifier, hidden=make_divisible(_HEAD_HIDDEN * width_mult),
                                   dropout=dropout)
        self.reset_classifier(num_classes, self.native_head)
        self._init_weights()
        if pretrained:
            from audioml.models.pretrained import load_registered_weights

            load_registered_weights(self, weights, weights_dir)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward_features(self, spec: torch.Tensor) -> torch.Tensor:
        return self.features(spec).mean(dim=2).transpose(1, 2)

    def forward_layers(self, spec: torch.Tensor) -> LayerStates:
        outputs = []
        x = spec
        for block in self.features:
            x = block(x)
            outputs.append(x.mean(dim=2).transpose(1, 2))  # (batch, frames_l, channels_l)
        return LayerStates(tuple(outputs))

    @property
    def layer_dims(self) -> tuple[int, ...]:
        return self._layer_dims
