"""The last step of a training run, completed in the background: its MLflow record (tags, checkpoint
and report artifacts, the MLflow model, status FINISHED), then its ``DONE`` marker.

Inside a :func:`deferred` scope (a sweep's in-process jobs, the folds of a k-fold run) ``finish``
hands that step to the report worker (``audioml.run.figures.drawing``) and returns; the run
directory stays locked until ``DONE`` (:func:`hold_until_finished`), a failed finish marks the run
FAILED, and the scope's end waits for every finish started in it. Outside a scope, or without a
worker, the finish runs inline. Why and the edge cases: docs/design/resume-and-finishing.md."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout  # not the builtin before Python 3.11
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audioml.run.figures.drawing import worker_task
from audioml.run.rundir import RunDir

log = logging.getLogger(__name__)

__all__ = ["deferred", "deferring", "start_deferring", "stop_deferring", "finish", "finish_run", "finish_in_worker",
           "hold_until_finished", "wait_for", "RunFinishError", "FinishFailure"]

#: How long the end of a scope waits for one finish before running it here (seconds).
WAIT_SECONDS = 600.0
#: Hydra's default file-log format, for the lines appended to a finished run's log file.
_LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


class RunFinishError(RuntimeError):
    """A run's MLflow record or ``DONE`` marker could not be completed after its training."""


@dataclass
class FinishFailure:
    run_dir: Path
    error: str
    traceback: str


@dataclass
class _Scope:
    run_dirs: list[Path] = field(default_factory=list)
    on_failure: Callable[[FinishFailure], None] | None = None


@dataclass
class _Pending:
    spec: dict[str, Any]
    future: Future
    on_failure: Callable[[FinishFailure], None] | None = None
    holds: list[contextlib.ExitStack] = field(default_factory=list)
    released: bool = False
    failure: FinishFailure | None = None
    #: Set once ``_release`` has handled the answer (a done-callback runs after waiters wake).
    handled: threading.Event = field(default_factory=threading.Event)


_lock = threading.Lock()
#: Open scopes, innermost last.
_scopes: list[_Scope] = []
_pending: dict[Path, _Pending] = {}


# ----------------------------------------------------------------------------- the scopes
def start_deferring(on_failure: Callable[[FinishFailure], None] | None = None) -> None:
    """Open a scope: finishes started from now on may complete in the worker. ``on_failure`` is
    called with each failure of a finish started in it, before the run directory is let go (a
    sweep records the job as failed)."""
    with _lock:
        _scopes.append(_Scope(on_failure=on_failure))


def deferring() -> bool:
    """Whether a scope is open (finishes may go to the worker)."""
    return bool(_scopes)


