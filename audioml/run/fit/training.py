"""A training command's run: ``run_evaluation_in`` is its sequence (open the run directory,
return a finished run, move to the directory of other data, run the protocol); ``TrainingRun``
fits, validates and tests one configuration in the run directory it owns."""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from audioml.data.base import NoUsableFilesError
from audioml.errors import error_summary
from audioml.models.embedding_cache import use_embedding_cache
from audioml.run.figures import drawing as figures
from audioml.run.figures.callbacks import LayerWeights, LearningCurves
from audioml.run.fit import calibration, distributed, resume
from audioml.run.fit.checkpointing import find_resume_checkpoint
from audioml.run.fit.compose import (
    build_datamodule,
    build_model,
    build_test_trainer,
    build_trainer,
    data_tags,
    fit_data_statistics,
    open_mlflow_logger,
    run_title,
    runtime_tags,
    store_of,
    validate_trainer,
)
from audioml.run.fit.head_only import add_head_only_checkpoints, threads_restored, use_head_only_threads
from audioml.run.fit.protocols import RunResult
from audioml.run.fit.results import finished_result, honest_test_scores, write_kfold_reports, write_run_reports
from audioml.run.outcome import ending, stop_on_sigterm
from audioml.run.record import facts, finishing, lineage, presentation, relog, tracking
from audioml.run.record.store import Store, check_reachable
from audioml.run.rundir import RunDir
from audioml.run.use.checkpoint import ModelInCheckpoint, model_record, untrusted_targets

log = logging.getLogger(__name__)

__all__ = ["TrackingStoreError", "TrainingRun", "run_evaluation", "run_evaluation_in", "train"]


def run_evaluation(cfg: DictConfig, run_dir: str | Path) -> dict[str, float]:
    """``run_evaluation_in``'s metrics."""
    return run_evaluation_in(cfg, run_dir)[0]


def run_evaluation_in(cfg: DictConfig, run_dir: str | Path) -> tuple[dict[str, float], Path]:
    """Run ``cfg.evaluation``'s protocol in ``run_dir`` (holdout: one ``TrainingRun``; k-fold:
    one per fold, under a parent MLflow run); its metrics and the run directory they are in.

    A SIGTERM anywhere ends the open MLflow runs KILLED and exits 143; rerunning continues
    (``docs/design/runs.md``: one process per run directory, a run belongs to its data)."""
    run = RunDir(run_dir)
    with stop_on_sigterm():
        with _opened(cfg, run):                    # 1. open the run directory: its lock, its last record
            found = _look_at_data(cfg, run)        #    the data now, and what the directory holds
            if found.other is None:
                if found.finished is not None:     # 2. finished on this data? its result
                    return _finished(cfg, run, found.finished), run.path
                return _run_protocol(cfg, run, found), run.path   # 4. run the protocol
        moved = found.other                        # 3. other data? the directory of this data beside it
        with _job_log_also_in(moved):
            return run_evaluation_in(_moved_config(cfg, moved), moved.path)


@contextlib.contextmanager
def _opened(cfg: DictConfig, run: RunDir) -> Iterator[None]:
    """Hold ``run`` (rank zero; after completing the record of its last run when that is pending,
    and without the partial writes of a killed run); a run whose record is completed in the
    background keeps the directory locked until then."""
    rank_zero = distributed.is_global_zero_process()
    named = Store.named(cfg.logger.get("tracking_uri")) if cfg.logger.get("enabled", True) else None
    if rank_zero and named:  # an unreachable server fails now, not after retries (nothing is created here)
        check_reachable(named)
    if failure := finishing.wait_for(run.path):
        log.warning("%s: its earlier run's record failed (%s): continuing it", run, failure.error)
    with contextlib.ExitStack() as hold:
        if rank_zero:
            hold.enter_context(run.lock())
            run.remove_partial_writes()
        yield
        finishing.hold_until_finished(run.path, hold.pop_all())


@dataclass
class _Found:
    """What ``_look_at_data`` found: the protocol, the loaded data (a holdout run trains on it),
    the metrics of a run finished on this data, or the directory of this data when ``run`` is
    bound to other data."""

    protocol: Any = None
    datamodule: Any = None
    finished: dict[str, float] | None = None
    other: RunDir | None = None


