"""Hydra multirun sweeps in MLflow: a sweep is a parent run, each of its jobs a child run.

:class:`MLflowSweepCallback` is registered in ``conf/hydra/default.yaml``. When a multirun
starts it finds or creates the sweep's parent run and hands its id to the jobs through the
environment (:data:`audioml.run.tracking.PARENT_RUN_ENV`): that reaches jobs run in this process
(basic launcher), in joblib workers and in SLURM jobs submitted from here. The parent is
identified by a key hashed from the sweep's command-line overrides, so rerunning an
interrupted sweep continues the same parent (its jobs skip or resume by themselves, see
:mod:`audioml.run.resume`). When the sweep ends the parent is marked FINISHED; when it raises
(a job failed, the launcher could not submit, Ctrl-C), ``audioml-train`` ends it FAILED or
KILLED with the cause (:func:`end_running_sweep`). ``hydra/launcher=slurm`` on a machine without
SLURM's tools is refused before anything is submitted (:func:`check_slurm_tools`).

It also prepares an Optuna sweeper's SQL storage: ``optuna<3`` (which hydra-optuna-sweeper
requires) cannot record its schema version with SQLAlchemy 2 (which MLflow requires), so the
version stamp is written here, once, in a committed transaction. A continued study gets a
sampler seed offset by its number of trials, so that it proposes new configurations.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from audioml.run import tracking

log = logging.getLogger(__name__)

__all__ = ["MLflowSweepCallback", "sweep_key", "find_or_create_sweep_run", "prepare_optuna_storage",
           "continue_optuna_study", "check_slurm_tools", "LauncherUnavailableError", "end_running_sweep",
           "SLURM_TOOLS"]

_KEY_TAG = "audioml.sweep_key"
_ROLE_TAG = "audioml.role"
#: What the submitit SLURM launcher runs: ``sbatch`` submits each job, ``srun`` starts its tasks.
SLURM_TOOLS = ("sbatch", "srun")
#: The parent run of the multirun this process is launching, ``(client, run id)``, until it ends.
_running_sweep: list[tuple[Any, str]] = []


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
    status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
    try:
        if client.get_run(run_id).info.status != "RUNNING":
            return
        cause = error
        while cause.__cause__ is not None:  # e.g. Hydra's InstantiationException: say why
            cause = cause.__cause__
        first_line = (str(cause).strip().splitlines() or [""])[0][:500]
        client.set_tag(run_id, "audioml.error", f"{type(cause).__name__}: {first_line}")
        tracking.set_status(client, run_id, status)
        log.error("sweep's MLflow parent run %s marked %s: %s", run_id, status, type(error).__name__)
    except Exception as tracking_error:  # the store itself is gone: the original error matters
        log.warning("could not mark the sweep's MLflow run %s as ended: %s", run_id, tracking_error)


def end_running_sweep(error: BaseException) -> None:
    """Called by ``audioml-train`` when the multirun raised ``error``: the parent run of the
    sweep still running in this process ends FAILED (KILLED for Ctrl-C) naming the cause. Hydra
    turns the cause into ``SystemExit(1)`` raised while handling it (``__context__``); an exit
    with status 0 (``--help``) ends nothing. Job runs end themselves (``tracking.ended_on_error``)."""
    if isinstance(error, SystemExit):
        if error.code in (0, None) or error.__context__ is None:
            return
        error = error.__context__
    while _running_sweep:
        client, run_id = _running_sweep.pop()
        _end_parent(client, run_id, error)


def sweep_key(overrides: list[str], config_name: str | None = None) -> str:
    """Identity of a sweep: 12 hex chars of sha256 over its sorted command-line overrides."""
    text = json.dumps({"config": config_name, "overrides": sorted(overrides)})
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def find_or_create_sweep_run(uri: str, experiment_id: str, key: str, overrides: list[str]) -> str:
    """Run id of the parent run of sweep ``key`` in the experiment (set RUNNING again when it
    exists), else of a new one named ``sweep-<key>``."""
    from mlflow import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME, MLFLOW_RUN_NOTE

    client = MlflowClient(uri)
    found = client.search_runs([experiment_id], filter_string=f"tags.`{_KEY_TAG}` = '{key}'",
                               max_results=1, order_by=["attributes.start_time ASC"])
    if found:
        run_id = found[0].info.run_id
        tracking.set_status(client, run_id, "RUNNING")
        return run_id
    command = " ".join(overrides)
    run = client.create_run(experiment_id, tags={
        MLFLOW_RUN_NAME: f"sweep-{key}", _KEY_TAG: key, _ROLE_TAG: "sweep",
        "audioml.sweep_overrides": command[:5000],
        MLFLOW_RUN_NOTE: f"Hydra sweep: audioml-train -m {command}"})
    return run.info.run_id


def _select(config: DictConfig, key: str) -> Any:
    """Resolve one key of the sweep config (``${hydra:...}`` needs the Hydra config set)."""
    return OmegaConf.select(config, key, throw_on_missing=False)


def prepare_optuna_storage(storage: str) -> None:
    """Create the Optuna tables of an SQL ``storage`` URL and stamp their schema version
    (committed) when missing; creates the folder of an SQLite file. No-op when stamped."""
    import alembic.config
    import alembic.migration
    import alembic.script
    from optuna.storages._rdb import models  # the schema optuna's own RDBStorage creates
    from sqlalchemy import create_engine

    if storage.startswith("sqlite:///"):
        Path(storage[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(storage)
    try:
        models.BaseModel.metadata.create_all(engine)
        folder = Path(models.__file__).parent
        config = alembic.config.Config(str(folder / "alembic.ini"))
        config.set_main_option("script_location", str(folder / "alembic"))
        script = alembic.script.ScriptDirectory.from_config(config)
        with engine.begin() as connection:
            context = alembic.migration.MigrationContext.configure(connection)
            if context.get_current_revision() is None:
                context.stamp(script, script.get_current_head())
    finally:
        engine.dispose()


def continue_optuna_study(config: DictConfig) -> None:
    """Prepare the storage of an Optuna sweep and, when its study already holds trials, offset
    the sampler's seed by their number: a seeded sampler in a new process would otherwise
    propose the configurations of the previous invocation again instead of new ones."""
    from omegaconf import open_dict, read_write

    sweeper = config.hydra.sweeper
    storage, study_name = sweeper.get("storage"), sweeper.get("study_name")
    if not storage:
        return
    # schema-migration chatter of optuna's storage (alembic) at INFO would flood the sweep log
    logging.getLogger("alembic").setLevel(logging.WARNING)
    prepare_optuna_storage(str(storage))
    import optuna

    seed = OmegaConf.select(sweeper, "sampler.seed")
    if study_name is None or seed is None:
        return
    try:
        done = len(optuna.load_study(study_name=str(study_name), storage=str(storage)).trials)
    except KeyError:  # no such study yet
        return
    if done:
        with read_write(sweeper), open_dict(sweeper):
            sweeper.sampler.seed = int(seed) + done
        log.info("Optuna study %s has %d trials: continuing it (sampler seed %d)", study_name, done, int(seed) + done)


class MLflowSweepCallback(Callback):
    """Hydra callback: the MLflow parent run of a multirun sweep (see module docs)."""

    def __init__(self) -> None:
        self.client = None
        self.parent_run_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)  # lets ${hydra:...} resolve in the sweep config
        if "optuna" in str(config.hydra.sweeper.get("_target_", "")).lower():
            continue_optuna_study(config)
        if not _select(config, "logger.enabled"):
            return
        from mlflow import MlflowClient

        explicit_uri = _select(config, "logger.tracking_uri")
        mlflow_dir = _select(config, "paths.mlflow_dir")
        uri = tracking.resolve_tracking_uri(explicit_uri, mlflow_dir)
        tracking.prepare_store(uri)
        artifact_location = (tracking.default_artifact_location(mlflow_dir)
                             if uri.startswith("sqlite:///") and not explicit_uri else None)
        experiment_id = tracking.get_or_create_experiment(uri, str(_select(config, "logger.experiment_name")),
                                                          artifact_location)
        overrides = list(config.hydra.overrides.task)
        key = sweep_key(overrides, kwargs.get("config_name"))
        self.client = MlflowClient(uri)
        self.parent_run_id = find_or_create_sweep_run(uri, experiment_id, key, overrides)
        _running_sweep.append((self.client, self.parent_run_id))
        os.environ[tracking.PARENT_RUN_ENV] = self.parent_run_id
        os.environ[tracking.SWEEP_KEY_ENV] = key
        log.info("sweep %s: MLflow parent run %s (%s); compare its jobs with: audioml-compare --sweep %s",
                 key, self.parent_run_id, uri, self.parent_run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.parent_run_id is None:
            return
        tracking.set_status(self.client, self.parent_run_id, "FINISHED")
        _running_sweep[:] = [entry for entry in _running_sweep if entry[1] != self.parent_run_id]
        os.environ.pop(tracking.PARENT_RUN_ENV, None)
        os.environ.pop(tracking.SWEEP_KEY_ENV, None)
        log.info("sweep finished: audioml-compare --sweep %s", self.parent_run_id)
