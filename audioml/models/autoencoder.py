"""Two-stage model: a convolutional autoencoder learns the spectrograms (reconstruction), then a
feed-forward classifier is trained on its frozen latent codes. One command runs both."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch

from audioml.models.backbones.autoencoder import ConvAutoencoder
from audioml.models.base import NOT_HYPERPARAMETERS, EpochMeans
from audioml.models.classifier import AudioClassifier

log = logging.getLogger(__name__)

__all__ = ["AutoencoderClassifier"]

#: Prefix of the metrics logged in the reconstruction stage (``pretrain/train/loss`` ...).
PRETRAIN_PREFIX = "pretrain"


class AutoencoderClassifier(AudioClassifier):
    """``AudioClassifier`` over a ``ConvAutoencoder`` with a reconstruction stage first.

    Stage 1 (``stage="reconstruction"``, run by ``fit_pretraining_stage``): encoder and
    decoder minimise the MSE between the (resized) spectrogram and its reconstruction for
    ``pretrain_epochs``; logged as ``pretrain/train/loss`` and ``pretrain/val/loss``.
    Stage 2 (``stage="classification"``, the entry point's ordinary ``fit``): the autoencoder
    is frozen (BatchNorm in eval) and only the head (e.g. MLP 256-128-64) learns from the latent
    codes, with the usual classification metrics. Both stages log to the same logger (one MLflow
    run). Outside training the model is a classifier (``forward`` gives logits).

    Args:
        backbone: a ``ConvAutoencoder``.
        pretrain_epochs: epochs of stage 1.
        pretrain_optimizer: optimizer factory of stage 1 (the classifier's when ``None``).
        Others: as ``AudioClassifier``. ``freeze`` applies to stage 2 and defaults to ``"all"``
        (the latent codes stay fixed).
    """

    def __init__(self, backbone: ConvAutoencoder, *args, pretrain_epochs: int = 10,
                 pretrain_optimizer: Callable | None = None, freeze: str = "all", **kwargs) -> None:
        if not isinstance(backbone, ConvAutoencoder):
            raise TypeError(f"AutoencoderClassifier needs a ConvAutoencoder backbone, got {type(backbone).__name__}")
        if pretrain_epochs < 1:
            raise ValueError(f"model.pretrain_epochs={pretrain_epochs} must be >= 1")
        super().__init__(backbone, *args, freeze=freeze, **kwargs)
        self.save_hyperparameters(ignore=[*NOT_HYPERPARAMETERS, "pretrain_optimizer"])
        self.pretrain_epochs = int(pretrain_epochs)
        self.pretrain_optimizer_factory = pretrain_optimizer
        self.stage_freeze = freeze
        self.stage = "classification"
        self.pretrain_means = EpochMeans([f"{PRETRAIN_PREFIX}/train/loss", f"{PRETRAIN_PREFIX}/val/loss"])

    # ------------------------------------------------------------------------- stage control
    def fit_pretraining_stage(self, datamodule: L.LightningDataModule, make_trainer: Callable[..., L.Trainer],
                              resume_checkpoint: str | Path | None = None) -> None:
        """Run stage 1, then switch to stage 2 (autoencoder frozen as ``freeze`` says).

        The entry point calls this before its own ``fit`` (and before any embedding cache is
        built, so cached latent codes come from the trained encoder).

        Args:
            datamodule: the run's data (its training and validation splits).
            make_trainer: ``(**overrides) -> Trainer`` built like the run's trainer, logging to the
                run's logger; called with ``max_epochs``, ``callbacks=[]``,
                ``enable_checkpointing=False``.
            resume_checkpoint: the run resumes stage 2 from this Lightning checkpoint: stage 1 is
                skipped and the trained autoencoder is loaded from it right away.
        """
        if resume_checkpoint is not None:
            state = torch.load(resume_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
            self.load_state_dict(state)
            log.info("resuming the classifier stage from %s; autoencoder stage skipped", resume_checkpoint)
        else:
            self.stage = "reconstruction"
            self.backbone.freeze("none")
            trainer = make_trainer(max_epochs=self.pretrain_epochs, callbacks=[], enable_checkpointing=False)
            trainer.fit(self, datamodule=datamodule)
            log.info("autoencoder stage done after %d epochs", self.pretrain_epochs)
        self.stage = "classification"
        self.backbone.freeze(self.stage_freeze)

    def _reconstruction_step(self, waveform: torch.Tensor, stage: str) -> torch.Tensor:
        loss = self.backbone.reconstruction_loss(self.spectrogram(waveform))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"reconstruction loss is {loss.item()}: lower the learning rate")
        self.pretrain_means.update(f"{PRETRAIN_PREFIX}/{stage}/loss", loss, waveform.shape[0])
        return loss

    def reconstruction_loss(self, waveform: torch.Tensor) -> torch.Tensor:
        """Stage-1 objective on a waveform batch ``(batch, time)``."""
        return self.backbone.reconstruction_loss(self.spectrogram(waveform))

    # ------------------------------------------------------------------------------ the steps
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        if self.stage == "reconstruction":
            return self._reconstruction_step(batch[0], "train")
        return super().training_step(batch, batch_idx)

    def _log_pretrain_loss(self, stage: str) -> None:
        name = f"{PRETRAIN_PREFIX}/{stage}/loss"
        if (value := self.pretrain_means.pop(name)) is not None:
            self.log(name, value, prog_bar=True, sync_dist=True)

    def on_train_epoch_end(self) -> None:
        if self.stage == "reconstruction":
            self._log_pretrain_loss("train")
        else:
            super().on_train_epoch_end()

    def validation_step(self, batch, batch_idx: int) -> None:
        if self.stage == "reconstruction":
            self._reconstruction_step(batch[0], "val")
            return
        super().validation_step(batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        if self.stage == "reconstruction":
            self._log_pretrain_loss("val")
        else:
            super().on_validation_epoch_end()

    def configure_optimizers(self):
        if self.stage == "reconstruction":
            factory = self.pretrain_optimizer_factory or self.optimizer_factory
            return factory([p for _, p in self.backbone.backbone_parameters() if p.requires_grad])
        return super().configure_optimizers()