def _look_at_data(cfg: DictConfig, run: RunDir) -> _Found:
    """Load the data and compare it with the data ``run`` is bound to (``RunDir.bound_data``),
    binding a new directory to it."""
    bound, finished = run.bound_data(), run.finished()
    if finished is not None and bound is None:  # finished before runs were bound to their data: nothing to compare
        return _Found(finished=finished)
    protocol = instantiate(cfg.evaluation) if cfg.get("evaluation") else None
    try:
        datamodule = _data_of_run(cfg, run, protocol, finished is not None)
    except FileNotFoundError as error:
        if finished is None:
            raise
        log.warning("%s finished before; its data cannot be checked now (%s)", run, error)
        return _Found(finished=finished)
    if protocol is not None and finished is None:
        protocol.check_data(datamodule)
    current = _data_record(datamodule)
    if bound is not None and bound["fingerprint"] and current["fingerprint"] != bound["fingerprint"]:
        other = run.for_other_data(current["fingerprint"])
        log.warning("%s %s on other data: %s clips under %s (fingerprint %s). The data now is %s clips under %s "
                    "(fingerprint %s): it gets its own run directory, %s, so that neither run mixes with the other. "
                    "To %s the first run instead, point AUDIOML_DATA_DIR / paths.data_dir (or data.root) back at "
                    "its data.", run, "finished" if finished is not None else "was trained", bound["clips"],
                    bound["root"], bound["fingerprint"], current["clips"], current["root"], current["fingerprint"],
                    other, "reuse" if finished is not None else "continue")
        return _Found(other=other)
    if bound is None and finished is None and distributed.is_global_zero_process():
        run.bind_data(current)
    holdout = protocol is None or protocol.num_folds is None
    return _Found(protocol, datamodule if holdout else None, finished)


def _finished(cfg: DictConfig, run: RunDir, metrics: dict[str, float]) -> dict[str, float]:
    """The result of a run finished before; its MLflow run checked against the store this
    command logs to (``relog.check_store``: said when it is elsewhere, copied with
    ``logger.relog=true``), and registered now when this command asks (``logger.register_model``:
    nothing is trained again)."""
    log.info("%s finished before (%s): skipped; delete the folder to train again", run, RunDir.DONE)
    if distributed.is_global_zero_process():
        relog.check_store(cfg, run)
        name = cfg.logger.get("register_model") if cfg.logger.get("enabled", True) else None
        if name and (run_id := run.run_id()):
            from audioml.run.use.serving import register_logged_model

            register_logged_model(run_id, run.store() or store_of(cfg).uri, str(name),
                                  cfg.logger.get("register_alias"))
    return metrics


def _data_of_run(cfg: DictConfig, run: RunDir, protocol, finished: bool):
    """The loaded DataModule whose data the run directory is bound to. For a holdout run that
    will train, it is the run's own (``TrainingRun`` takes it: nothing is loaded twice), built
    after the Trainer settings are validated. For a finished run, or a k-fold run (whose folds
    load their own), it is loaded without offline augmentation (the first fold for k-fold): the
    fingerprint counts only the data read."""
    folds = None if protocol is None else protocol.num_folds
    run.create()
    if not finished:
        validate_trainer(cfg)  # before decoding and the MLflow run: a config that cannot train leaves nothing
        lineage.check_registration(cfg.logger.get("register_model"), cfg.logger.get("register_alias"))
    L.seed_everything(cfg.seed, workers=True)
    if folds is None and not finished:
        return _loaded_data(run, lambda: build_datamodule(cfg))

    def without_training_extras():
        datamodule = instantiate(cfg.data, **(protocol.fold_data(protocol.fold_ids[0]) if folds else {}))
        datamodule.prepare_data()
        datamodule.setup("fit")
        return datamodule

    return _loaded_data(run, without_training_extras)


