"""The generic classification LightningModule: front end + backbone (+ head) + loss + metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torchmetrics
from torch import nn

from audioml.features.smile import SmileInput
from audioml.models.backbones.base import Backbone, HeadFactory
from audioml.models.base import NOT_HYPERPARAMETERS, AudioModule, OptimizerFactory, TestOutputs
from audioml.models.embedding_cache import head_logits
from audioml.models.fitted_heads import fit_heads, fitted_heads
from audioml.models.heads import Head
from audioml.stats import SUMMARY_METRICS, metrics_from_confusion

__all__ = ["AudioClassifier"]

class AudioClassifier(AudioModule):
    """Waveforms ``(batch, time)`` -> logits ``(batch, num_classes)``.

    Training order per batch (all on the device): waveform augmentation (train only) ->
    ``frontend`` -> spectrogram augmentation (train only) -> ``backbone`` -> head.

    A head built with ``extra_features`` (``model.head.extra_features=egemaps``) takes
    ``[pooled embedding; features]``, the features computed from the clip by ``extra_input``
    (``audioml.features.smile.SmileInput``). Why inside the model: the Dataset keeps returning a
    waveform and its target, and every path that has a waveform (training, ``audioml-eval``,
    ``audioml-predict`` on new files, the MLflow model) computes the same vector the same way.
    For a training batch it is computed on the CPU before the transfer, from the clip as decoded
    (before waveform augmentation: the features describe the recording, not one augmented
    draw of it), and ``SmileInput`` remembers each clip's vector, so openSMILE runs once per clip,
    not once per epoch. Mixup is refused with it (it mixes spectrograms, not this vector).

    Args:
        backbone: a ``Backbone``; its classifier is replaced by ``head`` for ``num_classes``.
        frontend: waveform ``(batch, time)`` -> spectrogram ``(batch, 1, n_mels, frames)``;
            ``None``: the front end of the backbone's weights record (its input contract).
        num_classes, class_names: from the DataModule.
        sample_rate: rate (Hz) the front end expects; the data side resamples to it.
        head: head factory ``(in_features, num_classes) -> nn.Module``; linear when ``None``.
        loss: module ``(logits, target) -> scalar``; cross-entropy when ``None``.
        optimizer: factory ``(params) -> Optimizer`` (e.g. ``partial(torch.optim.Adam, lr=1e-3)``).
        scheduler: factory ``(optimizer) -> LRScheduler`` or ``None``.
        scheduler_monitor: metric a ReduceLROnPlateau-style scheduler watches.
        freeze: ``"none"``, ``"all"`` or a backbone block name (see ``Backbone.freeze``).
        waveform_augment: module on ``(batch, time)`` applied to training batches only.
        spec_augment: module on ``(batch, 1, n_mels, frames)``, training only.
        mixup: module ``(spec, target, num_classes) -> (mixed spec, target probabilities)``
            (``audioml.augment.Mixup``) applied to training spectrograms after
            ``spec_augment``; the loss then receives probability targets.
        preprocess: waveform preprocessing ``(batch, time) -> (batch, time)`` run before the
            front end in every stage (``audioml.features.WaveformPreprocess``, ``model.preprocess``).
        augment_preprocessed: training batches are preprocessed before the waveform
            augmentation instead of after it (``augmentation.after_preprocess``); evaluation and
            prediction are the same either way.
        embedding_cache: with ``freeze="all"`` and no augmentation, let the entry point train
            the head on cached front-end + backbone outputs (``audioml.models.embedding_cache``).
        pretrained: whether the backbone starts from pretrained weights (``model.pretrained``;
            the backbone loads them), recorded in the hyperparameters.
    """

    def __init__(self, backbone: Backbone, frontend: nn.Module | None, num_classes: int,
                 class_names: Sequence[str] | None = None, sample_rate: int = 16000,
                 head: HeadFactory | None = None, loss: nn.Module | None = None,
                 optimizer: OptimizerFactory | None = None, scheduler: Callable | None = None,
                 scheduler_monitor: str = "val/loss", scheduler_interval: str = "epoch",
                 freeze: str = "none", waveform_augment: nn.Module | None = None,
                 spec_augment: nn.Module | None = None, mixup: nn.Module | None = None,
                 embedding_cache: bool = True, pretrained: bool = False,
                 preprocess: nn.Module | None = None, augment_preprocessed: bool = False) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes}: a classifier needs at least 2 classes")
        self.save_hyperparameters(ignore=NOT_HYPERPARAMETERS)
        self._build(backbone, frontend, num_classes, head, freeze, optimizer, scheduler, waveform_augment,
                    spec_augment, sample_rate, preprocess, augment_preprocessed)
        extra = self.backbone.head.extra_features if isinstance(self.backbone.head, Head) else None
        if extra is not None:
            if mixup is not None:
                raise ValueError(f"model.head.extra_features={extra!r} with augmentation mixup: mixup mixes "
                                 "spectrograms, not the clips' openSMILE features; leave one of them out")
            self.extra_input = SmileInput(extra, sample_rate)
        self.loss_fn = loss if loss is not None else nn.CrossEntropyLoss()
        self.mixup = mixup
        #: ``None``: batches hold waveforms. ``"pooled"``/``"tokens"``: they hold cached backbone
        #: outputs and only the head runs (set by ``embedding_cache.use_embedding_cache``).
        self.embedding_input: str | None = None
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {num_classes} classes")
        # One confusion matrix per stage accumulates over the epoch (synced across DDP ranks by
        # torchmetrics, saved in resume checkpoints); every metric is computed from it by
        # audioml.stats.metrics_from_confusion, the one definition audioml uses.
        # validate_args=False: the inputs are the module's own argmax-able logits and the
        # DataModule's class indices; the checks (a unique() and range tests per batch) were a
        # tenth of a head-only training step.
        self.train_confusion, self.val_confusion, self.test_confusion = (
            torchmetrics.classification.MulticlassConfusionMatrix(num_classes, validate_args=False) for _ in range(3))
        for confusion in (self.train_confusion, self.val_confusion, self.test_confusion):
            confusion.persistent(True)  # in state_dict: a mid-epoch checkpoint carries the counts
        self.test_confusion_matrix: torch.Tensor | None = None
        #: Divides the logits before the softmax of the test and predict probabilities
        #: (temperature scaling, fitted on validation: ``calibrate``; a checkpoint's record
        #: sets it). A plain number, not part of the state dict.
        self.temperature = 1.0
        #: Logits, probabilities (``probabilities`` of the logits) and targets of the last test
        #: run, in loader order (CPU).
        self.test_logits: torch.Tensor | None = None
        self.test_probabilities: torch.Tensor | None = None
        self.test_targets: torch.Tensor | None = None
        self._test_buffers: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _log_epoch_metrics(self, stage: str, per_class: bool = False, prog_bar: bool = False) -> torch.Tensor:
        """Log ``<stage>/acc``, ``balanced_acc``, ``macro_f1`` (and per class: ``precision_<c>``,
        ``recall_<c>``, ``f1_<c>``) of the epoch's confusion matrix; returns the matrix."""
        confusion = getattr(self, f"{stage}_confusion")
        self._log_epoch_loss(stage, prog_bar=stage != "test")
        matrix = confusion.compute()
        confusion.reset()
        values = metrics_from_confusion(matrix.cpu().numpy(), self.class_names)
        names = list(values) if per_class else list(SUMMARY_METRICS)
        self.log_dict({f"{stage}/{name}": torch.tensor(float(values[name]), device=self.device) for name in names},
                      prog_bar=prog_bar, sync_dist=True)
        return matrix

    # ----------------------------------------------------------------------------- forward path
    def spectrogram(self, waveform: torch.Tensor) -> torch.Tensor:
        """``(batch, time)`` -> front-end output, with spectrogram augmentation when training.

        The front end runs in float32 even under mixed precision: power spectra exceed the
        float16 range (65504) and a bfloat16 filterbank product blurs quiet bands."""
        with torch.autocast(waveform.device.type, enabled=False):
            spec = self.batch_frontend()(waveform.float())
        if self.training and self.spec_augment is not None:
            spec = self.spec_augment(spec)
        return spec

    def forward(self, waveform: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of ``(batch, time)`` waveforms; ``extra``: the head's second input when it was
        computed already (``on_before_batch_transfer``), else computed here from ``waveform``."""
        if self.embedding_input is not None:
            return head_logits(self.backbone, waveform, self.embedding_input)
        if self.extra_input is None:
            return self.backbone(self.spectrogram(waveform))
        pooled = self.backbone.forward_head(self.backbone.forward_features(self.spectrogram(waveform)),
                                            pre_logits=True)
        extra = self.extra_input(waveform) if extra is None else extra
        return self.backbone.head(torch.cat([pooled, extra.to(device=pooled.device, dtype=pooled.dtype)], dim=1))

    embeds = True

    def test_outputs(self) -> TestOutputs | None:
        if self.test_probabilities is None:
            return None
        return TestOutputs(tuple(self.class_names), self.test_targets, probabilities=self.test_probabilities,
                           confusion=self.test_confusion_matrix)

    def embed(self, waveform: torch.Tensor) -> torch.Tensor:
        """``(batch, time)`` -> pooled backbone embedding ``(batch, num_features)`` (with
        ``embedding_input`` set, the batch holds cached outputs: pooled ones pass through, of
        cached layer means the last layer's)."""
        if self.embedding_input == "pooled":
            return waveform
        if self.embedding_input == "layers":  # the layers' means: the last one is the pooled embedding
            return waveform[..., -self.backbone.layer_dims[-1]:]
        tokens = waveform if self.embedding_input == "tokens" else \
            self.backbone.forward_features(self.spectrogram(waveform))
        return self.backbone.forward_head(tokens, pre_logits=True)

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        # the head's second input, from the clips as decoded, on the CPU (class docstring)
        if self.extra_input is not None and self.embedding_input is None and isinstance(batch, (tuple, list)) \
                and len(batch) == 2:
            waveform, target = batch
            return waveform, target, self.extra_input.raw(waveform)
        return batch

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        waveform, target, *extra = batch
        if self.trainer is not None and self.trainer.training and self.waveform_augment is not None:
            waveform = self.augmented_waveform(waveform)
        if extra:
            return waveform, target, (extra[0] - self.extra_input.mean) / self.extra_input.std
        return waveform, target

    # ------------------------------------------------------------------------------- the steps
    @staticmethod
    def _hard(target: torch.Tensor) -> torch.Tensor:
        return target.argmax(dim=1) if target.dim() == 2 else target

    def _step(self, batch, stage: str):
        waveform, target, *extra = batch
        if stage == "train" and self.mixup is not None:
            spec, target = self.mixup(self.spectrogram(waveform), target, self.num_classes)
            logits = self.backbone(spec)
        else:
            logits = self(waveform, extra[0] if extra else None)
        loss = self.loss_fn(logits, target)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{stage} loss is {loss.item()}: lower the learning rate or "
                                     "check the inputs for NaN (see skipped_files.csv)")
        hard = self._hard(target)
        getattr(self, f"{stage}_confusion").update(logits.detach(), hard)
        self._add_loss(stage, loss, waveform.shape[0])
        return loss, logits, hard

    def on_fit_start(self) -> None:
        """Fit the head's ``FittedHead`` parts (a kNN probe) on the training split, their settings
        chosen on the validation split, before the first epoch (a resumed run has them from its
        checkpoint already). With nothing left to train the epochs only validate."""
        if not fitted_heads(self.backbone.head):
            return
        datamodule = self.trainer.datamodule
        if datamodule is None:
            raise ValueError(f"{type(self.backbone.head).__name__} is fitted on the training split: give "
                             "trainer.fit a DataModule")
        self._fit_report = fit_heads(self, _in_order(datamodule.train_dataloader()),
                                     _in_order(datamodule.val_dataloader()))

    def _trains(self) -> bool:
        return any(parameter.requires_grad for parameter in self.parameters())

    def training_step(self, batch, batch_idx: int) -> torch.Tensor | None:
        if not self._trains():  # a fitted head alone (kNN): nothing to step
            return None
        loss, _, _ = self._step(batch, "train")
        return loss

    def on_train_epoch_end(self) -> None:
        if report := getattr(self, "_fit_report", None):
            self.log_dict({name: float(value) for name, value in report.items()})
            self._fit_report = None
        if self._trains():
            self._log_epoch_metrics("train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val", prog_bar=True)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(batch, classes)`` of ``logits``: ``softmax(logits / temperature)``,
        in float32 (under mixed precision the logits are half precision, which NumPy cannot take)."""
        return (logits.float() / self.temperature).softmax(dim=1)

    def calibrate(self, temperature: float) -> None:
        """Divide the logits by ``temperature`` from now on; the last test's probabilities become
        what the test gives with it (the predicted classes, and so every metric of the
        confusion matrix, stay the same)."""
        self.temperature = float(temperature)
        if self.test_logits is not None:
            self.test_probabilities = self.probabilities(self.test_logits)

    def test_step(self, batch, batch_idx: int) -> None:
        _, logits, hard = self._step(batch, "test")
        self._test_buffers.append((logits.detach().float().cpu(), hard.detach().cpu()))

    def on_test_epoch_start(self) -> None:
        self._test_buffers = []

    def on_test_epoch_end(self) -> None:
        self.test_confusion_matrix = self._log_epoch_metrics("test", per_class=True).cpu()
        if self._test_buffers:
            self.test_logits = torch.cat([logits for logits, _ in self._test_buffers])
            self.test_probabilities = self.probabilities(self.test_logits)
            self.test_targets = torch.cat([t for _, t in self._test_buffers])

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        if isinstance(batch, (tuple, list)):
            return self.probabilities(self(batch[0], batch[2] if len(batch) == 3 else None))
        return self.probabilities(self(batch))


def _in_order(loader):
    """The items of ``loader``'s dataset once each, in order, batched alike (no sampler: a
    balancing sampler's repeats, or a resumable loader's position, stay out of a fitted head)."""
    from torch.utils.data import DataLoader

    return DataLoader(loader.dataset, batch_size=loader.batch_size or 1, shuffle=False, num_workers=0,
                      collate_fn=loader.collate_fn)
