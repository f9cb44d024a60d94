"""A finished run and the MLflow store it went to: the run key leaves out where results go
(``logger``, ``paths``), so the same command with another ``logger.tracking_uri`` /
``MLFLOW_TRACKING_URI`` finds the run directory finished and skips it. :func:`check_store`
then says where the run was logged and that nothing goes to the new store, or, with
``logger.relog=true``, copies the finished run there (:func:`copy_finished_run`).

A run directory records its store (``RunDir.store``: the tracking URI without a password,
written when its MLflow run opens) beside the run id, and the copies made of it
(``RunDir.copies``); a copy carries the tag ``audioml.copy_of=<original run id>``, so a copy made
from another machine into a shared store is found too.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from audioml.run.record import tracking
from audioml.run.record.store import Store
from audioml.run.rundir import RunDir, without_password

log = logging.getLogger(__name__)

__all__ = ["COPY_TAG", "check_store", "copy_finished_run", "find_in_store"]

COPY_TAG = "audioml.copy_of"
#: Tags of the original run that describe it as a record of its own store, not copied.
_NOT_COPIED_TAGS = ("mlflow.parentRunId", "mlflow.runName", "mlflow.log-model.history", "mlflow.loggedArtifacts")
_MODEL_ARTIFACT = "model"


def _store_exists(uri: str) -> bool:
    """False only for an SQLite file that does not exist (looking would create it)."""
    return not uri.startswith("sqlite:///") or Path(uri[len("sqlite:///"):]).is_file()


def find_in_store(tracking_uri: str, run: RunDir) -> str | None:
    """Id of the run directory's MLflow run in ``tracking_uri``: its own run, or a copy of it
    (recorded in ``mlflow_copies.json`` or tagged ``audioml.copy_of``); ``None`` when the store
    holds neither."""
    if not _store_exists(tracking_uri):
        return None
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri)
    run_id = run.run_id()
    for candidate in (run_id, run.copies().get(without_password(tracking_uri))):
        if candidate:
            try:
                if client.get_run(candidate).info.lifecycle_stage == "active":
                    return candidate
            except MlflowException:
                pass
    if run_id:
        experiments = [e.experiment_id for e in client.search_experiments()]
        found = client.search_runs(experiments, f"tags.`{COPY_TAG}` = '{run_id}'", max_results=1) if experiments else []
        if found:
            return found[0].info.run_id
    return None


def check_store(cfg, run: RunDir) -> None:
    """For a finished run directory skipped by this command (rank zero, MLflow on): when the store
    this command logs to does not hold its run, warn where the run is and that nothing is logged
    here, or with ``logger.relog=true`` copy it here (``copy_finished_run``; the folds of a
    k-fold run too, under a copied parent)."""
    if not cfg.logger.get("enabled", True):
        return
    store = Store.of(cfg.logger.get("tracking_uri"), cfg.paths.mlflow_dir)
    target = store.uri
    source, run_id = run.store(), run.run_id()
    if run_id and source == without_password(target):
        return  # the usual rerun: the same store
    found = find_in_store(target, run)
    if found:
        if found != run_id:
            log.info("%s finished before; its MLflow run is in %s as the copy %s", run, target, found)
        return
    where = f"was logged to MLflow run {run_id} in {source}" if run_id else "was trained with MLflow off"
    if not cfg.logger.get("relog", False):
        log.warning("%s finished before and %s; the store this command logs to, %s, does not hold it, so nothing "
                    "is logged there. To copy the finished run there (params, metrics with their history, "
                    "artifacts, the model), rerun with logger.relog=true; to train again, delete the run "
                    "directory.", run, where, target)
        return
    artifact_location = store.artifact_location
    options = {"log_model": bool(cfg.logger.get("log_model", True)), "register_model": cfg.logger.get("register_model"),
               "trusted_modules": list(cfg.get("trusted_modules") or ())}
    parent = os.environ.get(tracking.PARENT_RUN_ENV)  # a job of a sweep running now: under its parent
    copied = copy_finished_run(run, target, str(cfg.logger.experiment_name), artifact_location, parent, **options)
    folds = [fold for fold in run.folds() if fold.metrics_file.is_file()]
    for fold in folds:
        copy_finished_run(fold, target, str(cfg.logger.experiment_name), artifact_location, copied, **options)
    log.info("%s finished before and %s: copied into %s as MLflow run %s%s (logger.relog=true)", run, where,
             target, copied, f" with its {len(folds)} folds" if folds else "")


def copy_finished_run(run: RunDir, tracking_uri: str, experiment_name: str, artifact_location: str | None = None,
                      parent_run_id: str | None = None, log_model: bool = True, register_model: str | None = None,
                      trusted_modules: Iterable[str] = ()) -> str:
    """Log the finished run of ``run`` into ``tracking_uri`` (experiment
    ``experiment_name``, created when missing) as a new run; returns its id.

    From the store it was logged to, when that still holds it: name, start and end time,
    status, params, tags, every metric's full history and every artifact. Otherwise from the run
    directory: params from ``config.yaml``, the final metrics from ``metrics.json``, the
    per-epoch ones from ``learning_curves.csv``, its reports and tested checkpoint as artifacts.
    Either way the tested checkpoint is logged as the run's MLflow model (``log_model``, as
    training does), the copy is tagged ``audioml.copy_of`` and recorded in ``mlflow_copies.json``.
    ``parent_run_id`` nests it (a k-fold parent's copy, the running sweep's parent)."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    source_uri, run_id = run.store(), run.run_id()
    source = _source_run(source_uri, run_id)
    tracking.prepare_store(tracking_uri)
    experiment_id = tracking.get_or_create_experiment(tracking_uri, experiment_name, artifact_location)
    client = MlflowClient(tracking_uri)
    tags = {COPY_TAG: run_id or "", "audioml.copied_from": source_uri or "", "audioml.copied_at": time.ctime(),
            **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {}),
            **({"audioml.sweep_key": os.environ.get(tracking.SWEEP_KEY_ENV, "")} if parent_run_id and
               parent_run_id == os.environ.get(tracking.PARENT_RUN_ENV) else {})}
    if source is not None:
        source_client, original = source
        copied_tags = {k: v for k, v in original.data.tags.items() if k not in _NOT_COPIED_TAGS}
        created = client.create_run(experiment_id, start_time=original.info.start_time,
                                    tags={**copied_tags, **tags}, run_name=original.info.run_name)
        new_id = created.info.run_id
        params = [Param(k, v) for k, v in original.data.params.items()]
        history = [m for key in original.data.metrics for m in source_client.get_metric_history(run_id, key)]
        status, end_time = original.info.status, original.info.end_time
    else:
        created = client.create_run(experiment_id, tags={**tags, "audioml.copy_note": "rebuilt from the run directory "
                                                     "(the store it was logged to no longer holds it)"},
                                run_name=run.name)
        new_id = created.info.run_id
        tracking.log_params(client, new_id, tracking.flatten_params(run.config()))  # locations become tags, as in training
        params, history = [], _history_from_run_dir(run)
        status, end_time = "FINISHED", None
    for start in range(0, len(params), 100):  # MLflow's batch limits
        client.log_batch(new_id, params=params[start:start + 100])
    for start in range(0, len(history), 1000):
        client.log_batch(new_id, metrics=[Metric(m.key, m.value, m.timestamp, m.step)
                                          for m in history[start:start + 1000]])
    _copy_artifacts(client, new_id, run, source, skip_model=log_model)
    tested = run.tested_checkpoint() or run.best_checkpoint()
    if log_model and tested is not None:
        from audioml.run.use import serving
        from audioml.run.use.checkpoint import UntrustedCheckpointError, read_record

        try:
            record, _ = read_record(tested, list(trusted_modules))
            serving.log_model(new_id, tracking_uri, tested, record, register_model, list(trusted_modules))
        except UntrustedCheckpointError as error:
            log.warning("no MLflow model logged for the copy: the checkpoint would be refused when loaded (%s)", error)
    client.set_terminated(new_id, status if status in ("FINISHED", "FAILED", "KILLED") else "FINISHED", end_time)
    run.record_copy(tracking_uri, new_id)
    return new_id


