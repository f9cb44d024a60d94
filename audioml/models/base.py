"""What the audioml LightningModules share: a front end and a backbone whose classifier is
replaced by a head, freezing, the augmentation modules, and the optimiser/scheduler factories
that ``configure_optimizers`` turns into Lightning's optimiser configuration."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import lightning as L
import torch
from torch import nn

from audioml.models.backbones.base import Backbone, HeadFactory

__all__ = ["AudioModule", "OptimizerFactory", "NOT_HYPERPARAMETERS"]

OptimizerFactory = Callable[..., torch.optim.Optimizer]

#: Constructor arguments that are modules or factories, not hyperparameters to record.
NOT_HYPERPARAMETERS = ["backbone", "frontend", "head", "loss", "optimizer", "scheduler", "waveform_augment",
                       "spec_augment", "mixup"]


class AudioModule(L.LightningModule):
    """Base of ``AudioClassifier`` and ``SequenceRegressor`` (their docs list the arguments)."""

    def _build(self, backbone: Backbone, frontend: nn.Module, num_outputs: int, head: HeadFactory | None,
               freeze: str, optimizer: OptimizerFactory | None, scheduler: Callable | None,
               waveform_augment: nn.Module | None, spec_augment: nn.Module | None) -> None:
        self.frontend = frontend
        self.backbone = backbone
        self.backbone.reset_classifier(num_outputs, head)
        self.backbone.freeze(freeze)
        self.optimizer_factory = optimizer or partial(torch.optim.Adam, lr=1e-3)
        self.scheduler_factory = scheduler
        self.waveform_augment = waveform_augment
        self.spec_augment = spec_augment

    def configure_optimizers(self):
        optimizer = self.optimizer_factory([p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer),
                                 "monitor": self.hparams.scheduler_monitor,
                                 "interval": self.hparams.scheduler_interval}}
