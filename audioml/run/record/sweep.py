"""Hydra multirun sweeps in MLflow: a sweep is a parent run, each of its jobs a child run.

:class:`MLflowSweepCallback` (registered in ``conf/hydra/default.yaml``) finds or creates the
parent by a key hashed from the sweep's overrides and hands its id to the jobs through the
environment; records a failed job (``FAILED``, traceback, MLflow FAILED, its overrides) without
stopping the others; keeps the plan and started jobs for ``audioml-compare --status``
(:mod:`audioml.run.record.status`); and ends with a summary and, over seeds, the aggregate
(:mod:`audioml.run.record.aggregate`). How and why: docs/design/resume-and-finishing.md."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from audioml.errors import error_summary
from audioml.run.outcome import interrupted
from audioml.run.record import tracking
from audioml.run.record.store import Store
from audioml.run.rundir import RunDir

log = logging.getLogger(__name__)

__all__ = ["MLflowSweepCallback", "sweep_key", "find_or_create_sweep_run", "check_slurm_tools",
           "LauncherUnavailableError", "end_running_sweep", "SLURM_TOOLS", "planned_jobs", "sweep_had_failures"]

_KEY_TAG = "audioml.sweep_key"
_ROLE_TAG = "audioml.role"
#: What the submitit SLURM launcher runs: ``sbatch`` submits each job, ``srun`` starts its tasks.
SLURM_TOOLS = ("sbatch", "srun")
#: The parent run of the multirun this process is launching, ``(client, run id)``, until it ends.
_running_sweep: list[tuple[Any, str]] = []
#: The record folder of the multirun this process is launching (``audioml.run.record.status``), until it ends.
_running_record: list[Path] = []
#: Failed jobs of the multirun that ended in this process (``audioml-train`` exits 1 when non-zero).
_failed_jobs: list[int] = []


class LauncherUnavailableError(CompactHydraException):
    """The sweep's launcher cannot start jobs on this machine (Hydra prints the message alone)."""


def check_slurm_tools(which: Callable[[str], str | None] = shutil.which) -> None:
    """Raise ``LauncherUnavailableError`` when ``sbatch`` or ``srun`` is not on ``PATH``
    (``which``: ``shutil.which``); called by ``hydra/launcher=slurm`` before it submits anything
    (``hydra_plugins.audioml_launchers``)."""
    missing = [tool for tool in SLURM_TOOLS if which(tool) is None]
    if missing:
        raise LauncherUnavailableError(
            f"hydra/launcher=slurm submits each job with SLURM's sbatch and srun, and {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not on PATH here: run the sweep on a SLURM login node (where "
            "`sbatch --version` works), or leave out hydra/launcher=slurm to run the jobs on this machine with "
            "the local launcher (one after another; hydra/launcher=parallel for several at once)")


def _end_parent(client, run_id: str, error: BaseException) -> None:
    """End the sweep's parent run FAILED (KILLED for Ctrl-C) with the first line of ``error``'s
    root cause as the ``audioml.error`` tag; a parent no longer RUNNING is left as it is."""
    stopped = interrupted(error)
    status = "KILLED" if stopped else "FAILED"
    if stopped:  # jobs in worker processes (a parallel launcher) die with the sweep, before they can say so
        try:
            _end_running_children(client, run_id)
        except Exception as tracking_error:  # noqa: BLE001 - the parent is ended all the same
            log.warning("could not mark the interrupted sweep's job runs as ended: %s", tracking_error)
    try:
        if client.get_run(run_id).info.status != "RUNNING":
            return
        client.set_tag(run_id, "audioml.error", error_summary(error))
        tracking.set_status(client, run_id, status)
        log.error("sweep's MLflow parent run %s marked %s: %s", run_id, status, type(error).__name__)
    except Exception as tracking_error:  # the store itself is gone: the original error matters
        log.warning("could not mark the sweep's MLflow run %s as ended: %s", run_id, tracking_error)