def _source_run(source_uri: str | None, run_id: str | None):
    """``(client, run)`` of the original run when its store still holds it, else ``None``."""
    if not source_uri or not run_id or not _store_exists(source_uri):
        return None
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        tracking.check_reachable(source_uri)
        client = MlflowClient(source_uri)
        return client, client.get_run(run_id)
    except (MlflowException, ConnectionError, OSError) as error:
        log.warning("the original MLflow run %s in %s cannot be read (%s): the copy is rebuilt from the run "
                    "directory", run_id, source_uri, str(error).splitlines()[0] if str(error) else type(error).__name__)
        return None


def _history_from_run_dir(run: RunDir) -> list:
    """Metric points from the run directory: per epoch from the learning curves' table, the
    final metrics at step 0."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    points = []
    curves = run.curves_table
    if curves.is_file():
        for row in pd.read_csv(curves).to_dict("records"):
            points += [Metric(k, float(v), now, int(row["epoch"])) for k, v in row.items()
                       if k != "epoch" and pd.notna(v)]
    return points + [Metric(k, float(v), now, 0) for k, v in (run.metrics() or {}).items()]


def _copy_artifacts(client, run_id: str, run: RunDir, source, skip_model: bool) -> None:
    """The original run's artifacts (its ``model`` folder left to ``serving.log_model`` when the
    model is logged again), else the run directory's reports and tested checkpoint."""
    if source is not None:
        source_client, original = source
        with tempfile.TemporaryDirectory() as scratch:
            for item in source_client.list_artifacts(original.info.run_id):
                if skip_model and item.path == _MODEL_ARTIFACT:
                    continue
                local = source_client.download_artifacts(original.info.run_id, item.path, scratch)
                target = os.path.dirname(item.path) or None
                if item.is_dir:
                    client.log_artifacts(run_id, local, item.path)
                else:
                    client.log_artifact(run_id, local, target)
        return
    for pattern in RunDir.RECORDED:
        for path in sorted(run.path.glob(pattern)):
            client.log_artifact(run_id, str(path))
    tested = run.tested_checkpoint()
    if tested is not None:
        client.log_artifact(run_id, str(tested), RunDir.CHECKPOINTS)
