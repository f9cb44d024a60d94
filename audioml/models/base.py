"""What the audioml LightningModules share: a front end and a backbone whose classifier is
replaced by a head, freezing, the augmentation modules, and the optimiser/scheduler factories
that ``configure_optimizers`` turns into Lightning's optimiser configuration."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import lightning as L
import torch
from torch import nn

from audioml.features.preprocess import Preprocessed
from audioml.models.backbones.base import Backbone, HeadFactory
from audioml.models.schedules import WarmupCosine

__all__ = ["AudioModule", "TestOutputs", "EpochMeans", "OptimizerFactory", "NOT_HYPERPARAMETERS",
           "persist_metric_states"]

OptimizerFactory = Callable[..., torch.optim.Optimizer]

#: Constructor arguments that are modules or factories, not hyperparameters to record.
NOT_HYPERPARAMETERS = ["backbone", "frontend", "head", "loss", "optimizer", "scheduler", "waveform_augment",
                       "spec_augment", "mixup", "preprocess"]


def persist_metric_states(module: nn.Module) -> None:
    """Make the accumulated states of every ``torchmetrics.Metric`` in ``module`` part of its
    ``state_dict`` (``Metric.persistent``), so checkpoints carry them and resume restores them
    through ``load_state_dict``."""
    import torchmetrics

    for sub in module.modules():
        if isinstance(sub, torchmetrics.Metric):
            sub.persistent(True)


def contract_frontend(backbone: Backbone, sample_rate: int) -> nn.Module:
    """The front end of the backbone's weights record (``frontend=None``), checked against the
    model's ``sample_rate``."""
    record = getattr(backbone, "pretrained_cfg", None)
    if record is None or not record.frontend_target:
        raise ValueError(f"model.frontend is null, but {type(backbone).__name__} has no weights record with a "
                         "front end: set model.frontend (e.g. frontend: ${features})")
    if record.sample_rate and int(sample_rate) != record.sample_rate:
        raise ValueError(f"model.sample_rate={sample_rate}, but the weights {record.name!r} take "
                         f"{record.sample_rate} Hz audio: leave model.sample_rate to the record")
    return record.build_frontend()


class EpochMeans(nn.Module):
    """Epoch means of per-batch values (losses), one ``torchmetrics.MeanMetric`` per name.

    Their states are persistent (part of ``state_dict``), so a checkpoint written mid-epoch
    carries the partial sums and a resumed epoch reports the mean of all its batches; in DDP
    ``compute`` syncs them across ranks. (Lightning's own ``self.log(on_epoch=True)``
    accumulation lives in private trainer state that no public API saves.)
    """

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        import torchmetrics

        self.names = list(names)
        self.means = nn.ModuleList([torchmetrics.MeanMetric() for _ in self.names])
        for mean in self.means:
            mean.persistent(True)

    def update(self, name: str, value: torch.Tensor, weight: int) -> None:
        self.means[self.names.index(name)].update(value.detach(), weight)

    def pop(self, name: str) -> torch.Tensor | None:
        """The epoch mean of ``name`` (``None`` when nothing was added), then reset."""
        mean = self.means[self.names.index(name)]
        if mean.update_count == 0 and not bool(mean.weight):
            return None
        value = mean.compute()
        mean.reset()
        return value


@dataclass(frozen=True)
class TestOutputs:
    """What a model scored in its last test, in loader order, on the CPU.

    ``names``: class (classifier) or target (regressor) names; ``targets``: class indices ``(n,)``
    or class probabilities ``(n, classes)``, a regressor's ``(n, windows, targets)``;
    ``probabilities``: a classifier's ``(n, classes)``; ``confusion``: its ``(classes, classes)``
    matrix, rows true; ``predictions``: a regressor's, shaped as its targets."""

    names: tuple[str, ...]
    targets: torch.Tensor
    probabilities: torch.Tensor | None = None
    confusion: torch.Tensor | None = None
    predictions: torch.Tensor | None = None


