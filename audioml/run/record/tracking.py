"""MLflow: where runs go, how a run is found again, what is logged beside the metrics.

Layout: one experiment per ``logger.experiment_name`` (the dataset by default); a run per
training job, continued (same run id, stored in ``<run_dir>/mlflow_run_id``) when the job is
rerun after an interruption; a Hydra sweep is a parent run and its jobs are its children
(``mlflow.parentRunId``, see :mod:`audioml.run.record.sweep`). Every run gets the flattened resolved
config as params (the full file as the ``config.yaml`` artifact), tags for the code version,
data, host and device, per-epoch metrics and the final test metrics under stable names
(``test/<metric>``), and the best checkpoint as an artifact (``logger.log_checkpoint``).
While a run is open, MLflow's system-metrics monitor samples CPU, memory, disk, network and,
where ``pynvml`` finds an NVIDIA GPU, GPU utilisation and memory into ``system/*`` metrics
(:func:`start_system_metrics`; one sample at least, taken when the run ends).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from audioml.errors import error_summary
from audioml.files import exclusive_lock
from audioml.run.record.store import REACHABLE_TIMEOUT_SECONDS, Store, check_reachable, using_store  # noqa: F401 - defined there (no torch), used from here  # noqa: F401 - the same
from audioml.run.record.store import process_defaults_kept as _process_defaults_kept
from audioml.run.rundir import RunDir

log = logging.getLogger(__name__)

__all__ = ["Store", "prepare_store", "get_or_create_experiment",
           "flatten_params", "is_location", "ResumableMLFlowLogger", "make_mlflow_logger", "open_run", "log_params",
           "set_tags",
           "log_artifacts", "set_status",
           "PARENT_RUN_ENV", "SWEEP_KEY_ENV", "check_reachable", "REACHABLE_TIMEOUT_SECONDS",
           "using_store", "start_system_metrics", "stop_system_metrics",
           "SYSTEM_METRICS_INTERVAL_SECONDS"]

#: MLflow rejects longer param values; the full config is always an artifact as well.
MAX_PARAM_LENGTH = 6000
#: Environment variables through which a sweep (audioml.run.record.sweep) hands its parent run to its jobs.
PARENT_RUN_ENV = "AUDIOML_MLFLOW_PARENT_RUN_ID"
SWEEP_KEY_ENV = "AUDIOML_SWEEP_KEY"
#: Config keys that name a location (logged as tags, not params; ``is_location``).
_LOCATION_KEYS = {"dirpath", "root", "cache_dir", "data_dir", "output_dir", "run_dir", "weights_dir", "mlflow_dir",
                  "noise_dir", "ir_dir", "tracking_uri", "path"}
MAX_TAG_LENGTH = 5000
#: Seconds between system-metrics samples unless ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` says otherwise.
SYSTEM_METRICS_INTERVAL_SECONDS = 10.0
#: The system-metrics monitor of each run open in this process, by run id.
_system_monitors: dict[str, Any] = {}
_METRIC_KEY = re.compile(r"[^a-zA-Z0-9_/. -]+")  # what MLflowLogger strips from metric names


def metric_key(name: str) -> str:
    """``name`` as a metric key MLflow accepts: characters it refuses stripped (as Lightning's
    MLFlowLogger does), repeated slashes and ``..`` segments removed (MLflow treats keys as paths)."""
    key = re.sub(r"/{2,}", "/", _METRIC_KEY.sub("", name))
    return "/".join(part for part in key.split("/") if part not in ("", ".", "..")) or "metric"


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


@contextmanager
def _store_lock(uri: str):
    """Exclusive lock beside an SQLite store (nothing for other stores): creating the tables or
    an experiment from several processes at once must not race."""
    path = _sqlite_path(uri)
    if path is None:
        yield
        return
    with exclusive_lock(path.with_name(path.name + ".lock"), f"preparing the MLflow store {path}: waiting for it"):
        yield


def prepare_store(uri: str) -> None:
    """Create an SQLite store's tables once, under the lock (several jobs starting at once on
    a new store would otherwise run MLflow's schema migrations concurrently). Other stores
    are left to their server."""
    if _sqlite_path(uri) is None:
        return
    from mlflow import MlflowClient

    with _store_lock(uri):
        MlflowClient(uri).search_experiments(max_results=1)


def get_or_create_experiment(uri: str, name: str, artifact_location: str | None = None) -> str:
    """Id of experiment ``name`` (restored when deleted), created when missing; safe when
    several processes do it at once. It opens as a model-training experiment in MLflow's UI
    (``audioml.run.record.presentation.mark_model_training``; an experiment that has a kind keeps it)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from audioml.run.record.presentation import EXPERIMENT_KIND_TAG, MODEL_TRAINING, mark_model_training

    client = MlflowClient(uri)
    with _store_lock(uri):
        for _ in range(3):
            experiment = client.get_experiment_by_name(name)
            if experiment is not None:
                if experiment.lifecycle_stage == "deleted":
                    client.restore_experiment(experiment.experiment_id)
                mark_model_training(client, experiment)
                return experiment.experiment_id
            try:
                return client.create_experiment(name, artifact_location=artifact_location,
                                                tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
            except MlflowException:  # created by another process (a remote server has no lock)
                continue
    raise RuntimeError(f"could not create or find the MLflow experiment {name!r} at {uri}")


def flatten_params(config: Mapping, prefix: str = "") -> dict[str, str]:
    """Nested mapping -> ``{"a.b.c": "value"}``; lists joined as JSON-ish text, long values
    truncated to ``MAX_PARAM_LENGTH`` (with a marker)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=f"{name}."))
            continue
        text = str(value)
        if len(text) > MAX_PARAM_LENGTH:
            text = text[: MAX_PARAM_LENGTH - 20] + "...[see config.yaml]"
        flat[name] = text
    return flat


class ResumableMLFlowLogger(MLFlowLogger):
    """Lightning's ``MLFlowLogger`` for runs that can be interrupted and continued.

    - Continuing a run (``run_id`` given), a metric point ``(name, step)`` that the run already
      holds is not logged again: the steps replayed after a resume do not duplicate points.
      (A deterministic resumed run recomputes the same values; otherwise the first-logged
      value stays.)
    - With ``finish_on_finalize=False``, Lightning's ``finalize("success")`` after fit and test
      leaves the run RUNNING: the entry point closes it once every output is written
      (:func:`set_status`). Failures still mark it FAILED.
    - Metric points are buffered and written together (one ``log_batch`` of up to 1,000
      points) at most every ``flush_seconds`` and on :meth:`flush`: when a resume checkpoint is
      saved, at ``finalize`` and before the run is closed. A head-only job logs ~120 points in
      40 epochs of milliseconds; a database round trip for each was a third of its time.
    - A store that stops answering does not stop training: the points stay buffered (said once)
      and are kept in ``pending_file`` too (a process that ends meanwhile loses none: the next
      logger of the run writes them, each once), the periodic writes pause for ``retry_seconds``,
      and every checkpoint tries again. Only the last flush, when the run closes
      (``flush(final=True)``), raises.
    """

    #: Seconds between writes of the buffered metric points (also written on ``flush``).
    flush_seconds = 5.0
    #: After a failed write, seconds before a periodic write tries again (checkpoints always try).
    retry_seconds = 60.0

    def __init__(self, *args: Any, finish_on_finalize: bool = True, pending_file: str | Path | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.finish_on_finalize = finish_on_finalize
        self.resumed = kwargs.get("run_id") is not None
        self._points_before: dict[str, set[int]] | None = None
        self._pending: list[Any] = []
        self._flushed_at = time.monotonic()
        self._failing_since: float | None = None
        self.pending_file = Path(pending_file) if pending_file is not None else None
        self._kept_points = self.resumed and self.pending_file is not None and self.pending_file.is_file()
        if self._kept_points:  # points an earlier process could not write: written first, each once
            from mlflow.entities import Metric

            try:
                self._pending = [Metric(**point) for point in json.loads(self.pending_file.read_text())]
            except (ValueError, TypeError) as error:
                log.warning("%s is unreadable (%s): its metric points are lost", self.pending_file, error)

    @property
    def experiment(self):
        """The ``MlflowClient`` (rank zero). Lightning calls ``mlflow.set_tracking_uri``, which is
        process-wide; the user's settings are put back, so that the next run in this process (a
        sweep's next job) resolves its own store as configured."""
        with _process_defaults_kept():
            return MLFlowLogger.experiment.fget(self)

    def _existing_points(self) -> dict[str, set[int]]:
        if self._points_before is None:
            client = self.experiment
            keys = client.get_run(self.run_id).data.metrics.keys()
            self._points_before = {key: {m.step for m in client.get_metric_history(self.run_id, key)}
                                   for key in keys}
        return self._points_before

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        # audioml logs per epoch: plot against the epoch (Lightning passes its global step)
        if "epoch" in metrics:
            step = int(metrics["epoch"])
        if self.resumed:
            existing = self._existing_points()
            metrics = {k: v for k, v in metrics.items()
                       if (step or 0) not in existing.get(metric_key(f"{self._prefix}{k}"), ())}
            if not metrics:
                return
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        self._pending += [Metric(key=metric_key(f"{self._prefix}{k}"), value=float(v), timestamp=timestamp,
                                 step=step or 0) for k, v in metrics.items() if not isinstance(v, str)]
        wait = self.retry_seconds if self._failing_since is not None else self.flush_seconds
        if time.monotonic() - self._flushed_at >= wait:
            self.flush()

    @rank_zero_only
    def flush(self, final: bool = False) -> None:
        """Write the buffered metric points to the store. When it fails they stay buffered (and
        in ``pending_file``) and training goes on (a warning at the first failure); ``final``:
        the failure is raised."""
        self._flushed_at = time.monotonic()
        while self._pending:
            batch = self._pending[:1000]  # MLflow's limit per log_batch
            try:
                if self._kept_points:  # kept by an earlier process: some may have reached the store since
                    existing = self._existing_points()
                    self._pending = [m for m in self._pending if m.step not in existing.get(m.key, ())]
                    self._kept_points = False
                    continue
                self.experiment.log_batch(run_id=self.run_id, metrics=batch, **self._log_batch_kwargs)
            except Exception as error:  # noqa: BLE001 - any store failure: keep the points, say it once
                self._keep_pending()
                if final:
                    raise
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    log.warning("the MLflow store %s does not take metric points (%s): training goes on; %d points "
                                "are kept and written when it answers (tried at every checkpoint)",
                                self._tracking_uri, error_summary(error), len(self._pending))
                return
            del self._pending[:len(batch)]
        if self.pending_file is not None:
            self.pending_file.unlink(missing_ok=True)
        if self._failing_since is not None:
            log.info("the MLflow store %s answers again after %.0f s: the kept metric points are written",
                     self._tracking_uri, time.monotonic() - self._failing_since)
            self._failing_since = None

    def _keep_pending(self) -> None:
        if self.pending_file is not None:
            from audioml.files import atomic_write_bytes

            atomic_write_bytes(self.pending_file, json.dumps([
                {"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step}
                for m in self._pending]).encode())

    @rank_zero_only
    def log_hyperparams(self, params) -> None:
        """Lightning logs the module's hyperparameters at every fit and test; the store being
        away then must not stop the run (the whole config is logged as params by audioml, and
        again, skipping what the run holds, when the command is rerun)."""
        try:
            super().log_hyperparams(params)
        except Exception as error:  # noqa: BLE001 - any store failure: the run goes on
            log.warning("the MLflow store %s does not take the model's hyperparameters (%s): the run goes on",
                        self._tracking_uri, error_summary(error))

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        self.flush(final=status == "success" and self.finish_on_finalize)
        if status == "success" and not self.finish_on_finalize:
            return
        if self._run_id:
            stop_system_metrics(self._run_id)
        super().finalize(status)


def make_mlflow_logger(experiment_name: str, run_name: str | None, tracking_uri: str,
                       artifact_location: str | None = None, run_id: str | None = None,
                       tags: Mapping[str, str] | None = None,
                       finish_on_finalize: bool = True, pending_file: str | Path | None = None) -> ResumableMLFlowLogger:
    """A :class:`ResumableMLFlowLogger`; with ``run_id`` it continues that run (when the store
    has it; otherwise a warning and a new run)."""
    if run_id is not None:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        try:
            MlflowClient(tracking_uri).get_run(run_id)
        except MlflowException:
            log.warning("MLflow run %s is not in %s: starting a new run", run_id, tracking_uri)
            run_id = None
    return ResumableMLFlowLogger(experiment_name=experiment_name, run_name=run_name, tracking_uri=tracking_uri,
                                 artifact_location=artifact_location, run_id=run_id, tags=dict(tags or {}),
                                 log_model=False, finish_on_finalize=finish_on_finalize, pending_file=pending_file)


def _system_metrics_wanted(asked: bool | None) -> bool:
    """``asked`` when given, else MLflow's ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING`` when set, else on."""
    if asked is not None:
        return bool(asked)
    value = os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING")
    return True if value is None else value.strip().lower() in ("1", "true", "yes", "on")


def start_system_metrics(run_id: str, tracking_uri: str, interval_seconds: float | None = None,
                         resume: bool = False) -> None:
    """Sample the machine into run ``run_id``'s ``system/*`` metrics every ``interval_seconds``
    (default ``SYSTEM_METRICS_INTERVAL_SECONDS``; MLflow's ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``
    wins) in a daemon thread, until :func:`stop_system_metrics` or the run ends. ``resume``:
    continue the steps of a continued run. The monitor writes to ``tracking_uri`` itself, never
    through MLflow's process-wide store. Needs ``psutil``; without it a warning, no monitor."""
    if run_id in _system_monitors:
        return
    try:
        import psutil  # noqa: F401  (MLflow's CPU and memory monitors)
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError as error:
        log.warning("no system metrics for MLflow run %s: %s (pip install psutil)", run_id, error)
        return
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # three INFO lines per run otherwise
    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_seconds or SYSTEM_METRICS_INTERVAL_SECONDS,
                                   resume_logging=resume, tracking_uri=tracking_uri)
    monitor.start()
    _system_monitors[run_id] = monitor


def stop_system_metrics(run_id: str) -> None:
    """Stop the system-metrics monitor of ``run_id`` (if any) and log one last sample, so a run
    shorter than the sampling interval still has one; called before the run is ended."""
    monitor = _system_monitors.pop(run_id, None)
    if monitor is None:
        return
    try:
        monitor.finish()
        monitor.collect_metrics()
        monitor.publish_metrics(monitor.aggregate_metrics())
        monitor.mlflow_logger.flush()
    except Exception as error:  # a store gone away must not hide how the run ended
        log.warning("last system-metrics sample of MLflow run %s not logged: %s", run_id, error)


def open_run(experiment_name: str, run_name: str, store: Store, run: RunDir,
             tags: Mapping[str, str] | None = None, finish_on_finalize: bool = True, rank_zero: bool = True,
             system_metrics: bool | None = None, system_metrics_interval: float | None = None) -> ResumableMLFlowLogger:
    """The logger of the MLflow run whose id ``run`` keeps, in ``store``: that run continued
    (status RUNNING again) when ``run`` has one, else a new run whose id (and store) ``run``
    records.

    ``tags`` also gets the parent of the sweep this process runs in (``PARENT_RUN_ENV``) unless
    it names a parent itself; tags are refreshed on a continued run (host, commit may differ).
    Only ``rank_zero`` creates experiments and runs and writes the file; other DDP ranks get an
    inert logger (Lightning logs from rank zero only).

    ``system_metrics`` (default: on unless ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING`` is false):
    sample the machine into the run every ``system_metrics_interval`` seconds
    (:func:`start_system_metrics`) until :func:`set_status` ends it.
    """
    tags = dict(tags or {})
    if "mlflow.parentRunId" not in tags and os.environ.get(PARENT_RUN_ENV):
        tags["mlflow.parentRunId"] = os.environ[PARENT_RUN_ENV]
        tags["audioml.sweep_key"] = os.environ.get(SWEEP_KEY_ENV, "")
    previous = run.run_id_or_set_aside()
    tracking_uri = store.uri
    if rank_zero:
        prepare_store(tracking_uri)
        get_or_create_experiment(tracking_uri, experiment_name, store.artifact_location)
    logger = make_mlflow_logger(experiment_name, run_name, tracking_uri, store.artifact_location,
                                run_id=previous or None, tags=tags, finish_on_finalize=finish_on_finalize,
                                pending_file=run.pending_points_file)
    if rank_zero:
        run_id = logger.run_id  # creates the run on first access
        if run_id != previous:
            run.write_run_id(run_id)
        run.record_store(tracking_uri)  # beside the run id: which store holds it
        if logger.resumed:
            set_status(logger.experiment, run_id, "RUNNING")
            earlier = logger.experiment.get_run(run_id).data.tags.get("audioml.error")
            if earlier is not None:  # the attempt that stopped: kept as history, no longer the run's error
                tags["audioml.previous_error"] = earlier
                logger.experiment.delete_tag(run_id, "audioml.error")
            set_tags(logger.experiment, run_id, tags)
            log.info("continuing MLflow run %s", run_id)
        if _system_metrics_wanted(system_metrics):
            start_system_metrics(run_id, tracking_uri, system_metrics_interval, resume=logger.resumed)
    return logger


def is_location(key: str, value: Any) -> bool:
    """Whether a flattened config entry says where something is (``paths.*``, a checkpoint
    ``dirpath``, a dataset ``root``, any absolute path): a fact of the machine, not a
    hyperparameter."""
    text = str(value)
    return (key.split(".")[0] == "paths" or key.rsplit(".", 1)[-1] in _LOCATION_KEYS
            or text.startswith(("/", "~")) or bool(re.match(r"^[A-Za-z]:[\\/]", text)))


def log_params(client, run_id: str, params: Mapping[str, str]) -> None:
    """Log ``params`` on the run, skipping those it already holds. A changed value keeps the
    first value: MLflow params are immutable. Locations (``is_location``) go to tags
    ``path.<key>`` instead, so the compare view plots hyperparameters, not folders, and a run
    continued on another machine shows where it is now."""
    from mlflow.entities import Param

    locations = {f"path.{k}": v for k, v in params.items() if is_location(k, v)}
    if locations:
        set_tags(client, run_id, {k: str(v)[:MAX_TAG_LENGTH] for k, v in locations.items()})
    params = {k: v for k, v in params.items() if not is_location(k, v)}
    existing = client.get_run(run_id).data.params
    changed = sorted(k for k, v in params.items() if k in existing and existing[k] != str(v))
    if changed:
        log.info("MLflow params keep their first values for %s", ", ".join(changed))
    new = [Param(k, str(v)) for k, v in params.items() if k not in existing]
    for start in range(0, len(new), 100):  # MLflow's batch limit
        client.log_batch(run_id, params=new[start:start + 100])


def set_tags(client, run_id: str, tags: Mapping[str, str]) -> None:
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def set_status(client, run_id: str, status: str) -> None:
    """Set the run's status: ``RUNNING`` (continued), ``FINISHED``, ``FAILED`` or ``KILLED``
    (preempted: resumable by rerunning the command). Ending a run stops its system-metrics
    monitor first (its last sample logged)."""
    if status == "RUNNING":
        client.update_run(run_id, status="RUNNING")
    else:
        stop_system_metrics(run_id)
        client.set_terminated(run_id, status)


def log_artifacts(logger, paths: list[Path], artifact_path: str | None = None) -> None:
    """Upload files to the logger's run (missing files are skipped with a warning)."""
    for path in paths:
        if Path(path).is_file():
            logger.experiment.log_artifact(logger.run_id, str(path), artifact_path)
        else:
            log.warning("artifact %s does not exist; not logged", path)