def stop_deferring(complete_lost: bool = True) -> list[FinishFailure]:
    """Close the innermost scope: wait for the finishes started in it; their failures. With
    ``complete_lost=False`` (the process is stopping: Ctrl-C, SIGTERM) a finish the worker did
    not complete is left to the rerun, which continues the run."""
    with _lock:
        scope = _scopes.pop() if _scopes else _Scope()
    return [failure for run_dir in scope.run_dirs
            if (failure := wait_for(run_dir, complete_lost=complete_lost)) is not None]


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A scope (see the module docs); its end waits for the finishes started in it and raises
    ``RunFinishError`` naming those that failed (not over an error already raised)."""
    start_deferring()
    try:
        yield
    except BaseException as error:
        stopping = isinstance(error, KeyboardInterrupt) or (isinstance(error, SystemExit) and error.code == 143)
        stop_deferring(complete_lost=not stopping)
        raise
    if failures := stop_deferring():
        raise RunFinishError("; ".join(f"{f.run_dir}: {f.error}" for f in failures))


# --------------------------------------------------------------------------- the finishes
def finish(spec: dict[str, Any], background: bool = True) -> None:
    """Complete a run's record (``spec``, see :func:`finish_run`): in the worker when a scope is
    open, ``background`` and the worker takes it, else here (its errors raised)."""
    from audioml.run.figures import drawing as figures

    run_dir = Path(spec["run_dir"])
    _complete_lost_finishes()  # a worker that ended: the runs it left are completed before the next one
    with _lock:
        scope = _scopes[-1] if _scopes else None
    future = None
    if scope is not None and background:  # the worker gets this process's environment: credentials of the store
        future = figures.run_task(finish_in_worker, {"spec": {**spec, "env": dict(os.environ)}})
    if future is None:
        finish_run(spec)
        return
    global _exit_hook
    entry = _Pending(spec, future, scope.on_failure)
    with _lock:
        _pending[run_dir] = entry
        scope.run_dirs.append(run_dir)
        if not _exit_hook:  # a process that ends without closing its scope still waits for its runs
            _exit_hook = True
            atexit.register(_wait_for_all)
    future.add_done_callback(lambda _: _release(entry))
    log.info("%s: its MLflow record and DONE marker are completed in the background", run_dir)


_exit_hook = False


def _wait_for_all() -> None:
    """At exit: the worker's answers; what it did not complete is left to a rerun (the process
    may be ending on SIGTERM)."""
    with _lock:
        run_dirs = list(_pending)
    for run_dir in run_dirs:
        wait_for(run_dir, complete_lost=False)


def _is_lost(answer: Any) -> bool:
    return isinstance(answer, dict) and bool(answer.get("lost"))


def _complete_lost_finishes() -> None:
    with _lock:
        lost = [run_dir for run_dir, entry in _pending.items()
                if entry.future.done() and _is_lost(entry.future.result())]
    for run_dir in lost:
        wait_for(run_dir)


def _report_failure(entry: _Pending, failure: FinishFailure) -> None:
    entry.failure = failure
    log.error("%s: its MLflow record was not completed after training: %s (rerun the command to complete the "
              "run)", failure.run_dir, failure.error)
    if entry.on_failure is not None:
        try:
            entry.on_failure(failure)
        except Exception as error:  # noqa: BLE001 - the failure itself is logged above
            log.warning("could not record the failure of %s: %s", failure.run_dir, error)


def _release(entry: _Pending) -> None:
    """The worker answered (in its reader thread): log its lines, record a failure, then let go
    of the run directory's lock. A worker that ended before finishing keeps the lock: whoever
    completes the run lets it go."""
    try:
        answer = entry.future.result()
        if _is_lost(answer):
            return
        _log_answer(answer, entry.spec)  # now, not when waited for: the run's lines come when it completes
        if answer.get("error"):
            _report_failure(entry, FinishFailure(Path(entry.spec["run_dir"]), str(answer["error"]),
                                                 str(answer.get("traceback") or answer["error"])))
        _let_go(entry)
    finally:
        entry.handled.set()


def _let_go(entry: _Pending) -> None:
    with _lock:
        holds, entry.holds, entry.released = entry.holds, [], True
    for hold in holds:
        hold.close()


def _log_answer(answer: dict[str, Any], spec: dict[str, Any]) -> None:
    """The worker's log lines of a finish: to this process's console handlers (under their own
    logger names) and appended to the run's own ``log_file``. Not to the log files of the
    logging tree: those belong to the job training meanwhile (the next job of a sweep)."""
    records = []
    for level, name, message in answer.get("logs") or []:
        logger = logging.getLogger(name)
        if not logger.isEnabledFor(int(level)):
            continue
        record = logger.makeRecord(name, int(level), "(report worker)", 0, "%s", (message,), None)
        records.append(record)
        _to_console(logger, record)
    if records and spec.get("log_file"):
        formatter = logging.Formatter(_LOG_FORMAT)
        try:
            with open(spec["log_file"], "a", encoding="utf-8") as file:
                file.writelines(formatter.format(record) + "\n" for record in records)
        except OSError as error:
            log.warning("could not append the report worker's lines to %s: %s", spec["log_file"], error)


def _to_console(logger: logging.Logger, record: logging.LogRecord) -> None:
    """``logger.handle(record)`` without the file handlers (``Logger.callHandlers``' walk)."""
    if logger.disabled or not logger.filter(record):
        return
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if not isinstance(handler, logging.FileHandler) and record.levelno >= handler.level:
                handler.handle(record)
        current = current.parent if current.propagate else None


def hold_until_finished(run_dir: str | Path, hold: contextlib.ExitStack) -> None:
    """Close ``hold`` (the run directory's lock) once the finish of ``run_dir`` is complete: at
    once when none is pending."""
    with _lock:
        entry = _pending.get(Path(run_dir))
        if entry is not None and not entry.released:
            entry.holds.append(hold)
            return
    hold.close()


def wait_for(run_dir: str | Path, timeout: float = WAIT_SECONDS, complete_lost: bool = True) -> FinishFailure | None:
    """Wait for the pending finish of ``run_dir`` (none: returns at once); its failure, or
    ``None``. A finish the worker did not complete (it ended, or did not answer within
    ``timeout`` seconds: then it is stopped, so that the finish never runs twice at once) is
    completed here, unless ``complete_lost`` is false (left to a rerun)."""
    from audioml.run.figures import drawing as figures

    run_dir = Path(run_dir)
    with _lock:
        entry = _pending.pop(run_dir, None)
    if entry is None:
        return None
    try:
        answer = entry.future.result(timeout=timeout)
    except (TimeoutError, FutureTimeout):
        log.warning("%s: the report worker has not completed the run's record in %.0f s: stopping it, the record "
                    "is completed here", run_dir, timeout)
        figures.stop_worker()
        answer = entry.future.result(timeout=120)  # the stopped worker's pending tasks come back lost
    entry.handled.wait(timeout=120)  # the done-callback may still be recording the answer
    figures.wait(entry.spec.get("wait_for") or [])  # figure warnings are reported here
    if not _is_lost(answer):
        return entry.failure  # reported (and the lock let go) when the worker answered
    if not complete_lost:
        log.warning("%s: its MLflow record was not completed (the report worker ended): rerun the command to "
                    "complete the run", run_dir)
        _let_go(entry)
        return None
    try:  # the worker may have logged the model before it ended: not twice
        finish_run({**entry.spec, "skip_logged_model": True})
    except Exception as error:  # noqa: BLE001 - reported as the run's failure
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        failure = FinishFailure(run_dir, f"{type(error).__name__}: {error}", text)
        _mark_failed(entry.spec, failure)
        _report_failure(entry, failure)
    _let_go(entry)
    return entry.failure


@contextlib.contextmanager
def _environment(env: dict[str, str] | None) -> Iterator[None]:
    """The caller's environment (MLflow credentials, artifact-store settings) for a task."""
    if env is None:
        yield
        return
    before = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(before)


def finish_run(spec: dict[str, Any]) -> None:
    """Complete a run's record as ``spec`` says, in this order: ``tags`` on the MLflow run
    ``run_id`` of ``tracking_uri``, the ``checkpoint_artifacts`` (``[path, artifact folder]``),
    the MLflow ``model`` (``{"checkpoint", "record", "registered_model_name", "register_alias", "trusted"}``,
    ``audioml.run.use.serving.log_model``), the figures started for ``wait_for`` waited for, the ``artifacts`` (missing ones skipped with a warning),
    the ``status`` (default FINISHED); then ``DONE`` in ``run_dir`` with ``done`` (the metrics; ``None``: no
    marker). ``env``: the environment to do it in (the caller's)."""
    from audioml.run.figures import drawing as figures

    with _environment(spec.get("env")):
        if spec.get("run_id"):
            _complete_mlflow_run(spec)
        figures.wait(spec.get("wait_for") or [])  # every report on disk before the run counts as finished
        if spec.get("done") is not None:
            RunDir(spec["run_dir"]).mark_done(spec["done"])


def _complete_mlflow_run(spec: dict[str, Any]) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import RunTag

    from audioml.run.figures import drawing as figures
    from audioml.run.use import serving

    uri, run_id = spec["tracking_uri"], spec["run_id"]
    client = MlflowClient(uri)
    if spec.get("tags"):
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in spec["tags"].items()])
    for path, artifact_path in spec.get("checkpoint_artifacts") or []:
        client.log_artifact(run_id, str(path), artifact_path)
    model = spec.get("model")
    if model and spec.get("skip_logged_model") and (getattr(client.get_run(run_id).outputs, "model_outputs", None) or []):
        log.info("MLflow run %s already has its model (logged before the report worker ended)", run_id)
        model = None
    if model:
        serving.log_model(run_id, uri, model["checkpoint"], model["record"], model.get("registered_model_name"),
                          model.get("trusted") or [], model.get("register_alias"))
    # the figures drawn meanwhile (in the worker, drawn before this task: nothing to wait for)
    figures.wait(spec.get("wait_for") or [])
    for path in spec.get("artifacts") or []:
        if Path(path).is_file():
            client.log_artifact(run_id, str(path))
        else:
            log.warning("artifact %s does not exist; not logged", path)
    # the run's system-metrics monitor was stopped by the process that ran it (TrainingRun), so
    # MLflow's own call, not tracking.set_status: this module does not import torch or Lightning
    client.set_terminated(run_id, spec.get("status") or "FINISHED")  # KILLED: a search's pruner stopped it