def _loaded_data(run: RunDir, load: Callable[[], object]):
    """``load()``; when no file of the data is usable, the skipped files are written in ``run``
    at once (rank zero) and the error names them."""
    try:
        return load()
    except NoUsableFilesError as error:
        if distributed.is_global_zero_process():
            error.skipped.to_csv(run.skipped_file, index=False)
        raise NoUsableFilesError(f"{error} ({run.skipped_file})", error.skipped) from None


def _data_record(datamodule) -> dict[str, str]:
    """What ``RunDir.bind_data`` keeps: the ``data.fingerprint`` and ``data.clips`` tags and the
    dataset root (shown when the data differs)."""
    tags = data_tags(datamodule)
    return {"fingerprint": tags.get("data.fingerprint", ""), "clips": tags.get("data.clips", "?"),
            "root": str(getattr(datamodule, "root", "?"))}


def _moved_config(cfg: DictConfig, run: RunDir) -> DictConfig:
    moved = copy.deepcopy(cfg)
    with open_dict(moved):
        moved.paths.run_dir = str(run.path)
    return moved


def _job_log_file(run: RunDir) -> Path | None:
    """The log file of the run in ``run``: its own (Hydra's, or a moved run's copy), else the
    one its job writes (a fold's lines are in its k-fold job's log)."""
    if run.log_file.is_file():
        return run.log_file
    return next((Path(h.baseFilename) for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)),
                None)


@contextlib.contextmanager
def _job_log_also_in(run: RunDir) -> Iterator[None]:
    """Hydra writes the job's log in the directory it chose; a run that moves to the directory
    of its data gets the same lines in its own copy there."""
    from hydra.core.hydra_config import HydraConfig

    root = logging.getLogger()
    hydra_dir = Path(HydraConfig.get().runtime.output_dir).resolve() if HydraConfig.initialized() else None
    hydra_file = next((h for h in root.handlers if isinstance(h, logging.FileHandler)
                       and Path(h.baseFilename).resolve().parent == hydra_dir), None)
    if hydra_file is None:
        yield
        return
    run.create()
    copy_handler = logging.FileHandler(run.file(Path(hydra_file.baseFilename).name), encoding="utf-8")
    copy_handler.setFormatter(hydra_file.formatter)
    copy_handler.setLevel(hydra_file.level)
    root.addHandler(copy_handler)
    try:
        yield
    finally:
        root.removeHandler(copy_handler)
        copy_handler.close()


def _run_protocol(cfg: DictConfig, run: RunDir, found: _Found) -> dict[str, float]:
    """The protocol in ``run``: one ``TrainingRun`` on the loaded data (holdout), or one per fold
    into ``fold_<i>``, each a child of a parent MLflow run that gets the summary (k-fold)."""
    protocol = found.protocol
    if protocol is None or protocol.num_folds is None:
        return TrainingRun(cfg, run.path, datamodule=found.datamodule).run().metrics
    rank_zero = distributed.is_global_zero_process()
    parent = _open_parent_run(cfg, run, protocol)
    with ending(parent if rank_zero else None):
        parent_id = getattr(parent, "run_id", None)
        with finishing.deferred():  # a fold's record is completed while the next fold trains
            result = protocol.run(lambda fold: train(_fold_config(cfg, run, fold, protocol.fold_data(fold)),
                                                     run.fold(fold).path, parent_run_id=parent_id))
        if rank_zero:
            files = write_kfold_reports(result, run)
            if parent is not None:
                parent.log_metrics(result.metrics)
                tracking.log_artifacts(parent, files)
                parent.finalize("success")
            if cfg.get("mark_done", True):  # false: a debug preset, never counted as finished
                run.mark_done(result.metrics)  # the folds are done, the summary written
    return result.metrics


def _fold_config(cfg: DictConfig, run: RunDir, fold: int, fold_data: dict[str, Any]) -> DictConfig:
    fold_cfg = copy.deepcopy(cfg)
    with open_dict(fold_cfg):
        fold_cfg.data.update(fold_data)  # the protocol's split of this fold (audioml.run.fit.protocols)
        fold_cfg.paths.run_dir = str(run.fold(fold).path)
        fold_cfg.logger.run_name = f"{cfg.logger.get('run_name') or run_title(cfg, run.path)} fold{fold}"
    return fold_cfg


