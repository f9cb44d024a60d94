"""Building a run from its composed config: the DataModule, the model (with its loss and
augmentation), the Trainer and the MLflow logger, and the tags that describe the run.

Library code of the run layer: the entry points hand it their ``DictConfig``.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig

from audioml.errors import UserError
from audioml.features.preprocess import Preprocessed
from audioml.models.base import AudioModule
from audioml.run.fit import distributed
from audioml.run.fit.checkpointing import AtomicCheckpointIO
from audioml.run.fit.resume import ResumeCheckpoint
from audioml.run.record import facts, tracking
from audioml.run.record.store import Store
from audioml.run.rundir import RunDir
from audioml.run.use.checkpoint import instantiate_model

__all__ = [
    "build_datamodule",
    "build_model",
    "build_test_trainer",
    "build_trainer",
    "data_tags",
    "fit_data_statistics",
    "open_mlflow_logger",
    "run_title",
    "runtime_tags",
    "validate_trainer",
]

log = logging.getLogger(__name__)


def build_datamodule(cfg: DictConfig):
    """Instantiate ``cfg.data`` and load it (manifest, decode cache, splits, and the offline
    augmentation copies of the training split when ``augmentation.offline`` is set)."""
    offline = (cfg.get("augmentation") or {}).get("offline")
    datamodule = instantiate(cfg.data, **({"offline_augmentation": instantiate(offline)} if offline else {}))
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def build_model(cfg: DictConfig, class_names: list[str], class_counts: list[int] | None = None) -> AudioModule:
    """Instantiate ``cfg.model`` for these classes with its loss and augmentation."""
    augmentation = cfg.get("augmentation") or {}
    extra = {"waveform_augment": instantiate(augmentation["waveform"]) if augmentation.get("waveform") else None,
             "spec_augment": instantiate(augmentation["spectrogram"]) if augmentation.get("spectrogram") else None}
    if augmentation.get("mixup"):  # passed only when set: modules without mixup need not accept it
        extra["mixup"] = instantiate(augmentation["mixup"])
    if augmentation.get("after_preprocess"):  # the same: modules without preprocessing need not accept it
        extra["augment_preprocessed"] = True
    model = instantiate_model(cfg.model, cfg.get("loss"), class_names, class_counts, **extra)
    if not isinstance(model, AudioModule):  # what training, results and embeddings call is declared there
        raise UserError(f"model._target_={cfg.model.get('_target_')} builds a {type(model).__name__}, not an audioml "
                        "task module: subclass audioml.models.base.AudioModule (AudioClassifier, SequenceRegressor)")
    if augmentation.get("after_preprocess") and not (
            getattr(model, "waveform_augment", None) is not None and isinstance(model.frontend, Preprocessed)):
        log.warning("augmentation.after_preprocess=true does nothing here: it orders waveform augmentation after "
                    "model.preprocess, and this run has %s", "no preprocess= choice" if not isinstance(
                        getattr(model, "frontend", None), Preprocessed) else "no waveform augmentation")
    return model


def fit_data_statistics(model: AudioModule, datamodule) -> None:
    """Let a model that normalises with training statistics compute them through its own front
    end (``fit_feature_statistics``) from the batches the data offers (``statistics_batches``),
    and a head's second input (``AudioModule.fit_extra_input``) from the training clips."""
    batches = datamodule.statistics_batches()
    if batches is not None:
        model.fit_feature_statistics(batches)
    if model.extra_input is not None:
        training = datamodule.dataset("train")
        model.fit_extra_input(torch.stack([training[i][0] for i in range(begin, min(begin + 64, len(training)))])
                              for begin in range(0, len(training), 64))


def build_trainer(cfg: DictConfig, run: RunDir, callbacks: list[L.Callback], logger) -> L.Trainer:
    """``cfg.trainer`` with ``cfg.callbacks`` (checkpoints written into ``run``'s ``checkpoints/``
    unless a callback names another folder) and ``callbacks``."""
    built = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None and "_target_" in c]
    if logger is None:  # these callbacks refuse to run without a logger
        built = [c for c in built if not isinstance(c, L.pytorch.callbacks.LearningRateMonitor)]
    for callback in built:
        if isinstance(callback, ResumeCheckpoint) and callback.dirpath is None:
            callback.dirpath = run.checkpoints
        if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:  # a str, as Lightning keeps it:
            callback.dirpath = os.path.realpath(run.checkpoints)  # it is saved in checkpoints (weights_only)
        if isinstance(callback, ModelCheckpoint) and callback.filename is None:
            callback.filename = RunDir.BEST_FILENAME
    return instantiate(cfg.trainer, callbacks=built + callbacks, logger=logger,
                       default_root_dir=str(run.path), plugins=[AtomicCheckpointIO()])