def _mark_failed(spec: dict[str, Any], failure: FinishFailure) -> None:
    """The MLflow run of a finish that failed: FAILED, ``audioml.error``, ``traceback.txt``."""
    if not spec.get("run_id"):
        return
    try:
        from mlflow import MlflowClient

        with _environment(spec.get("env")):
            client = MlflowClient(spec["tracking_uri"])
            for path in spec.get("artifacts") or []:  # the reports (learning curves...) as an inline failure keeps them
                if Path(path).is_file():
                    with contextlib.suppress(Exception):
                        client.log_artifact(spec["run_id"], str(path))
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / RunDir.TRACEBACK
                path.write_text(failure.traceback, encoding="utf-8")
                client.log_artifact(spec["run_id"], str(path))
            client.set_tag(spec["run_id"], "audioml.error", failure.error[:500])
            client.set_terminated(spec["run_id"], "FAILED")
    except Exception as error:  # noqa: BLE001 - the store may be what failed; the error stands
        log.warning("could not mark MLflow run %s FAILED: %s", spec["run_id"], error)


def preload() -> None:
    """Import what :func:`finish_in_worker` needs (the worker does it when it starts)."""
    import mlflow.pyfunc  # noqa: F401

    from audioml.run import rundir  # noqa: F401


@worker_task
def finish_in_worker(spec: dict[str, Any]) -> None:
    """The report worker's task (``audioml.run.figures.drawing.run_task``): :func:`finish_run`; a failure marks
    the MLflow run FAILED before it is raised (and answered)."""
    try:
        finish_run(spec)
    except Exception as error:
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        _mark_failed(spec, FinishFailure(Path(spec["run_dir"]), f"{type(error).__name__}: {error}", text))
        raise
