"""The one interface every backbone exposes (timm-style), its hidden layers (``LayerStates``),
plus freezing."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from audioml.models.heads import LayerHead, LinearHead, masked_mean

__all__ = ["Backbone", "HeadFactory", "LayerStates", "masked_mean"]

#: ``factory(in_features, num_classes) -> nn.Module``; see ``audioml.models.heads``.
HeadFactory = Callable[[int, int], nn.Module]


@dataclass(frozen=True)
class LayerStates:
    """Every hidden layer of a backbone for one batch, input side first.

    Attributes:
        layers: one ``(batch, tokens_l, dim_l)`` tensor per layer; the last one is what
            ``forward_features`` returns. Token counts and widths may differ between layers
            (a CNN's blocks) when ``mask`` is ``None``.
        mask: ``(batch, tokens)`` bool, True = a real frame (not padding), shared by every
            layer (all of which then have ``tokens`` tokens); ``None``: every token is real.
    """

    layers: tuple[torch.Tensor, ...]
    mask: torch.Tensor | None = None

    def pooled(self) -> tuple[torch.Tensor, ...]:
        """The mean over real tokens of each layer: ``(batch, dim_l)`` per layer."""
        return tuple(masked_mean(layer, self.mask) for layer in self.layers)


class Backbone(nn.Module, ABC):
    """Spectrogram ``(batch, 1, n_mels, frames)`` -> logits ``(batch, num_classes)``.

    Subclasses set ``num_features`` and implement ``forward_features`` (and, to expose their
    hidden layers, ``forward_layers`` and ``layer_dims``). The classifier is ``self.head``,
    built by ``reset_classifier``; a ``LayerHead`` receives ``forward_layers``' output, a head
    with ``uses_tokens = True`` the time tokens, any other head the pooled embedding.
    """

    num_features: int
    #: The backbone takes waveforms ``(batch, time)`` (its front end passes them through and its
    #: own extractor runs inside it), not spectrograms: spectrogram augmentation cannot apply.
    takes_waveform: bool = False
    #: The weights' record (``audioml.models.pretrained.PretrainedCfg``) when the architecture
    #: has registered weights, pretrained or not: its input contract (rate, front end) is the
    #: one source the model builds its front end from (timm's ``pretrained_cfg``).
    pretrained_cfg = None

    def __init__(self) -> None:
        super().__init__()
        self.head: nn.Module = nn.Identity()
        self.frozen_prefix: str | None = None

    def attach_pretrained_cfg(self, weights: str | None) -> None:
        """Attach the registry record called ``weights`` (``None``: none)."""
        from audioml.models.pretrained import get_pretrained_cfg

        self.pretrained_cfg = get_pretrained_cfg(weights) if weights else None

    @abstractmethod
    def forward_features(self, spec: torch.Tensor) -> torch.Tensor:
        """``(batch, 1, n_mels, frames)`` -> time tokens ``(batch, tokens, num_features)``."""

    def forward_layers(self, spec: torch.Tensor) -> LayerStates:
        """Every hidden layer for ``spec`` (what ``forward_features`` takes), input side first;
        the last layer equals ``forward_features(spec)``. Default: that one layer, no mask."""
        return LayerStates((self.forward_features(spec),))

    @property
    def layer_dims(self) -> tuple[int, ...]:
        """``dim_l`` of each layer of ``forward_layers``, known without running the model."""
        return (int(self.num_features),)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Time tokens ``(batch, tokens, num_features)`` -> embedding ``(batch, num_features)``."""
        return tokens.mean(dim=1)

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens -> logits, or the pooled embedding when ``pre_logits``."""
        if pre_logits:
            return self.pool(tokens)
        if getattr(self.head, "uses_tokens", False):
            return self.head(tokens)
        return self.head(self.pool(tokens))

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        if isinstance(self.head, LayerHead):
            return self.head(self.forward_layers(spec))
        return self.forward_head(self.forward_features(spec))

    def reset_classifier(self, num_classes: int, head: HeadFactory | None = None) -> None:
        """Replace the classifier by ``head(num_features, num_classes)`` (linear by default); a
        ``LayerHead`` factory also receives ``layer_dims`` and reads ``forward_layers``."""
        factory = head if head is not None else LinearHead
        head_class = factory.func if isinstance(factory, partial) else factory
        if isinstance(head_class, type) and issubclass(head_class, LayerHead):
            self.head = factory(self.num_features, num_classes, layer_dims=self.layer_dims)
        else:
            self.head = factory(self.num_features, num_classes)

    def rebuild_config(self) -> dict[str, Any]:
        """Constructor arguments, as plain data, that rebuild this backbone's architecture and
        input contract with no download and no file read (what it loaded from its weights'
        source); merged into ``model.backbone`` of the checkpoint record. Default: none needed."""
        return {}

    def optimizer_groups(self) -> list[tuple[float, list[nn.Parameter]]]:
        """The trainable parameters (head included) as ``(learning-rate scale, parameters)``
        groups; default: one group at scale 1."""
        return [(1.0, [p for p in self.parameters() if p.requires_grad])]

    def backbone_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Named parameters outside the head, in registration (input-to-output) order."""
        return [(name, p) for name, p in self.named_parameters() if not name.startswith("head.")]

    def freeze(self, mode: str = "none") -> None:
        """``"none"``: train everything; ``"all"``: train the head only; a parameter-name prefix
        (e.g. ``"features.12"``): freeze everything before the first parameter with that prefix.

        Frozen BatchNorm layers stay in eval mode (running statistics untouched) while training.
        Raises ``ValueError`` for a prefix that matches no parameter.
        """
        named = self.backbone_parameters()
        for _, parameter in named:
            parameter.requires_grad_(True)
        self.frozen_prefix = None
        if mode in (None, "none"):
            return
        if mode == "all":
            boundary = len(named)
        else:
            matches = [i for i, (name, _) in enumerate(named) if name == mode or name.startswith(mode + ".")]
            if not matches:
                sample = sorted({name.rsplit(".", 2)[0] for name, _ in named})[:12]
                raise ValueError(f"model.freeze={mode!r} matches no backbone parameter; use 'all', "
                                 f"'none' or a block name such as {sample}")
            boundary = matches[0]
        for _, parameter in named[:boundary]:
            parameter.requires_grad_(False)
        self.frozen_prefix = mode
        self.train(self.training)

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        if mode and self.frozen_prefix is not None:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    if not any(p.requires_grad for p in module.parameters(recurse=False)):
                        module.eval()
        return self
