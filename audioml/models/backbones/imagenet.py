"""ImageNet CNNs (timm) on spectrogram images: the transfer-learning baseline of the studies
(VGG16, Inception-v3)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from audioml.models.backbones.base import Backbone

__all__ = ["ImageNetCNN"]


class ImageNetCNN(Backbone):
    """Spectrogram ``(batch, 1, n_mels, frames)`` -> tokens ``(batch, columns, channels)``.

    The spectrogram becomes an image: resized (bilinear) to ``image_size`` x ``image_size``,
    scaled per clip to [0, 1], repeated to ``in_chans`` channels and normalised with the
    ImageNet ``mean``/``std``. The timm model's last feature map ``(channels, h, w)`` is
    averaged over its frequency axis: one token per time column; ``pool`` averages them.
    Classifier layers of the timm model (VGG's ``pre_logits`` too) are removed.

    Args:
        model_name: timm architecture (``vgg16``, ``inception_v3``, ...).
        image_size: side of the square input image (224 for VGG, 299 for Inception-v3).
        in_chans: 3 (repeat the spectrogram) or 1 (a 1-channel stem, adapted from RGB weights).
        mean, std: per-channel normalisation (ImageNet statistics of the weights).
        pretrained, weights, weights_dir: load registry checkpoint ``weights``
            (``timm_vgg16_tv_in1k``, ``timm_inception_v3_tv_in1k``).
    """

    def __init__(self, model_name: str = "vgg16", image_size: int = 224, in_chans: int = 3,
                 mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225),
                 pretrained: bool = False, weights: str | None = None, weights_dir: str | None = None,
                 num_classes: int = 2) -> None:
        super().__init__()
        self.attach_pretrained_cfg(weights)
        import timm

        if in_chans not in (1, 3):
            raise ValueError(f"in_chans={in_chans}: use 3 (repeated spectrogram) or 1 (adapted stem)")
        # A timm architecture name only: timm resolves "hf-hub:<repo>" / "local-dir:<path>" names by
        # fetching or reading their config, and the weights come from audioml's registry anyway.
        if not isinstance(model_name, str) or model_name not in timm.list_models():
            raise ValueError(f"model.backbone.model_name={model_name!r} is not a timm architecture name "
                             "(e.g. vgg16, inception_v3; hub or folder names are not accepted: weights come from "
                             "model.backbone.weights)")
        self.model = timm.create_model(model_name, pretrained=False, num_classes=0, in_chans=in_chans)
        if hasattr(self.model, "pre_logits"):  # VGG's fully connected layers: unused on feature maps
            self.model.pre_logits = nn.Identity()
        self.image_size = int(image_size)
        self.in_chans = int(in_chans)
        channel_mean = torch.tensor(list(mean), dtype=torch.float32)
        channel_std = torch.tensor(list(std), dtype=torch.float32)
        if in_chans == 1:
            channel_mean, channel_std = channel_mean.mean(0, keepdim=True), channel_std.mean(0, keepdim=True)
        self.register_buffer("mean", channel_mean[:, None, None], persistent=False)
        self.register_buffer("std", channel_std[:, None, None], persistent=False)
        self.num_features = int(self.model.feature_info[-1]["num_chs"])
        self.reset_classifier(num_classes)
        if pretrained:
            from audioml.models.pretrained import load_registered_weights

            load_registered_weights(self, weights, weights_dir)

    def image(self, spec: torch.Tensor) -> torch.Tensor:
        """``(batch, 1, n_mels, frames)`` -> normalised image ``(batch, in_chans, size, size)``."""
        size = (self.image_size, self.image_size)
        x = spec if tuple(spec.shape[-2:]) == size else nn.functional.interpolate(
            spec, size=size, mode="bilinear", align_corners=False)  # features=logmel_image: resized there
        low = x.amin(dim=(2, 3), keepdim=True)
        high = x.amax(dim=(2, 3), keepdim=True)
        x = (x - low) / (high - low).clamp(min=1e-6)
        return (x.expand(-1, self.in_chans, -1, -1) - self.mean) / self.std

    def forward_features(self, spec: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(self.image(spec)).mean(dim=2).transpose(1, 2)
