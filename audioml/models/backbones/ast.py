"""Audio Spectrogram Transformer (Gong et al., Interspeech 2021) via ``transformers.ASTModel``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from audioml.models.backbones.base import Backbone

__all__ = ["AudioSpectrogramTransformer"]


class AudioSpectrogramTransformer(Backbone):
    """AST: Kaldi fbank ``(batch, 1, num_mel_bins, max_length)`` -> tokens
    ``(batch, 2 + patches, hidden_size)`` ([CLS], distillation token, one per 16x16 patch).

    ``pool`` is the mean of the two leading tokens (the pooled output AST was fine-tuned
    with); a token head (``TransformerHead``) sees all tokens. Inputs with another number of
    frames are zero-padded or cropped to ``max_length`` (the position embeddings are fixed).

    Args:
        pretrained: load ``weights`` (registry record with a Hugging Face ``hub_repo``) with
            ``ASTModel.from_pretrained``; the architecture then comes from the checkpoint and
            ``config`` must be empty.
        weights: registry name (``"ast_audioset"``).
        weights_dir: cache folder for the Hugging Face download (``None``: its default cache).
        local_files_only: never touch the network (use what ``weights_dir`` already holds).
        config: ``ASTConfig`` arguments for a randomly initialised model (e.g. the tiny test
            preset: ``hidden_size``, ``num_hidden_layers``, ``max_length`` ...).
        num_classes: classes of the initial linear head (the task module replaces it).

    Raises ``ValueError`` for ``pretrained`` with a ``config``, and ``FileNotFoundError`` naming
    the repository, URL and folder when pretrained weights cannot be obtained (offline).
    """

    def __init__(self, pretrained: bool = False, weights: str | None = "ast_audioset",
                 weights_dir: str | None = None, local_files_only: bool = False,
                 config: Mapping[str, Any] | None = None, num_classes: int = 527) -> None:
        super().__init__()
        self.attach_pretrained_cfg(weights)
        from transformers import ASTConfig, ASTModel

        config = dict(config or {})
        if pretrained:
            if config:
                raise ValueError(f"model.backbone.config={config} describes a new architecture; pretrained "
                                 "weights bring their own. Set model.pretrained=false to use it.")
            self.model = self._from_pretrained(weights, weights_dir, local_files_only)
        else:
            self.model = ASTModel(ASTConfig(**config))
        self.max_length = int(self.model.config.max_length)
        self.num_mel_bins = int(self.model.config.num_mel_bins)
        self.num_features = int(self.model.config.hidden_size)
        self.reset_classifier(num_classes)

    @staticmethod
    def _from_pretrained(weights: str | None, weights_dir: str | None, local_files_only: bool) -> nn.Module:
        from transformers import ASTModel

        from audioml.models.pretrained import get_pretrained_cfg

        if not weights:
            raise ValueError("pretrained=true needs model.backbone.weights (a registry name)")
        cfg = get_pretrained_cfg(weights)
        if not cfg.hub_repo:
            raise ValueError(f"weights {weights!r} are not a Hugging Face repository; AST needs one")
        try:
            return ASTModel.from_pretrained(cfg.hub_repo, cache_dir=weights_dir, local_files_only=local_files_only)
        except (OSError, ValueError) as error:
            folder = weights_dir or "the Hugging Face cache (~/.cache/huggingface/hub)"
            raise FileNotFoundError(
                f"AST weights {cfg.hub_repo} ({cfg.url}) are not in {folder} and could not be downloaded "
                f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). Run once with "
                "network access, copy the repository snapshot into that folder, or use "
                "model.pretrained=false (random initialisation).") from error

    def forward_features(self, spec: torch.Tensor) -> torch.Tensor:
        if spec.shape[2] != self.num_mel_bins:
            raise ValueError(f"AST expects {self.num_mel_bins} mel bins, got {spec.shape[2]}")
        x = spec[:, 0].transpose(1, 2)                      # (batch, frames, mel)
        missing = self.max_length - x.shape[1]
        x = nn.functional.pad(x, (0, 0, 0, missing)) if missing > 0 else x[:, : self.max_length]
        return self.model(input_values=x).last_hidden_state

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        return 0.5 * (tokens[:, 0] + tokens[:, 1])