def validate_trainer(cfg: DictConfig) -> None:
    """Build ``cfg.trainer`` once without logger or callbacks, so that its settings (epochs,
    devices, strategy) are refused before anything is opened or written."""
    instantiate(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False)


def runtime_tags(cfg: DictConfig) -> dict[str, str]:
    """Host, code version (git), and the config group chosen for each group
    (``audioml.choice.<group>``, shown side by side by ``audioml-compare``)."""
    choices = dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}
    return {"host": socket.gethostname(), "device": "cuda" if torch.cuda.is_available() else "cpu",
            **facts.git_state(),
            **{f"audioml.choice.{group}": str(choice) for group, choice in choices.items()
               if not group.startswith("hydra") and choice is not None},
            "audioml.data": str(choices.get("data")) if HydraConfig.initialized() else "",
            "audioml.model": str(choices.get("model")) if HydraConfig.initialized() else ""}


def store_of(cfg: DictConfig) -> Store | None:
    """The MLflow store ``cfg`` records into (``logger.tracking_uri``, ``MLFLOW_TRACKING_URI`` or the
    embedded one under ``paths.mlflow_dir``), or ``None`` when ``logger.enabled`` is false."""
    if not cfg.logger.get("enabled", True):
        return None
    return Store.of(cfg.logger.get("tracking_uri"), cfg.paths.mlflow_dir)


def open_mlflow_logger(cfg: DictConfig, run: RunDir, tags: dict[str, str], finish_on_finalize: bool = True):
    """The MLflow logger of the run in ``run`` (continuing the run id recorded there; a child of
    the running sweep's parent run), or ``None`` when ``logger.enabled`` is false."""
    store = store_of(cfg)
    if store is None:
        return None
    return tracking.open_run(cfg.logger.experiment_name, cfg.logger.get("run_name") or run_title(cfg, run.path), store,
                             run, tags, finish_on_finalize, rank_zero=distributed.is_global_zero_process(),
                             system_metrics=cfg.logger.get("system_metrics"),
                             system_metrics_interval=cfg.logger.get("system_metrics_interval"))


#: Overrides that say where or how loudly a run goes, not what it is (left out of its title).
_NOT_IN_TITLE = ("paths", "logger", "hydra", "trainer.enable_progress_bar", "data.num_workers", "callbacks")


def run_title(cfg: DictConfig, run_dir: Path) -> str:
    """The MLflow run name: the model choice and the command line's overrides, keys shortened
    (``cnn lr=0.0003 seed=7``); the run directory's name outside a Hydra app."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return run_dir.name
    hydra_cfg = HydraConfig.get()
    choices = hydra_cfg.runtime.choices
    parts = [str(choices.get("experiment") or choices.get("model") or run_dir.name)]
    for override in hydra_cfg.overrides.task:
        key, _, value = str(override).partition("=")
        key = key.lstrip("+~")
        if key in ("model", "data", "experiment") or key.startswith(_NOT_IN_TITLE):
            continue
        parts.append(f"{key.rsplit('.', 1)[-1]}={value}" if "." in key else f"{key}={value}")
    return " ".join(parts)[:240]


def build_test_trainer(cfg: DictConfig, run: RunDir, logger) -> L.Trainer:
    """A one-device Trainer like ``cfg.trainer`` for testing after a multi-device fit."""
    return instantiate(cfg.trainer, devices=1, num_nodes=1, strategy="auto", sync_batchnorm=False,
                       logger=logger, default_root_dir=str(run.path), callbacks=[])


def data_tags(datamodule) -> dict[str, str]:
    """``data.fingerprint``: paths (relative to the dataset root), sizes and targets of the
    manifest, so runs on the same data compare alike on every machine; ``data.clips``. Both
    count the data read, not the offline augmentation's copies (a function of the config and
    the split): a run directory is bound to this fingerprint (``audioml.run.fit.training``)."""
    manifest = getattr(datamodule, "manifest", None)
    if manifest is None or "path" not in manifest:
        return {}
    if "augmented_copy" in manifest:
        manifest = manifest[manifest["augmented_copy"] == 0]
    extra_columns = [c for c in ("target", "offset", "duration") if c in manifest]
    fingerprint = facts.dataset_fingerprint(manifest["path"], getattr(datamodule, "root", None),
                                               manifest[extra_columns].astype(str).to_numpy().tolist())
    return {"data.fingerprint": fingerprint, "data.clips": str(len(manifest))}