class AudioModule(L.LightningModule):
    """Base of ``AudioClassifier`` and ``SequenceRegressor`` (their docs list the arguments),
    and what the run layer may ask of any of them (``test_outputs``, ``embed``, the fitting
    steps before training).

    ``extra_input``: a module computing a second, clip-level input of the head from the
    waveform (``audioml.features.smile.SmileInput``, ``model.head.extra_features``), or ``None``;
    ``fit_extra_input`` fits its standardisation on the training clips before training."""

    #: ``None``: batches hold waveforms; ``"pooled"``, ``"tokens"`` or ``"layers"``: they hold the
    #: cached outputs of the frozen front end and backbone, and only the head runs
    #: (``audioml.models.embedding_cache``).
    embedding_input: str | None = None
    #: Whether ``embed`` gives the pooled backbone embedding of a batch (for the test's PCA figure).
    embeds: bool = False

    def test_outputs(self) -> TestOutputs | None:
        """What the last test scored (``None`` before a test)."""
        return None

    def embed(self, waveform: torch.Tensor) -> torch.Tensor:
        """``(batch, time)`` -> pooled backbone embedding ``(batch, features)``, where ``embeds``."""
        raise NotImplementedError(f"{type(self).__name__} gives no embedding (embeds=False)")

    def fit_feature_statistics(self, batches: Iterable[torch.Tensor]) -> None:
        """Fit normalisation statistics through the model's own front end on training
        ``batches`` (``AudioDataModule.statistics_batches``); nothing to fit by default."""

    def fit_pretraining_stage(self, datamodule: L.LightningDataModule, make_trainer: Callable[..., L.Trainer],
                              resume_checkpoint: str | Path | None = None) -> None:
        """A stage trained before the run's own fit (an autoencoder's reconstruction); none by default."""

    def fit_extra_input(self, training_batches) -> None:
        """Fit ``extra_input`` (``(batch, time)`` waveform batches of the training clips); nothing
        to do without one."""
        if self.extra_input is not None:
            self.extra_input.fit(training_batches)

    def _build(self, backbone: Backbone, frontend: nn.Module | None, num_outputs: int, head: HeadFactory | None,
               freeze: str, optimizer: OptimizerFactory | None, scheduler: Callable | None,
               waveform_augment: nn.Module | None, spec_augment: nn.Module | None, sample_rate: int,
               preprocess: nn.Module | None = None, augment_preprocessed: bool = False) -> None:
        #: set by a task module whose head takes a second input (class docstring); ``None`` here
        self.extra_input: nn.Module | None = None
        if spec_augment is not None and backbone.takes_waveform:
            raise ValueError(f"spectrogram augmentation ({type(spec_augment).__name__}) cannot apply: "
                             f"{type(backbone).__name__} takes waveforms (its extractor runs inside it); use waveform "
                             "augmentation "
                             "(augmentation=waveform) or the encoder's own time masking "
                             "(model.backbone.config={mask_time_prob:0.05})")
        frontend = frontend if frontend is not None else contract_frontend(backbone, sample_rate)
        # Waveform preprocessing is part of the front end: every path through model.frontend
        # (training, embedding caches, prediction, export) applies it.
        if preprocess is not None and len(getattr(preprocess, "steps", [preprocess])) == 0:
            preprocess = None  # preprocess=none: the same model (keys, embedding cache) as no preprocess
        self.frontend = frontend if preprocess is None else Preprocessed(preprocess, frontend)
        self.backbone = backbone
        self.backbone.reset_classifier(num_outputs, head)
        self.backbone.freeze(freeze)
        self.optimizer_factory = optimizer or partial(torch.optim.Adam, lr=1e-3)
        self.scheduler_factory = scheduler
        self.waveform_augment = waveform_augment
        self.spec_augment = spec_augment
        self.augment_preprocessed = bool(augment_preprocessed)
        self.epoch_means = EpochMeans([f"{stage}/loss" for stage in ("train", "val", "test")])

    def _preprocessed_batches(self) -> bool:
        """Whether this training batch was preprocessed before its waveform augmentation
        (``augment_preprocessed``, e.g. peak normalisation then noise and gain): then the front
        end runs without the preprocessing, which would undo the augmentation. Evaluation and
        prediction (no augmentation) always preprocess in the front end."""
        trainer = self._trainer
        return self.augment_preprocessed and self.waveform_augment is not None \
            and isinstance(self.frontend, Preprocessed) and trainer is not None and trainer.training

    def augmented_waveform(self, waveform: torch.Tensor) -> torch.Tensor:
        """A training batch ``(batch, time)`` through the waveform augmentation (preprocessed
        first with ``augment_preprocessed``)."""
        if self._preprocessed_batches():
            waveform = self.frontend.preprocess(waveform)
        return self.waveform_augment(waveform)

    def batch_frontend(self) -> nn.Module:
        """The front end for the batch being processed (``_preprocessed_batches``)."""
        return self.frontend.frontend if self._preprocessed_batches() else self.frontend

    def _add_loss(self, stage: str, loss: torch.Tensor, batch_size: int) -> None:
        self.epoch_means.update(f"{stage}/loss", loss, batch_size)

    def _log_epoch_loss(self, stage: str, prog_bar: bool = False) -> None:
        """Log ``<stage>/loss``, the batch-size-weighted mean over the epoch."""
        value = self.epoch_means.pop(f"{stage}/loss")
        if value is not None:
            self.log(f"{stage}/loss", value, prog_bar=prog_bar, sync_dist=True)

    # ------------------------------------------------ train/eval switches around evaluation
    # Lightning puts every submodule in eval mode before each validation (and test) and back
    # after it. When only the head runs on cached embeddings (``embedding_input``), switching
    # the frozen front end and backbone, hundreds of modules twice an epoch, was a twentieth of
    # a 40-epoch head job: only the head is switched then. Otherwise the modes every submodule
    # had are put back, as Lightning does when these hooks are not overridden.
    def _to_eval(self) -> None:
        if self.embedding_input is not None:
            self._modes_before_eval = {"backbone.head": self.backbone.head.training}
            self.backbone.head.eval()
            return
        self._modes_before_eval = {name: module.training for name, module in self.named_modules()}
        self.trainer.model.eval()

    def _back_from_eval(self) -> None:
        modes = getattr(self, "_modes_before_eval", {})
        if self.embedding_input is not None:
            self.backbone.head.train(modes.get("backbone.head", True))
            return
        for name, module in self.named_modules():
            if name in modes:
                module.training = modes[name]

    def on_validation_model_eval(self) -> None:
        self._to_eval()

    def on_validation_model_train(self) -> None:
        self._back_from_eval()

    def on_test_model_eval(self) -> None:
        self._to_eval()

    def on_test_model_train(self) -> None:
        self._back_from_eval()

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        # A (waveform, target) batch already on the device (CPU training) is returned as it is:
        # Lightning's generic walk over the collection was a tenth of a head-only training step.
        if isinstance(batch, (tuple, list)) and all(isinstance(item, torch.Tensor) and item.device == device
                                                    for item in batch):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def _optimizer(self) -> torch.optim.Optimizer:
        """The optimiser over the trainable parameters; with the backbone's learning-rate scales
        (``Backbone.optimizer_groups``, e.g. layer-wise decay) one parameter group per scale,
        each group's ``lr`` the factory's times its ``lr_scale``."""
        trainable = [p for p in self.parameters() if p.requires_grad]
        groups = [(scale, params) for scale, params in self.backbone.optimizer_groups() if params]
        if all(scale == 1.0 for scale, _ in groups):
            return self.optimizer_factory(trainable)  # one group: as before (resumable checkpoints alike)
        grouped = {id(p) for _, params in groups for p in params}
        rest = [p for p in trainable if id(p) not in grouped]  # the front end's, if it learns
        optimizer = self.optimizer_factory([{"params": params, "lr_scale": scale} for scale, params in groups]
                                           + ([{"params": rest, "lr_scale": 1.0}] if rest else []))
        for group in optimizer.param_groups:
            group["lr"] *= group["lr_scale"]
        return optimizer

    def configure_optimizers(self):
        if not any(p.requires_grad for p in self.parameters()):  # a fitted head alone (kNN probe): only validates
            return None
        optimizer = self._optimizer()
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer),
                                 "monitor": self.hparams.scheduler_monitor,
                                 "interval": self.hparams.scheduler_interval}}

    def on_train_start(self) -> None:
        # A schedule over the run's length learns it now, when the training data is set up
        # (asking in configure_optimizers set the data up before a resumed fit restored its state).
        for config in self.trainer.lr_scheduler_configs:
            if isinstance(config.scheduler, WarmupCosine):
                config.scheduler.set_total_steps(int(self.trainer.estimated_stepping_batches))