def _open_parent_run(cfg: DictConfig, run: RunDir, protocol):
    """The MLflow run the folds nest under (rank zero logs its config), or ``None``."""
    run.create()
    logger = open_mlflow_logger(cfg, run, {**runtime_tags(cfg), "audioml.protocol": type(protocol).__name__})
    if logger is not None and distributed.is_global_zero_process():
        resolved = OmegaConf.to_container(cfg, resolve=True)
        run.write_config(OmegaConf.to_yaml(OmegaConf.create(resolved)))
        tracking.log_params(logger.experiment, logger.run_id, tracking.flatten_params(resolved))
        tracking.log_artifacts(logger, [run.config_file])
    return logger


class TrackingStoreError(RuntimeError):
    """The run's outputs are written but its MLflow store stopped answering before its record was
    complete; rerunning the command completes it."""


def train(cfg: DictConfig, run_dir: str | Path, parent_run_id: str | None = None) -> RunResult:
    """``TrainingRun(cfg, run_dir, parent_run_id).run()``."""
    return TrainingRun(cfg, run_dir, parent_run_id).run()


class TrainingRun:
    """One configuration trained, validated and tested in the run directory it owns.

    ``run()`` writes the run's config, checkpoints, metrics and reports into ``run_dir``
    (``RunDir``), and to MLflow, and returns its ``RunResult``. The metrics hold the test's,
    ``val/best_<monitor>`` and the honest numbers of ``cfg.evaluation``. ``parent_run_id`` nests
    the MLflow run (k-fold; else the running sweep's); ``datamodule``: the loaded data to train on
    (``None`` loads ``cfg.data``). A finished run returns its result; an unfinished one continues
    from its newest intact checkpoint into the same MLflow run.
    """

    def __init__(self, cfg: DictConfig, run_dir: str | Path, parent_run_id: str | None = None,
                 datamodule=None) -> None:
        self.cfg, self.directory, self.parent_run_id = cfg, RunDir(run_dir), parent_run_id
        self.datamodule = datamodule
        self.rank_zero = distributed.is_global_zero_process()
        self.logger = None

    def run(self) -> RunResult:
        cfg, run = self.cfg, self.directory.create()
        if (finished := run.finished()) is not None:
            log.info("%s finished before (%s): skipped; delete the folder to train again", run, RunDir.DONE)
            return finished_result(run, finished)
        torch.set_float32_matmul_precision("high")
        datamodule = self.datamodule
        if datamodule is None:
            L.seed_everything(cfg.seed, workers=True)
            validate_trainer(cfg)  # before decoding and the MLflow run: a config that cannot train leaves nothing
            datamodule = _loaded_data(run, lambda: build_datamodule(cfg))
        if self.rank_zero and len(datamodule.skipped):  # written now: a later failure keeps the list
            datamodule.skipped.to_csv(run.skipped_file, index=False)
        model = build_model(cfg, datamodule.class_names, datamodule.train_class_counts())
        fit_data_statistics(model, datamodule)
        resolved = self._write_config()
        record = self._record = model_record(cfg, datamodule, model.backbone)
        if self.rank_zero and (refusal := untrusted_targets(record, cfg.get("trusted_modules") or ())):
            log.warning("audioml-eval/predict will refuse this run's checkpoints unless told to trust them: %s", refusal)
        tags = {**runtime_tags(cfg), **data_tags(datamodule),
                **({"mlflow.parentRunId": self.parent_run_id} if self.parent_run_id else {})}
        self.logger = open_mlflow_logger(cfg, run, tags, finish_on_finalize=False)  # closed when all is written
        if self.rank_zero:
            figures.start(preload=[finishing.__name__] if finishing.deferring() else [])  # the worker starts while this run trains
        # no run left RUNNING on a crash; torch's thread count as it was (a head-only fit sets it)
        with ending(self.logger if self.rank_zero else None), threads_restored() as limits:
            self._thread_limits = limits
            if self.rank_zero:
                self._started = time.monotonic()
                log.info("run directory %s; %s", run, _mlflow_location(cfg, self.logger))
                log.info("model %s: %s parameters, %s trainable", _model_name(model),
                         _count(sum(p.numel() for p in model.parameters())),
                         _count(sum(p.numel() for p in model.parameters() if p.requires_grad)))
                if self.logger is not None:
                    tracking.log_params(self.logger.experiment, self.logger.run_id, tracking.flatten_params(resolved))
                    if tags.get("data.fingerprint"):  # the Dataset column of MLflow's runs table
                        presentation.log_data_input(self.logger.experiment, self.logger.run_id, presentation.data_input(
                            tags.get("audioml.data") or type(datamodule).__name__, tags["data.fingerprint"], datamodule))
            trainer, datamodule = self._fit(model, datamodule, record)
            self._curve_files = [path for callback in trainer.callbacks
                                 if isinstance(callback, (LearningCurves, LayerWeights))
                                 for path in callback.written(trainer)]
            best_callback = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
            best = best_callback.best_model_path if best_callback is not None else ""
            self._distributed = trainer.world_size > 1  # its other ranks wait for DONE: written inline
            if trainer.world_size > 1:  # test on one device, so every clip counts exactly once
                distributed.destroy_process_group()
                if not trainer.is_global_zero:
                    return finished_result(run, run.wait_finished())
                trainer = build_test_trainer(cfg, run, self.logger)
            try:
                metrics = self._test(trainer, model, datamodule, best, best_callback)
                return self._report(model, datamodule, metrics, set(trainer.callback_metrics), best)
            except BaseException:
                self._log_curves_of_unfinished_run()
                raise

    def _log_curves_of_unfinished_run(self) -> None:
        """The learning curves of a fit whose test or report failed (or was preempted): they are
        logged with the run's other reports, so an error after the fit would leave them out of
        MLflow otherwise. Best effort: the error that stopped the run is the one raised."""
        if self.logger is None or not self.rank_zero or not getattr(self, "_curve_files", None):
            return
        try:
            figures.wait(self._curve_files, timeout=60)
            tracking.log_artifacts(self.logger, self._curve_files)
        except Exception as error:  # noqa: BLE001 - the store may be what failed
            log.warning("learning curves not logged to MLflow (%s); they are in %s", error, self.directory)

    def _write_config(self) -> dict:
        resolved = OmegaConf.to_container(self.cfg, resolve=True)
        if self.rank_zero:
            self.directory.write_config(OmegaConf.to_yaml(OmegaConf.create(resolved)))
        return resolved

    def _fit(self, model, datamodule, record: dict) -> tuple[L.Trainer, object]:
        """Fit from the newest intact resume checkpoint (a damaged one falls back to the one
        before it); returns the trainer and the DataModule the model was fitted on."""
        cfg, logger = self.cfg, self.logger
        trainer = build_trainer(cfg, self.directory, [ModelInCheckpoint(record)], logger)
        if logger is not None and self.rank_zero:
            tracking.set_tags(logger.experiment, logger.run_id, {"device": facts.device_description(
                trainer.strategy.root_device.type, trainer.num_devices, trainer.num_nodes)})
        last = find_resume_checkpoint(self.directory)
        model.fit_pretraining_stage(datamodule, partial(instantiate, cfg.trainer, logger=logger,
                                                        default_root_dir=str(self.directory.path)), resume_checkpoint=last)
        # freeze=all without augmentation: train the head on cached backbone outputs (same splits),
        # writing head-only checkpoints until the fit ends (audioml.run.fit.head_only).
        datamodule = use_embedding_cache(model, datamodule, cfg.paths.cache_dir, trainer.strategy.root_device)
        if getattr(datamodule, "frozen_fingerprint", None):
            add_head_only_checkpoints(trainer, datamodule.frozen_fingerprint)
            use_head_only_threads(self._thread_limits)  # put back when the run ends (run())
        trainer.fit(model, datamodule=datamodule, ckpt_path=str(last) if last else None)
        if resume.stop_requested(trainer):  # SIGTERM in the last epoch: its checkpoint is written
            raise SIGTERMException()
        return trainer, datamodule

    def _test(self, trainer: L.Trainer, model, datamodule, best: str, best_callback) -> dict[str, float]:
        """Test the best checkpoint; the test metrics, ``val/best_<monitor>`` and the honest numbers."""
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None, verbose=False)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        if best_callback is not None and best_callback.best_model_score is not None and best_callback.monitor:
            group, _, name = best_callback.monitor.rpartition("/")
            metrics[f"{group}/best_{name}" if group else f"best_{name}"] = float(best_callback.best_model_score)
        metrics["model/parameters"] = float(sum(p.numel() for p in model.parameters()))  # a search may trade it off
        self._honest_files: list[Path] = []
        if self.cfg.get("evaluation"):
            protocol = instantiate(self.cfg.evaluation)
            if protocol.temperature_scaling and datamodule.task == "classification":  # on validation, never test
                fit = calibration.temperature_scale(model, datamodule, Path(best) if best else None, self._record)
                metrics.update(fit.metrics() if fit else {})
            honest, self._honest_files = honest_test_scores(protocol, model, datamodule, self.directory)
            metrics.update(honest)
        return metrics

    def _report(self, model, datamodule, metrics: dict[str, float], logged: set[str], best: str) -> RunResult:
        """Write the reports, log what Lightning did not, end the MLflow run, mark DONE."""
        cfg, logger, run = self.cfg, self.logger, self.directory
        if logger is not None and (unlogged := {k: v for k, v in metrics.items() if k not in logged}):
            logger.log_metrics(unlogged)
        result, files = write_run_reports(model, datamodule, run, metrics)
        if logger is not None:
            try:  # every buffered metric point is in the store before the run closes
                logger.flush(final=True)
            except Exception as error:
                raise TrackingStoreError(
                    f"the run trained and its results are in {run.metrics_file}, but the MLflow store "
                    f"{logger._tracking_uri} does not take them ({error_summary(error)}): rerun the same "
                    "command once it answers, to complete the run's MLflow record (nothing is trained again)") from error
        files += [*self._honest_files, *self._curve_files]
        # without a best checkpoint the test scored the final weights, which the last checkpoint holds
        tested = Path(best) if best else run.last_checkpoint
        if tested.is_file():
            files.append(run.record_tested(tested))
            log.info("tested checkpoint %s (recorded in %s)", tested, RunDir.TESTED)
        spec: dict[str, Any] = {"run_dir": str(run.path), "tracking_uri": None, "run_id": None,
                                "done": metrics if cfg.get("mark_done", True) else None,
                                "wait_for": [str(f) for f in files]}
        pruned = run.pruned()  # a search's pruner stopped it: its MLflow run ends KILLED
        if log_file := _job_log_file(run):  # where the report worker's lines of this run go
            spec["log_file"] = str(log_file)
        if logger is not None:
            tracking.stop_system_metrics(logger.run_id)  # its monitor runs here; the last sample now
            spec.update(tracking_uri=store_of(cfg).uri, run_id=logger.run_id,
                        artifacts=[str(run.config_file), *map(str, files)],
                        tags={**({"audioml.tested_checkpoint": tested.name} if tested.is_file() else {}),
                              **({"audioml.pruned": f"after epoch {pruned.get('epoch')}"} if pruned else {})},
                        status="KILLED" if pruned else "FINISHED",
                        checkpoint_artifacts=[[best, RunDir.CHECKPOINTS]] if best and cfg.logger.get("log_checkpoint",
                                                                                               True) else [])
            if best and (cfg.logger.get("log_model", True) or cfg.logger.get("register_model")):
                spec["model"] = self._model_spec(Path(best))
        # The MLflow record (the model first: the figure worker draws meanwhile), then DONE, the
        # marker last: here, or in the background inside a sweep (audioml.run.record.finishing).
        finishing.finish(spec, background=not getattr(self, "_distributed", False))
        if logger is not None:  # its columns in the experiment's saved view (the link is in the summary)
            choices, overrides = _hydra_choices_and_overrides()
            monitor = str(cfg.get("monitor") or "val/macro_f1")
            presentation.show_run_in_view(logger.experiment, logger.experiment_id, monitor, metrics, choices,
                                          presentation.setting_keys(overrides, choices))
        if not cfg.get("mark_done", True):
            log.info("no %s marker (mark_done=false, a debug preset): this run is not kept as finished", RunDir.DONE)
        log.info("%s", run_summary(cfg, metrics, run, logger, time.monotonic() - getattr(self, "_started",
                                                                                    time.monotonic())))
        return result

    def _model_spec(self, best: Path) -> dict[str, Any] | None:
        """What ``audioml.run.use.serving.log_model`` needs to log ``best`` as the run's MLflow model,
        or ``None`` (with a warning) when its record would be refused when loaded."""
        from audioml.run.use.checkpoint import UntrustedCheckpointError, check_record

        trusted = [str(m) for m in self.cfg.get("trusted_modules") or ()]
        try:  # the record written into the checkpoint, checked as read_record checks it
            check_record(self._record, trusted, source=str(best))
        except UntrustedCheckpointError as error:
            log.warning("no MLflow model logged: the checkpoint would be refused when loaded (%s)", error)
            return None
        return {"checkpoint": str(best), "record": self._record, "trusted": trusted,
                "registered_model_name": self.cfg.logger.get("register_model"),
                "register_alias": self.cfg.logger.get("register_alias")}


