"""One training run and the evaluation protocols over it: a ``TrainingRun`` fits, validates and
tests one configuration in the run directory it owns and returns its ``RunResult``;
``run_evaluation`` runs ``cfg.evaluation`` (holdout, or k-fold over ``RunResult``s) under the
run directory's lock.
"""

from __future__ import annotations

import copy
import logging
from functools import partial
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from audioml import distributed
from audioml.checkpointing import find_resume_checkpoint
from audioml.data.base import NoUsableFilesError
from audioml.files import atomic_write_bytes, exclusive_lock, remove_temporaries
from audioml.models.embedding_cache import use_embedding_cache
from audioml.run import facts, resume, tracking
from audioml.run.checkpoint import ModelInCheckpoint, model_record, untrusted_targets
from audioml.run.compose import (build_datamodule, build_model, build_test_trainer, build_trainer, data_tags,
                                 fit_data_statistics, open_mlflow_logger, runtime_tags, validate_trainer)
from audioml.run.protocols import RunResult
from audioml.run.results import finished_result, honest_test_scores, write_kfold_reports, write_run_reports

log = logging.getLogger(__name__)

__all__ = ["run_evaluation", "train", "TrainingRun", "RUN_LOCK"]

#: Lock file of a run directory (see ``run_evaluation``).
RUN_LOCK = ".lock"


def run_evaluation(cfg: DictConfig, run_dir: str | Path) -> dict[str, float]:
    """Run ``cfg.evaluation``'s protocol: one ``train`` (holdout), or one per fold (k-fold) into
    ``<run_dir>/fold_<i>``, each a child of a parent MLflow run that gets the summary.

    One process at a time works in ``run_dir`` (an exclusive lock on ``<run_dir>/.lock``, held
    by DDP rank zero): the same command started twice, or a sweep repeating a job, waits for
    the first and then finds the run finished (or continues it where the first stopped).
    A SIGTERM at any point ends the open MLflow runs KILLED and exits with status 143
    (``resume.stop_on_sigterm``; in the training loop after a checkpoint)."""
    with resume.stop_on_sigterm():
        return _locked_evaluation(cfg, Path(run_dir))