def _end_running_children(client, parent_id: str) -> None:
    """Mark KILLED every job run of the sweep still RUNNING, or FAILED while it was being stopped
    (by Lightning's shutdown alone, no ``audioml.error``, or with audioml's ``stopped ...``: the
    launcher ended its process in between): resumable, by rerunning the command."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    children = [run for status in ("RUNNING", "FAILED")  # MLflow's search has no OR / IN on statuses
                for run in client.search_runs(experiments, f"tags.mlflow.parentRunId = '{parent_id}' and "
                                                           f"attributes.status = '{status}'")
                if status == "RUNNING" or run.data.tags.get("audioml.error", "stopped").startswith("stopped")]
    for child in children:
        client.set_tag(child.info.run_id, "audioml.error", "stopped: the sweep was interrupted (rerun it to continue)")
        tracking.set_status(client, child.info.run_id, "KILLED")
    if children:
        log.warning("%d job runs of the interrupted sweep marked KILLED: rerun the command to continue them",
                    len(children))


def end_running_sweep(error: BaseException) -> None:
    """Called by ``audioml-train`` when the multirun raised ``error``: the parent run of the
    sweep still running in this process ends FAILED (KILLED for Ctrl-C) naming the cause. Hydra
    turns the cause into ``SystemExit(1)`` raised while handling it (``__context__``); an exit
    with status 0 (``--help``) ends nothing. Job runs end themselves (``audioml.run.outcome.ending``)."""
    if isinstance(error, SystemExit) and (error.code in (0, None) or error.__context__ is None):
        return
    while isinstance(error, SystemExit) and error.__context__ is not None:  # status 2 wraps Hydra's 1
        error = error.__context__
    if _running_record:
        _complete_deferred_finishes(stopping=interrupted(error) or getattr(error, "code", None) == 143)
    while _running_record:
        _close_record(_running_record.pop(), _running_sweep[-1] if _running_sweep else None)
    while _running_sweep:
        client, run_id = _running_sweep.pop()
        _end_parent(client, run_id, error)


def _record_deferred_failure(failure) -> None:
    """A job whose MLflow record the report worker could not complete (``audioml.run.record.finishing``;
    its MLflow run is FAILED with the traceback): ``FAILED`` and ``traceback.txt`` in its run
    directory, written before the directory is let go, so the sweep counts it as failed."""
    first_line = (failure.error.strip().splitlines() or [""])[0][:500]
    RunDir(failure.run_dir).mark_failed(first_line,
                                        f"the job's MLflow record, completed after its training, failed\n\n{failure.traceback}")


def _complete_deferred_finishes(stopping: bool = False) -> None:
    """Wait for the jobs whose MLflow record the report worker completes before the sweep's
    summary (their failures are recorded as they come: ``_record_deferred_failure``); a sweep
    that is stopping (Ctrl-C, SIGTERM) leaves what the worker did not complete to the rerun."""
    from audioml.run.record import finishing

    if finishing.deferring():
        finishing.stop_deferring(complete_lost=not stopping)


def sweep_had_failures() -> bool:
    """Whether the multirun that ended in this process without raising (an Optuna sweep goes on
    past failed trials) had failed jobs; ``audioml-train`` then exits with status 1."""
    return any(_failed_jobs)


def planned_jobs(config: DictConfig) -> list[list[str]] | None:
    """The overrides of every job Hydra's basic sweeper will launch for this multirun, in its
    order (``hydra.sweeper.params`` and the command line, expanded as the sweeper does); ``None``
    for other sweepers (Optuna decides as it goes) or sweeps it cannot expand here (``glob``)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not str(config.hydra.sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None
    params = config.hydra.sweeper.get("params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    try:
        overrides = OverridesParser.create().parse_overrides(arguments)
        (batch,) = BasicSweeper.split_arguments(overrides, None)
    except Exception as error:  # e.g. glob(), which needs Hydra's config loader
        log.info("the sweep's job list is not known ahead (%s): jobs are listed once started", error)
        return None
    return [list(job) for job in batch]


def _store(config: DictConfig) -> Store:
    return Store.of(_select(config, "logger.tracking_uri"), _select(config, "paths.mlflow_dir"))


def _log_text(client, run_id: str, name: str, text: str, artifact_path: str | None = None) -> None:
    """Upload ``text`` as the artifact ``<artifact_path>/<name>`` of run ``run_id``."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_text(text, encoding="utf-8")
        client.log_artifact(run_id, str(path), artifact_path)


def _close_record(record: Path, parent: tuple[Any, str] | None) -> None:
    """At the end of a multirun: log the summary (and keep its number of failed jobs), and give the
    parent run the status table and, when ``seed`` varies, the seed aggregate."""
    from audioml.run.record import status

    try:
        summary, failed = status.failure_summary(record)
    except Exception as error:  # the summary must never hide the sweep's own outcome
        log.warning("no sweep summary: %s", error)
        return
    _failed_jobs.append(failed)
    (log.error if failed else log.info)("%s", summary)
    if parent is None:
        return
    client, run_id = parent
    try:
        table = status.status_table(status.sweep_jobs(record))
        _log_text(client, run_id, "sweep_status.csv", table.to_csv(index=False))
        _log_text(client, run_id, "sweep_summary.txt", summary + "\n")
        plan = status.read_plan(record)
        jobs = plan.get("jobs") or [job.overrides for job in status.sweep_jobs(record, with_mlflow=False)]
        seeds = {o for job in jobs for o in job if o.startswith("seed=")}  # planned, or started (a search)
        if len(seeds) > 1:
            _log_seed_aggregate(client, run_id)
    except Exception as error:
        log.warning("could not log the sweep's status to its MLflow parent run %s: %s", run_id, error)


def _log_seed_aggregate(client, run_id: str) -> None:
    from audioml.run.record.aggregate import aggregate_report, aggregate_runs
    from audioml.run.record.listing import collect_runs, fit_to_width

    runs = collect_runs(client, sweep=run_id)
    if "status" in runs and not (runs["status"] == "FINISHED").any():
        log.info("no job finished: no aggregate over seeds")
        return
    table = aggregate_runs(runs, "seed")
    shown, notes = aggregate_report(table, "seed")
    text = fit_to_width(shown, 200, max_cell=40, max_key=60) + ("\n\n" + "\n".join(notes) if notes else "")
    _log_text(client, run_id, "aggregate_seed.csv", table.to_csv(index=False))
    _log_text(client, run_id, "aggregate_seed.txt", text + "\n")
    log.info("over seeds (audioml-compare --sweep %s --aggregate seed):\n%s", run_id, text)


def sweep_key(overrides: list[str], config_name: str | None = None) -> str:
    """Identity of a sweep: 12 hex chars of sha256 over its sorted command-line overrides."""
    text = json.dumps({"config": config_name, "overrides": sorted(overrides)})
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def find_or_create_sweep_run(uri: str, experiment_id: str, key: str, overrides: list[str],
                             name: str | None = None) -> str:
    """Run id of the parent run of sweep ``key`` in the experiment (set RUNNING again when it
    exists), else of a new one; named ``name`` (default: the swept keys,
    ``audioml.run.record.presentation.sweep_run_name``; an existing parent is renamed to it)."""
    from mlflow import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME, MLFLOW_RUN_NOTE

    from audioml.run.record.presentation import sweep_run_name

    name = name or sweep_run_name(overrides)
    client = MlflowClient(uri)
    found = client.search_runs([experiment_id], filter_string=f"tags.`{_KEY_TAG}` = '{key}'",
                               max_results=1, order_by=["attributes.start_time ASC"])
    if found:
        run_id = found[0].info.run_id
        if found[0].info.run_name != name:  # e.g. a parent named sweep-<key> by an earlier audioml
            client.set_tag(run_id, MLFLOW_RUN_NAME, name)
        tracking.set_status(client, run_id, "RUNNING")
        return run_id
    command = " ".join(overrides)
    run = client.create_run(experiment_id, tags={
        MLFLOW_RUN_NAME: name, _KEY_TAG: key, _ROLE_TAG: "sweep",
        "audioml.sweep_overrides": command[:5000],
        MLFLOW_RUN_NOTE: f"Hydra sweep: audioml-train -m {command}"})
    return run.info.run_id


def _parent_name(config: DictConfig, key: str, overrides: list[str], jobs: list[list[str]] | None) -> str:
    """The parent run's name: ``search <study> (n trials)`` for an Optuna search (the study named
    as the sweeper names it), else the swept keys and the number of planned jobs."""
    from audioml.run.record.presentation import search_run_name, sweep_run_name

    sweeper = config.hydra.sweeper
    if not str(sweeper.get("_target_", "")).endswith("OptunaSweeper"):
        return sweep_run_name(overrides, jobs)
    from audioml.search.space import GRID_SAMPLER, SearchSpaceError, default_study_name, grid_values, parse_space

    choices = config.hydra.runtime.choices
    study = _select(config, "hydra.sweeper.study_name") or default_study_name(choices.get("data"),
                                                                               choices.get("model"), key)
    trials = int(_select(config, "hydra.sweeper.n_trials") or 0)
    if _select(config, "hydra.sweeper.sampler._target_") == GRID_SAMPLER:  # the sweeper runs at most the grid
        try:
            space = parse_space([f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()] + overrides)
            trials = min(trials, math.prod(len(values) for values in grid_values(space).values()))
        except SearchSpaceError:
            pass  # the sweeper says what is wrong with the space
    return search_run_name(str(study), trials)


def _select(config: DictConfig, key: str) -> Any:
    """Resolve one key of the sweep config (``${hydra:...}`` needs the Hydra config set)."""
    return OmegaConf.select(config, key, throw_on_missing=False)


class MLflowSweepCallback(Callback):
    """Hydra callback: the MLflow parent run of a multirun sweep, the sweep's record of its jobs,
    each failed job's traceback and the closing summary (see module docs)."""

    def __init__(self) -> None:
        self.client = None
        self.parent_run_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from audioml.run.record import status

        HydraConfig.instance().set_config(config)  # lets ${hydra:...} resolve in the sweep config
        overrides = list(config.hydra.overrides.task)
        key = sweep_key(overrides, kwargs.get("config_name"))
        os.environ[tracking.SWEEP_KEY_ENV] = key
        record = status.record_dir(str(_select(config, "hydra.sweep.dir")), key)
        _failed_jobs.clear()
        jobs = planned_jobs(config)
        if _select(config, "logger.enabled"):
            self._open_parent(config, key, overrides, record, _parent_name(config, key, overrides, jobs))
        status.write_plan(record, key, overrides, jobs, self.parent_run_id)
        _running_record.append(record)
        from audioml.run.record import finishing

        # jobs run in this process (the basic launcher): each one's record completes as the next trains
        finishing.start_deferring(on_failure=_record_deferred_failure)

    def _open_parent(self, config: DictConfig, key: str, overrides: list[str], record: Path, name: str) -> None:
        from mlflow import MlflowClient

        store = _store(config)
        uri = store.uri
        tracking.prepare_store(uri)
        experiment_id = tracking.get_or_create_experiment(uri, str(_select(config, "logger.experiment_name")),
                                                          store.artifact_location)
        self.client = MlflowClient(uri)
        self.parent_run_id = find_or_create_sweep_run(uri, experiment_id, key, overrides, name)
        tracking.set_tags(self.client, self.parent_run_id, {"audioml.sweep_record": str(record.resolve())})
        _running_sweep.append((self.client, self.parent_run_id))
        os.environ[tracking.PARENT_RUN_ENV] = self.parent_run_id
        log.info("sweep %s: MLflow parent run %s (%s); compare its jobs with: audioml-compare --sweep %s; "
                 "where each job stands: audioml-compare --status %s", key, self.parent_run_id, uri,
                 self.parent_run_id, key)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """In the job's process: record that it started (its run directory), forget an earlier failure."""
        from audioml.run.record import status

        key = os.environ.get(tracking.SWEEP_KEY_ENV)
        if not key or _select(config, "hydra.mode") != RunMode.MULTIRUN:
            return
        run_dir = Path(str(config.hydra.runtime.output_dir))
        try:
            RunDir(run_dir).clear_failure()
            status.write_job_start(status.record_dir(str(_select(config, "hydra.sweep.dir")), key),
                                   list(config.hydra.overrides.task), run_dir, _select(config, "hydra.job.num"))
        except OSError as error:
            log.warning("could not record the start of the job in %s: %s", run_dir, error)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """In the job's process: a failed job gets ``FAILED`` and ``traceback.txt`` in its run
        directory and on its MLflow run (on the parent's when it opened none); the job's MLflow
        run is tagged with its overrides."""
        if not os.environ.get(tracking.SWEEP_KEY_ENV) or _select(config, "hydra.mode") != RunMode.MULTIRUN:
            return
        run = RunDir(str(config.hydra.runtime.output_dir))
        overrides = list(config.hydra.overrides.task)
        error = job_return._return_value if job_return.status == JobStatus.FAILED else None
        traceback_path = None
        if isinstance(error, BaseException):
            summary = error_summary(error)
            text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
            traceback_path = run.mark_failed(summary, f"overrides: {' '.join(overrides)}\n\n{text}")
            log.error("job %s failed: %s (traceback: %s)", " ".join(overrides), summary, traceback_path)
        if not _select(config, "logger.enabled"):
            return
        try:
            from mlflow import MlflowClient

            uri = run.store() or _store(config).uri
            client = MlflowClient(uri)
            run_id = run.run_id()
            if run_id:
                tracking.set_tags(client, run_id, {"audioml.overrides": json.dumps(overrides)[:tracking.MAX_TAG_LENGTH]})
            if traceback_path is None:
                return
            if run_id:
                client.log_artifact(run_id, str(traceback_path))
                if client.get_run(run_id).info.status == "RUNNING":
                    tracking.set_tags(client, run_id, {"audioml.error": summary})
                    tracking.set_status(client, run_id, "FAILED")
            elif os.environ.get(tracking.PARENT_RUN_ENV):  # refused before its run opened: the parent keeps it
                client.log_artifact(os.environ[tracking.PARENT_RUN_ENV], str(traceback_path), f"failed/{run.name}")
        except Exception as tracking_error:  # the store is gone: the files in the run directory still tell
            log.warning("could not record the job's outcome in MLflow: %s", tracking_error)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        parent = (self.client, self.parent_run_id) if self.parent_run_id is not None else None
        _complete_deferred_finishes()
        for record in list(_running_record):
            _close_record(record, parent)
        _running_record.clear()
        os.environ.pop(tracking.SWEEP_KEY_ENV, None)
        if parent is None:
            return
        if sweep_had_failures():  # a sweeper that went on past failed jobs (Optuna)
            tracking.set_tags(self.client, self.parent_run_id, {"audioml.error": f"{sum(_failed_jobs)} job(s) failed"})
        tracking.set_status(self.client, self.parent_run_id, "FAILED" if sweep_had_failures() else "FINISHED")
        _running_sweep[:] = [entry for entry in _running_sweep if entry[1] != self.parent_run_id]
        os.environ.pop(tracking.PARENT_RUN_ENV, None)
        log.info("sweep finished: audioml-compare --sweep %s", self.parent_run_id)