def _hydra_choices_and_overrides() -> tuple[dict[str, str], list[str]]:
    """The config group choices and command-line overrides of the running Hydra job (none outside one)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}, []
    hydra_cfg = HydraConfig.get()
    return ({str(k): str(v) for k, v in hydra_cfg.runtime.choices.items() if not str(k).startswith("hydra")},
            [str(o) for o in hydra_cfg.overrides.task])


def _count(number: int) -> str:
    return f"{number / 1e6:.1f} M" if number >= 1e6 else f"{number / 1e3:.1f} K" if number >= 1e3 else str(number)


def _model_name(model) -> str:
    return f"{type(model).__name__}({type(model.backbone).__name__})"


def run_summary(cfg: DictConfig, metrics: dict[str, float], run: RunDir, logger, seconds: float) -> str:
    """The end of a run in a few lines: the headline test metric with its interval and baseline,
    where the run is and how to open it in MLflow."""
    name = str(cfg.get("monitor") or "val/macro_f1").rpartition("/")[2].removeprefix("best_")
    key = f"test/{name}" if f"test/{name}" in metrics else next((k for k in ("test/macro_f1", "test/ccc", "test/acc")
                                                                  if k in metrics), None)
    minutes, rest = divmod(int(round(seconds)), 60)
    lines = [f"finished in {minutes}:{rest:02d}"]
    if key is not None:
        metric = key.split("/", 1)[1]
        text = f"  test {metric} {metrics[key]:.3f}"
        if f"{key}_ci_low" in metrics:
            text += f" [95% CI {metrics[f'{key}_ci_low']:.3f}-{metrics[f'{key}_ci_high']:.3f}]"
        if f"baseline/{metric}" in metrics:
            text += f", baseline (always the majority class or the mean) {metrics[f'baseline/{metric}']:.3f}"
        others = [f"{k.split('/', 1)[1]} {metrics[k]:.3f}" for k in ("test/acc", "test/balanced_acc", "test/mse")
                  if k in metrics and k != key]
        lines.append(text + (f"; {', '.join(others)}" if others else ""))
    lines.append(f"  run directory {run} ({RunDir.METRICS}, {RunDir.CHECKPOINTS}, reports)")
    if logger is not None:
        store = store_of(cfg)
        lines.append(f"  MLflow run {logger.run_id}: {store.browse}")
        lines.append(f"  its experiment's runs side by side: {presentation.view_link(store.uri, logger.experiment_id)}")
    return "\n".join(lines)


def _mlflow_location(cfg: DictConfig, logger) -> str:
    """``MLflow run <id> in <tracking uri>`` (or that MLflow is off), for the start and end lines."""
    if logger is None:
        return "MLflow logging off (logger.enabled=false)"
    return f"MLflow run {logger.run_id} in {store_of(cfg).uri}"
