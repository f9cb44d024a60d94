"""The sequence-regression LightningModule: continuous targets per window (MuSe valence/arousal)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from audioml.metrics import regression_metrics
from audioml.models.backbones.base import Backbone, HeadFactory
from audioml.models.base import NOT_HYPERPARAMETERS, AudioModule, OptimizerFactory, TestOutputs
from audioml.models.heads import Head, LayerHead

__all__ = ["SequenceRegressor"]

_TORCH_REGRESSION_LOSSES = (nn.MSELoss, nn.L1Loss, nn.SmoothL1Loss, nn.HuberLoss)


class SequenceRegressor(AudioModule):
    """Window sequences ``(batch, windows, window_samples)`` -> predictions
    ``(batch, windows, n_targets)`` (``output="per_step"``) or ``(batch, n_targets)``
    (``"per_sequence"``, compared with the last window's target).

    Forward path: waveform augmentation (train only) -> ``frontend`` on every window ->
    ``(spec - feature_mean) / feature_std`` per mel band -> spectrogram augmentation (train
    only) -> backbone. A backbone with ``sequence_input = True`` (``CRNNAttention``) receives
    ``(batch, windows, 1, n_mels, frames)`` and returns per-window tokens; any other backbone
    embeds each window on its own (pooled embedding = the window's token). The head maps
    each token (per step) or the pooled sequence vector (per sequence) to the targets.

    Metrics over the whole epoch (all windows pooled, not batch averages): ``<stage>/ccc``,
    ``/mse``, ``/mae`` (means over targets) and ``<stage>/ccc_<target>`` etc.; ``<stage>/loss``.
    Checkpoint/early-stopping monitor: ``val/ccc`` (mode max).

    Args:
        backbone, frontend, head, optimizer, scheduler, scheduler_monitor, scheduler_interval,
        freeze, waveform_augment, spec_augment, sample_rate: as ``AudioClassifier``.
        num_classes: number of targets (the entry point's name for the output width).
        class_names: target names (e.g. ``["valence"]``).
        loss: a regression loss ``(prediction, target) -> scalar`` (``audioml.losses.CCCLoss``
            when ``None``); a classification loss raises ``ValueError``.
        feature_mean, feature_std: ``(n_mels,)`` statistics of the training split's front-end
            output, stored as buffers (saved in checkpoints); ``None``: identity (0 / 1) until
            ``fit_feature_statistics`` computes them from training windows.
        output: ``"per_step"`` or ``"per_sequence"``.
        pretrained: recorded in the hyperparameters (the backbone loads its own weights).
        mixup: not supported for regression; must be ``None``.
        preprocess: waveform preprocessing run before the front end on every window
            (``audioml.features.WaveformPreprocess``, ``model.preprocess``).
        augment_preprocessed: as ``AudioClassifier`` (each window preprocessed, then augmented).
    """

    def __init__(self, backbone: Backbone, frontend: nn.Module | None, num_classes: int,
                 class_names: Sequence[str] | None = None, sample_rate: int = 16000,
                 head: HeadFactory | None = None, loss: nn.Module | None = None,
                 optimizer: OptimizerFactory | None = None, scheduler: Callable | None = None,
                 scheduler_monitor: str = "val/ccc", scheduler_interval: str = "epoch",
                 freeze: str = "none", waveform_augment: nn.Module | None = None,
                 spec_augment: nn.Module | None = None, feature_mean: torch.Tensor | None = None,
                 feature_std: torch.Tensor | None = None, output: str = "per_step",
                 pretrained: bool = False, mixup: nn.Module | None = None,
                 preprocess: nn.Module | None = None, augment_preprocessed: bool = False) -> None:
        super().__init__()
        if output not in ("per_step", "per_sequence"):
            raise ValueError(f"model.output={output!r}: use 'per_step' or 'per_sequence'")
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes}: a regressor needs at least one target")
        if loss is not None and getattr(loss, "task", None) != "regression" \
                and not isinstance(loss, _TORCH_REGRESSION_LOSSES):
            raise ValueError(f"{type(loss).__name__} is a classification loss; this model regresses continuous "
                             "targets: use loss=ccc (1 - CCC) or loss=mse")
        if mixup is not None:
            raise ValueError("mixup mixes class labels; it does not apply to sequence regression")
        self.save_hyperparameters(ignore=[*NOT_HYPERPARAMETERS, "feature_mean", "feature_std"])
        self._build(backbone, frontend, num_classes, head, freeze, optimizer, scheduler, waveform_augment,
                    spec_augment, sample_rate, preprocess, augment_preprocessed)
        if isinstance(self.backbone.head, LayerHead):
            raise ValueError(f"model.head={type(self.backbone.head).__name__} reads every hidden layer of one clip; "
                             "the sequence regressor pools windows: use a linear, MLP or Transformer head")
        if isinstance(self.backbone.head, Head) and self.backbone.head.extra_features is not None:
            raise ValueError(f"model.head.extra_features={self.backbone.head.extra_features!r}: a sequence regressor's "
                             "head scores each window and takes no clip-level vector; for openSMILE per window use "
                             "audioml-classical descriptors=egemaps (descriptors.level=lld for LLDs)")
        if loss is None:
            from audioml.losses import CCCLoss

            loss = CCCLoss()
        self.loss_fn = loss
        self.output = output
        self.num_targets = int(num_classes)
        self.target_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        if len(self.target_names) != self.num_targets:
            raise ValueError(f"{len(self.target_names)} target names for {num_classes} targets")
        # Always present (identity until fitted), so every checkpoint has the same state keys.
        bins = self._frontend_bins(self.frontend, sample_rate)
        mean = self._stat(feature_mean, "feature_mean", bins)
        std = self._stat(feature_std, "feature_std", bins)
        self.register_buffer("feature_mean", torch.zeros(bins) if mean is None else mean)
        self.register_buffer("feature_std", torch.ones(bins) if std is None else std)
        if std is not None and bool((std <= 0).any()):
            raise ValueError("feature_std must be positive in every mel band")
        self._buffers_by_stage: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        #: Predictions and targets of the last test run (CPU), in loader order.
        self.test_predictions: torch.Tensor | None = None
        self.test_targets: torch.Tensor | None = None

    @staticmethod
    def _frontend_bins(frontend: nn.Module, sample_rate: int) -> int:
        """Mel bands of ``frontend``'s output, read off one second of silence."""
        with torch.no_grad():
            return int(frontend(torch.zeros(1, int(sample_rate))).shape[-2])

    @staticmethod
    def _stat(value, name: str, bins: int) -> torch.Tensor | None:
        if value is None:
            return None
        tensor = torch.as_tensor(value, dtype=torch.float32, device="cpu")  # given values: checked here
        if tuple(tensor.shape) != (bins,):
            raise ValueError(f"{name} must have shape ({bins},) (the front end's mel bands), got {tuple(tensor.shape)}")
        return tensor

    def fit_feature_statistics(self, batches: Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Set ``feature_mean`` / ``feature_std`` to the per-band mean and std of this model's own
        front end over ``batches`` of training windows ``(batch, samples)`` (all frames pooled),
        so the statistics always describe the features the backbone sees."""
        total = total_sq = None
        count = 0
        with torch.no_grad():
            for batch in batches:
                spec = self.frontend(batch.to(self.feature_mean.device)).flatten(1, -2).double()
                spec = spec.transpose(0, 1).flatten(1)                     # (n_mels, batch * frames)
                total = spec.sum(1) if total is None else total + spec.sum(1)
                total_sq = spec.pow(2).sum(1) if total_sq is None else total_sq + spec.pow(2).sum(1)
                count += spec.shape[1]
        if not count:
            raise ValueError("no training windows to compute the feature statistics from")
        mean = total / count
        std = (total_sq / count - mean.pow(2)).clamp_min(0).sqrt().clamp_min(1e-5)
        self.feature_mean.copy_(mean.float())
        self.feature_std.copy_(std.float())
        return {"feature_mean": self.feature_mean.clone(), "feature_std": self.feature_std.clone()}

    # ----------------------------------------------------------------------------- forward path
    def spectrogram(self, waveform: torch.Tensor) -> torch.Tensor:
        """``(batch, windows, samples)`` -> normalised ``(batch, windows, 1, n_mels, frames)``."""
        if waveform.dim() != 3:
            raise ValueError(f"expected window sequences (batch, windows, samples), got {tuple(waveform.shape)}")
        batch, windows = waveform.shape[:2]
        spec = self.batch_frontend()(waveform.flatten(0, 1))
        spec = (spec - self.feature_mean[:, None]) / self.feature_std[:, None]
        if self.training and self.spec_augment is not None:
            spec = self.spec_augment(spec)
        return spec.reshape(batch, windows, *spec.shape[1:])

    def tokens(self, spec: torch.Tensor) -> torch.Tensor:
        """Normalised window spectrograms -> per-window tokens ``(batch, windows, num_features)``."""
        if getattr(self.backbone, "sequence_input", False):
            return self.backbone.forward_features(spec)
        batch, windows = spec.shape[:2]
        flat = spec.flatten(0, 1)
        pooled = self.backbone.forward_head(self.backbone.forward_features(flat), pre_logits=True)
        return pooled.reshape(batch, windows, -1)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        tokens = self.tokens(self.spectrogram(waveform))
        if self.output == "per_sequence":
            head = self.backbone.head
            return head(tokens) if getattr(head, "uses_tokens", False) else head(self.backbone.pool(tokens))
        batch, windows = tokens.shape[:2]
        return self.backbone.head(tokens.flatten(0, 1)).reshape(batch, windows, -1)

    def deep_features(self, waveform: torch.Tensor) -> torch.Tensor:
        """Per-window deep features ``(batch, windows, num_features)`` (CRNN: ``[context; h_t]``)
        for export to classical models."""
        return self.tokens(self.spectrogram(waveform))

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        waveform, target = batch
        if self.trainer is not None and self.trainer.training and self.waveform_augment is not None:
            batch_size, windows = waveform.shape[:2]
            waveform = self.augmented_waveform(waveform.flatten(0, 1)).reshape(batch_size, windows, -1)
        return waveform, target

    # ------------------------------------------------------------------------------- the steps
    def _align(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.float()
        if target.dim() == prediction.dim() - 1 and self.output == "per_step":
            target = target.unsqueeze(-1)
        if self.output == "per_sequence" and target.dim() == 3:
            target = target[:, -1]
        if target.shape != prediction.shape:
            raise ValueError(f"targets {tuple(target.shape)} do not match predictions {tuple(prediction.shape)}")
        return target

    def _step(self, batch, stage: str) -> torch.Tensor:
        waveform, target = batch
        prediction = self(waveform)
        target = self._align(prediction, target)
        loss = self.loss_fn(prediction, target)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{stage} loss is {loss.item()}: lower the learning rate or check the "
                                     "inputs for NaN")
        self._add_loss(stage, loss, waveform.shape[0])
        self._buffers_by_stage.setdefault(stage, []).append((prediction.detach().float().cpu(),
                                                             target.detach().float().cpu()))
        return loss

    def _log_epoch(self, stage: str) -> None:
        self._log_epoch_loss(stage, prog_bar=stage != "test")
        buffers = self._buffers_by_stage.pop(stage, [])
        if not buffers:
            return
        prediction = torch.cat([p.reshape(-1, self.num_targets) for p, _ in buffers])
        target = torch.cat([t.reshape(-1, self.num_targets) for _, t in buffers])
        metrics = regression_metrics(prediction, target, self.target_names)
        self.log_dict({f"{stage}/{name}": value for name, value in metrics.items()},
                      prog_bar=stage == "val", sync_dist=True)
        if stage == "test":
            self.test_predictions = torch.cat([p for p, _ in buffers])
            self.test_targets = torch.cat([t for _, t in buffers])

    def test_outputs(self) -> TestOutputs | None:
        """``predictions`` and ``targets`` as ``(sequences, windows, targets)``."""
        if self.test_predictions is None:
            return None
        shape = (len(self.test_predictions), -1, self.num_targets)
        return TestOutputs(tuple(self.target_names), self.test_targets.reshape(shape),
                           predictions=self.test_predictions.reshape(shape))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def on_test_epoch_start(self) -> None:
        self._buffers_by_stage.pop("test", None)

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        waveform = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(waveform)
