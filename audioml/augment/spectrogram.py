"""Spectrogram augmentations on ``(batch, 1, n_mels, frames)`` (masking; image-style zoom and
shifts) and mixup of inputs and targets."""

from __future__ import annotations

import torch
from torch import nn

from audioml.augment.base import RandomTransform, derive_seed, distributed_rank, seeded_randomness

__all__ = ["SpecAugment", "ZoomShift", "Mixup", "band_masks", "zoom_shift"]


def band_masks(batch: int, size: int, max_width: int, count: int, device: torch.device) -> torch.Tensor:
    """``count`` random bands per example along an axis of ``size`` bins, widths uniform in
    ``[0, max_width]``, starts uniform over the positions where the band fits.
    Returns a boolean ``(batch, size)`` mask (True = masked)."""
    if count == 0 or max_width == 0:
        return torch.zeros(batch, size, dtype=torch.bool, device=device)
    max_width = min(max_width, size)
    widths = (torch.rand(batch, count, device=device) * (max_width + 1)).floor().clamp(max=max_width)
    starts = (torch.rand(batch, count, device=device) * (size - widths + 1)).floor()
    positions = torch.arange(size, device=device, dtype=torch.float32)[None, None, :]
    inside = (positions >= starts[..., None]) & (positions < (starts + widths)[..., None])
    return inside.any(dim=1)


class SpecAugment(RandomTransform):
    """Frequency and time masking (Park et al. 2019, without time warping).

    Each selected example gets ``num_freq_masks`` bands of up to ``freq_mask_param`` mel bins and
    ``num_time_masks`` bands of up to ``time_mask_param`` frames (at most ``max_time_fraction``
    of the frames), filled with the example's mean (``fill="mean"``, neutral for log-mel, whose
    zero is not silence) or with 0 (``fill="zero"``).

    Input/output ``(batch, channels, n_mels, frames)``.
    """

    def __init__(self, freq_mask_param: int = 8, time_mask_param: int = 20, num_freq_masks: int = 2,
                 num_time_masks: int = 2, max_time_fraction: float = 1.0, fill: str = "mean",
                 p: float = 1.0) -> None:
        super().__init__(p)
        if fill not in ("mean", "zero"):
            raise ValueError(f"SpecAugment fill={fill!r}: use 'mean' or 'zero'")
        if min(freq_mask_param, time_mask_param, num_freq_masks, num_time_masks) < 0:
            raise ValueError("SpecAugment mask sizes and counts must be >= 0")
        self.freq_mask_param, self.time_mask_param = int(freq_mask_param), int(time_mask_param)
        self.num_freq_masks, self.num_time_masks = int(num_freq_masks), int(num_time_masks)
        self.max_time_fraction = float(max_time_fraction)
        self.fill = fill

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"SpecAugment expects (batch, channels, n_mels, frames), got {tuple(x.shape)}")
        batch, _, n_mels, frames = x.shape
        time_width = min(self.time_mask_param, int(self.max_time_fraction * frames))
        freq = band_masks(batch, n_mels, self.freq_mask_param, self.num_freq_masks, x.device)
        time = band_masks(batch, frames, time_width, self.num_time_masks, x.device)
        mask = (freq[:, None, :, None] | time[:, None, None, :])
        fill = x.mean(dim=(1, 2, 3), keepdim=True) if self.fill == "mean" else torch.zeros_like(x[:, :1, :1, :1])
        return torch.where(mask, fill, x)

    def extra_repr(self) -> str:
        return (f"freq_mask_param={self.freq_mask_param}, time_mask_param={self.time_mask_param}, "
                f"num_freq_masks={self.num_freq_masks}, num_time_masks={self.num_time_masks}, p={self.p}")


def zoom_shift(x: torch.Tensor, zoom: torch.Tensor, shift: torch.Tensor, fill: str = "nearest") -> torch.Tensor:
    """Zoom and shift each image of ``x`` ``(batch, channels, height, width)`` about its centre.

    Output pixel ``o`` (per axis, in pixels) samples the input at ``c + zoom * (o - c) + shift``,
    ``c = (size - 1) / 2``, with bilinear interpolation: ``zoom > 1`` shows more of the image
    (zooms out), as in Keras' ``ImageDataGenerator``. Outside the image the nearest edge pixel is
    used (``fill="nearest"``, Keras' default) or 0 (``fill="constant"``).

    Args:
        zoom: ``(batch, 2)`` factors along (height, width).
        shift: ``(batch, 2)`` offsets in pixels along (height, width).
    """
    if x.dim() != 4:
        raise ValueError(f"zoom_shift expects (batch, channels, height, width), got {tuple(x.shape)}")
    if fill not in ("nearest", "constant"):
        raise ValueError(f"zoom/shift fill={fill!r}: use 'nearest' or 'constant'")
    batch, _, height, width = x.shape
    zoom, shift = zoom.to(x.device, torch.float32), shift.to(x.device, torch.float32)
    theta = torch.zeros(batch, 2, 3, device=x.device)
    # affine_grid works in [-1, 1] coordinates over pixel centres (align_corners=True); its
    # first row is the width axis.
    theta[:, 0, 0], theta[:, 1, 1] = zoom[:, 1], zoom[:, 0]
    theta[:, 0, 2] = 2 * shift[:, 1] / max(width - 1, 1)
    theta[:, 1, 2] = 2 * shift[:, 0] / max(height - 1, 1)
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=True)
    return nn.functional.grid_sample(x.float(), grid, mode="bilinear", align_corners=True,
                                     padding_mode="border" if fill == "nearest" else "zeros").to(x.dtype)