def _locked_evaluation(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    if not distributed.is_global_zero_process():
        return _run_evaluation(cfg, run_dir)
    if cfg.logger.get("enabled", True):  # an unreachable server fails now, not after decoding and MLflow's retries
        tracking.check_reachable(tracking.resolve_tracking_uri(cfg.logger.get("tracking_uri"), cfg.paths.mlflow_dir))
    with exclusive_lock(run_dir / RUN_LOCK, f"training in {run_dir}: waiting until it ends"):
        for folder in [run_dir / "checkpoints", *run_dir.glob("fold_*/checkpoints")]:  # a killed run's partial writes
            remove_temporaries(folder, "*.ckpt")
        return _run_evaluation(cfg, run_dir)


def _run_evaluation(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    if (finished := resume.read_done(run_dir)) is not None:
        log.info("%s finished before (%s): skipped; delete the folder to train again", run_dir, resume.DONE_FILE)
        return finished
    protocol = instantiate(cfg.evaluation) if cfg.get("evaluation") else None
    if protocol is None or protocol.num_folds is None:
        return train(cfg, run_dir).metrics
    rank_zero = distributed.is_global_zero_process()
    parent = _open_parent_run(cfg, run_dir, protocol)
    with tracking.ended_on_error(parent if rank_zero else None):
        parent_id = getattr(parent, "run_id", None)
        result = protocol.run(lambda fold: train(_fold_config(cfg, run_dir, fold, protocol.num_folds),
                                                 run_dir / f"fold_{fold}", parent_run_id=parent_id))
        if rank_zero:
            files = write_kfold_reports(result, run_dir)
            if parent is not None:
                parent.log_metrics(result.metrics)
                tracking.log_artifacts(parent, files)
                parent.finalize("success")
            resume.write_done(run_dir, result.metrics)  # the folds are done, the summary written
    return result.metrics


def _fold_config(cfg: DictConfig, run_dir: Path, fold: int, num_folds: int) -> DictConfig:
    fold_cfg = copy.deepcopy(cfg)
    with open_dict(fold_cfg):
        fold_cfg.data.fold, fold_cfg.data.num_folds = fold, num_folds
        fold_cfg.paths.run_dir = str(run_dir / f"fold_{fold}")
        fold_cfg.logger.run_name = f"{cfg.logger.get('run_name') or run_dir.name}-fold{fold}"
    return fold_cfg


def _open_parent_run(cfg: DictConfig, run_dir: Path, protocol):
    """The MLflow run the folds nest under (rank zero logs its config), or ``None``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    logger = open_mlflow_logger(cfg, run_dir, {**runtime_tags(cfg), "audioml.protocol": type(protocol).__name__})
    if logger is not None and distributed.is_global_zero_process():
        resolved = OmegaConf.to_container(cfg, resolve=True)
        OmegaConf.save(OmegaConf.create(resolved), run_dir / "config.yaml")
        tracking.log_params(logger.experiment, logger.run_id, tracking.flatten_params(resolved))
        tracking.log_artifacts(logger, [run_dir / "config.yaml"])
    return logger


def train(cfg: DictConfig, run_dir: str | Path, parent_run_id: str | None = None) -> RunResult:
    """``TrainingRun(cfg, run_dir, parent_run_id).run()``."""
    return TrainingRun(cfg, run_dir, parent_run_id).run()


class TrainingRun:
    """One configuration trained, validated and tested in the run directory it owns.

    ``run()`` writes into ``run_dir``: ``config.yaml`` (resolved), ``checkpoints/``,
    ``metrics.json``, ``confusion_matrix.png``, ``per_class_report.csv``,
    ``test_predictions.csv`` and, when files were skipped, ``skipped_files.csv``; all of them
    also go to MLflow. The metrics also hold the honest numbers of ``cfg.evaluation``
    (intervals, baseline, permutation test; ``audioml.stats``) and ``val/best_<name>``, the
    best score of the ``monitor``. It returns the ``RunResult`` in memory. ``parent_run_id``
    nests the MLflow run under that run (k-fold; else the running sweep's).

    Rerun with the same ``run_dir`` after an interruption: a finished run (``DONE`` marker)
    returns its result without training; an unfinished one continues from its newest intact
    checkpoint into the same MLflow run (``audioml.run.resume``). On SIGTERM the run writes a
    checkpoint, marks its MLflow run KILLED and exits with status 143.
    """

    def __init__(self, cfg: DictConfig, run_dir: str | Path, parent_run_id: str | None = None) -> None:
        self.cfg, self.run_dir, self.parent_run_id = cfg, Path(run_dir), parent_run_id
        self.rank_zero = distributed.is_global_zero_process()
        self.logger = None

    def run(self) -> RunResult:
        cfg, run_dir = self.cfg, self.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        if (finished := resume.read_done(run_dir)) is not None:
            log.info("%s finished before (%s): skipped; delete the folder to train again", run_dir, resume.DONE_FILE)
            return finished_result(run_dir, finished)
        L.seed_everything(cfg.seed, workers=True)
        torch.set_float32_matmul_precision("high")
        validate_trainer(cfg)  # before decoding and the MLflow run: a config that cannot train leaves nothing
        try:
            datamodule = build_datamodule(cfg)
        except NoUsableFilesError as error:
            if self.rank_zero:
                error.skipped.to_csv(run_dir / "skipped_files.csv", index=False)
            raise NoUsableFilesError(f"{error} ({run_dir / 'skipped_files.csv'})", error.skipped) from None
        if self.rank_zero and len(datamodule.skipped):  # written now: a later failure keeps the list
            datamodule.skipped.to_csv(run_dir / "skipped_files.csv", index=False)
        model = build_model(cfg, datamodule.class_names, datamodule.train_class_counts())
        fit_data_statistics(model, datamodule)
        resolved = self._write_config()
        record = model_record(cfg, datamodule)
        if self.rank_zero and (refusal := untrusted_targets(record, cfg.get("trusted_modules") or ())):
            log.warning("audioml-eval/predict will refuse this run's checkpoints unless told to trust them: %s", refusal)
        tags = {**runtime_tags(cfg), **data_tags(datamodule),
                **({"mlflow.parentRunId": self.parent_run_id} if self.parent_run_id else {})}
        self.logger = open_mlflow_logger(cfg, run_dir, tags, finish_on_finalize=False)  # closed when all is written
        with tracking.ended_on_error(self.logger if self.rank_zero else None):  # no run left RUNNING on a crash
            if self.rank_zero:
                log.info("run directory %s; %s", run_dir, _mlflow_location(cfg, self.logger))
                if self.logger is not None:
                    tracking.log_params(self.logger.experiment, self.logger.run_id, tracking.flatten_params(resolved))
            trainer, datamodule = self._fit(model, datamodule, record)
            best_callback = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
            best = best_callback.best_model_path if best_callback is not None else ""
            if trainer.world_size > 1:  # test on one device, so every clip counts exactly once
                distributed.destroy_process_group()
                if not trainer.is_global_zero:
                    return finished_result(run_dir, resume.wait_for_done(run_dir))
                trainer = build_test_trainer(cfg, run_dir, self.logger)
            metrics = self._test(trainer, model, datamodule, best, best_callback)
            return self._report(model, datamodule, metrics, set(trainer.callback_metrics), best)

    def _write_config(self) -> dict:
        resolved = OmegaConf.to_container(self.cfg, resolve=True)
        if self.rank_zero:
            atomic_write_bytes(self.run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(resolved)).encode())
        return resolved

    def _fit(self, model, datamodule, record: dict) -> tuple[L.Trainer, object]:
        """Fit from the newest intact resume checkpoint (a damaged one falls back to the one
        before it); returns the trainer and the DataModule the model was fitted on."""
        cfg, logger = self.cfg, self.logger
        trainer = build_trainer(cfg, self.run_dir, [ModelInCheckpoint(record)], logger)
        if logger is not None and self.rank_zero:
            tracking.set_tags(logger.experiment, logger.run_id, {"device": facts.device_description(
                trainer.strategy.root_device.type, trainer.num_devices, trainer.num_nodes)})
        last = find_resume_checkpoint(self.run_dir / "checkpoints")
        if hasattr(model, "fit_pretraining_stage"):  # two-stage models (autoencoder_ffnn): unsupervised stage first
            model.fit_pretraining_stage(datamodule, partial(instantiate, cfg.trainer, logger=logger,
                                                            default_root_dir=str(self.run_dir)),
                                        resume_checkpoint=last)
        # freeze=all without augmentation: train the head on cached backbone outputs (same splits).
        datamodule = use_embedding_cache(model, datamodule, cfg.paths.cache_dir, trainer.strategy.root_device)
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=str(last) if last else None)
        except SIGTERMException:
            resume.exit_preempted(logger if self.rank_zero else None)
        if resume.stop_requested(trainer):  # SIGTERM in the last epoch: its checkpoint is written
            resume.exit_preempted(logger if self.rank_zero else None)
        return trainer, datamodule

    def _test(self, trainer: L.Trainer, model, datamodule, best: str, best_callback) -> dict[str, float]:
        """Test the best checkpoint; the test metrics, ``val/best_<monitor>`` and the honest numbers."""
        try:
            trainer.test(model, datamodule=datamodule, ckpt_path=best or None, verbose=False)
        except SIGTERMException:
            resume.exit_preempted(self.logger)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        if best_callback is not None and best_callback.best_model_score is not None and best_callback.monitor:
            group, _, name = best_callback.monitor.rpartition("/")
            metrics[f"{group}/best_{name}" if group else f"best_{name}"] = float(best_callback.best_model_score)
        self._honest_files: list[Path] = []
        if self.cfg.get("evaluation"):
            honest, self._honest_files = honest_test_scores(instantiate(self.cfg.evaluation), model, datamodule,
                                                            self.run_dir)
            metrics.update(honest)
        return metrics

    def _report(self, model, datamodule, metrics: dict[str, float], logged: set[str], best: str) -> RunResult:
        """Write the reports, log what Lightning did not, end the MLflow run, mark DONE."""
        cfg, logger, run_dir = self.cfg, self.logger, self.run_dir
        if logger is not None and (unlogged := {k: v for k, v in metrics.items() if k not in logged}):
            logger.log_metrics(unlogged)
        result, files = write_run_reports(model, datamodule, run_dir, metrics)
        if logger is not None:
            tracking.log_artifacts(logger, [run_dir / "config.yaml", *files, *self._honest_files])
            if best and cfg.logger.get("log_checkpoint", True):
                tracking.log_artifacts(logger, [Path(best)], "checkpoints")
            if best and (cfg.logger.get("log_model", True) or cfg.logger.get("register_model")):
                self._log_model(Path(best))
            tracking.set_status(logger.experiment, logger.run_id, "FINISHED")
        resume.write_done(run_dir, metrics)  # last: the run counts as finished only now
        log.info("test metrics: %s", {k: round(v, 4) for k, v in metrics.items()
                                      if "_" not in k.split("/")[-1] or k.endswith("macro_f1")})
        log.info("finished: run directory %s; %s", run_dir, _mlflow_location(cfg, logger))
        return result

    def _log_model(self, best: Path) -> None:
        """The best checkpoint as the run's MLflow model (``audioml.run.serving``)."""
        from audioml.run import serving
        from audioml.run.checkpoint import UntrustedCheckpointError, read_record

        cfg = self.cfg
        trusted = list(cfg.get("trusted_modules") or ())
        try:
            record, _ = read_record(best, trusted)
        except UntrustedCheckpointError as error:
            log.warning("no MLflow model logged: the checkpoint would be refused when loaded (%s)", error)
            return
        serving.log_model(self.logger.run_id, tracking.resolve_tracking_uri(cfg.logger.get("tracking_uri"),
                                                                            cfg.paths.mlflow_dir),
                          best, record, cfg.logger.get("register_model"), trusted)


def _mlflow_location(cfg: DictConfig, logger) -> str:
    """``MLflow run <id> in <tracking uri>`` (or that MLflow is off), for the start and end lines."""
    if logger is None:
        return "MLflow logging off (logger.enabled=false)"
    uri = tracking.resolve_tracking_uri(cfg.logger.get("tracking_uri"), cfg.paths.mlflow_dir)
    return f"MLflow run {logger.run_id} in {uri}"