class ZoomShift(RandomTransform):
    """Image-style augmentation of spectrograms (Keras ``ImageDataGenerator(zoom_range,
    width_shift_range, height_shift_range)``): per selected example, zoom factors along height
    and width drawn independently from ``U[1 - zoom, 1 + zoom]``, a width shift of
    ``U[-width_shift, width_shift] * frames`` pixels and a height shift of
    ``U[-height_shift, height_shift] * n_mels`` pixels; applied by ``zoom_shift``.

    Input/output ``(batch, channels, n_mels, frames)``. Raises ``ValueError`` for a negative
    range or ``zoom >= 1``.
    """

    def __init__(self, zoom: float = 0.05, width_shift: float = 0.02, height_shift: float = 0.02,
                 fill: str = "nearest", p: float = 1.0) -> None:
        super().__init__(p)
        if min(zoom, width_shift, height_shift) < 0 or zoom >= 1:
            raise ValueError(f"ZoomShift zoom={zoom}, width_shift={width_shift}, height_shift={height_shift}: "
                             "use ranges >= 0 (zoom < 1)")
        if fill not in ("nearest", "constant"):
            raise ValueError(f"ZoomShift fill={fill!r}: use 'nearest' or 'constant'")
        self.zoom, self.width_shift, self.height_shift = float(zoom), float(width_shift), float(height_shift)
        self.fill = fill

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"ZoomShift expects (batch, channels, n_mels, frames), got {tuple(x.shape)}")
        if self.zoom == self.width_shift == self.height_shift == 0.0:
            return x  # exactly the identity (resampling would round)
        batch, _, height, width = x.shape
        zoom = 1 + self.zoom * (2 * torch.rand(batch, 2, device=x.device) - 1)
        fractions = torch.tensor([self.height_shift, self.width_shift], device=x.device)
        shift = (2 * torch.rand(batch, 2, device=x.device) - 1) * fractions \
            * torch.tensor([height, width], device=x.device, dtype=torch.float32)
        return zoom_shift(x, zoom, shift, self.fill)

    def extra_repr(self) -> str:
        return (f"zoom={self.zoom}, width_shift={self.width_shift}, height_shift={self.height_shift}, "
                f"fill={self.fill}, p={self.p}")


class Mixup(nn.Module):
    """Mixup (Zhang et al. 2018) of a batch with a shuffled copy of itself.

    With probability ``p`` an example ``i`` becomes ``lam * x[i] + (1 - lam) * x[j]`` and its target
    ``lam * y[i] + (1 - lam) * y[j]``, with ``j`` a random permutation of the batch and ``lam``
    drawn per example from ``Beta(alpha, alpha)``; other examples keep ``lam = 1``. Targets come
    back as probabilities ``(batch, num_classes)``, which the classification losses accept.

    The classifier applies it to training spectrograms, after spectrogram augmentation.
    Seeded like ``AugmentationChain``: call ``n`` runs under ``derive_seed(seed, rank, n)``.

    Raises ``ValueError`` for ``alpha <= 0`` or ``p`` outside ``[0, 1]``.
    """

    def __init__(self, alpha: float = 0.4, p: float = 1.0, seed: int | None = None) -> None:
        super().__init__()
        if alpha <= 0:
            raise ValueError(f"Mixup alpha={alpha} must be > 0")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Mixup p={p} must be in [0, 1]")
        self.alpha, self.p = float(alpha), float(p)
        self.seed = None if seed is None else int(seed)
        self.calls = 0

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor,
                num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``inputs`` ``(batch, ...)``, ``targets`` class ids ``(batch,)`` or probabilities
        ``(batch, num_classes)`` -> mixed inputs (same shape and dtype) and probabilities."""
        soft = (nn.functional.one_hot(targets.long(), num_classes).float() if targets.dim() == 1
                else targets.float())
        if self.p == 0.0 or inputs.shape[0] < 2:
            return inputs, soft
        if self.seed is None:
            lam, partner = self._draw(inputs.shape[0])
        else:
            with seeded_randomness(derive_seed(self.seed, distributed_rank(), self.calls), torch.device("cpu")):
                lam, partner = self._draw(inputs.shape[0])
            self.calls += 1
        lam, partner = lam.to(inputs.device), partner.to(inputs.device)
        shape = (-1,) + (1,) * (inputs.dim() - 1)
        mixed = lam.view(shape).to(inputs.dtype) * inputs + (1 - lam.view(shape)).to(inputs.dtype) * inputs[partner]
        return mixed, lam[:, None] * soft + (1 - lam[:, None]) * soft[partner]

    def _draw(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """CPU draws (device-independent): per-example ``lam`` and the partner permutation."""
        lam = torch.distributions.Beta(self.alpha, self.alpha).sample((batch,))
        lam = torch.where(torch.rand(batch) < self.p, lam, torch.ones_like(lam))
        return lam, torch.randperm(batch)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, p={self.p}, seed={self.seed}"
