"""The last step of a training run, its MLflow record (tags, checkpoint and report artifacts, the
MLflow model, status FINISHED) and its ``DONE`` marker, completed in the background while the
next run of the same process trains.

Why: once a head-only job (``audioml.run.head_only``) has its numbers, logging its MLflow model
and artifacts into the store takes about as long as a third of the job, on one core, while the
other core idles. Inside a :func:`deferred` scope (a sweep's jobs run in this process, the folds
of a k-fold run) ``TrainingRun`` hands that step to the report worker (``audioml.figures``,
another process on another core) and returns its result at once; the next job starts. The run
still counts as finished only once its record is complete: the worker writes ``DONE`` last, and
the run directory's lock stays held by this process until then (:func:`hold_until_finished`),
so ``audioml-compare --status`` shows the run as running, and the same command started elsewhere
waits. The scope's end waits for every finish started in it.

A finish that fails in the worker marks the MLflow run FAILED with ``audioml.error`` and the
traceback as an artifact, as an inline failure would, and leaves no ``DONE`` (rerunning the
command completes the run from its last checkpoint); :func:`stop_deferring` returns the failures
(a sweep records them as failed jobs), the end of a :func:`deferred` scope raises
:class:`RunFinishError`. When the worker cannot take the finish (one CPU, ``AUDIOML_FIGURE_WORKER=0``,
the worker gone), it runs in this process, at once or when waited for: the same files and runs.
Outside a scope (a single ``audioml-train``, a DDP run) nothing changes: the finish runs inline.
"""

from __future__ import annotations

import contextlib
import atexit
import logging
import os
import tempfile
import threading
import traceback
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["deferred", "deferring", "start_deferring", "stop_deferring", "finish", "finish_run", "finish_in_worker",
           "hold_until_finished", "wait_for", "RunFinishError", "FinishFailure"]

#: How long the end of a scope waits for one finish before running it here (seconds).
WAIT_SECONDS = 600.0


class RunFinishError(RuntimeError):
    """A run's MLflow record or ``DONE`` marker could not be completed after its training."""


@dataclass
class FinishFailure:
    run_dir: Path
    error: str
    traceback: str


@dataclass
class _Pending:
    spec: dict[str, Any]
    future: Future
    holds: list[contextlib.ExitStack] = field(default_factory=list)
    released: bool = False


_lock = threading.Lock()
#: Open scopes, innermost last: the run directories of the finishes started in each.
_scopes: list[list[Path]] = []
_pending: dict[Path, _Pending] = {}


# ----------------------------------------------------------------------------- the scopes
def start_deferring() -> None:
    """Open a scope: finishes started from now on may complete in the worker."""
    with _lock:
        _scopes.append([])


def deferring() -> bool:
    """Whether a scope is open (finishes may go to the worker)."""
    return bool(_scopes)


def stop_deferring() -> list[FinishFailure]:
    """Close the innermost scope: wait for the finishes started in it; their failures."""
    with _lock:
        run_dirs = _scopes.pop() if _scopes else []
    return [failure for run_dir in run_dirs if (failure := wait_for(run_dir)) is not None]


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A scope (see the module docs); its end waits for the finishes started in it and raises
    ``RunFinishError`` naming those that failed (not over an error already raised)."""
    start_deferring()
    try:
        yield
    except BaseException:
        stop_deferring()
        raise
    if failures := stop_deferring():
        raise RunFinishError("; ".join(f"{f.run_dir}: {f.error}" for f in failures))


# --------------------------------------------------------------------------- the finishes
def finish(spec: dict[str, Any], background: bool = True) -> None:
    """Complete a run's record (``spec``, see :func:`finish_run`): in the worker when a scope is
    open, ``background`` and the worker takes it, else here (its errors raised)."""
    from audioml import figures

    run_dir = Path(spec["run_dir"])
    with _lock:
        scope = _scopes[-1] if _scopes else None
    future = None
    if scope is not None and background:  # the worker gets this process's environment: credentials of the store
        future = figures.run_task("finish_run", {"spec": {**spec, "env": dict(os.environ)}})
    if future is None:
        finish_run(spec)
        return
    global _exit_hook
    entry = _Pending(spec, future)
    with _lock:
        _pending[run_dir] = entry
        scope.append(run_dir)
        if not _exit_hook:  # a process that ends without closing its scope still completes its runs
            _exit_hook = True
            atexit.register(_wait_for_all)
    future.add_done_callback(lambda _: _release(entry))
    log.info("%s: its MLflow record and DONE marker are completed in the background", run_dir)


_exit_hook = False


def _wait_for_all() -> None:
    with _lock:
        run_dirs = list(_pending)
    for run_dir in run_dirs:
        wait_for(run_dir)


def _release(entry: _Pending) -> None:
    """The worker answered: let go of the run directory's lock (unless the worker ended before
    finishing: then whoever waits completes the run first)."""
    answer = entry.future.result()
    if isinstance(answer, dict) and answer.get("lost"):
        return
    _log_answer(answer)  # now, not when waited for: the run's lines come when it completes
    with _lock:
        holds, entry.holds, entry.released = entry.holds, [], True
    for hold in holds:
        hold.close()


def _log_answer(answer: dict[str, Any]) -> None:
    """The worker's log lines of a finish, logged here (under their own logger names)."""
    for level, name, message in answer.get("logs") or []:
        logging.getLogger(name).log(int(level), "%s", message)


def hold_until_finished(run_dir: str | Path, hold: contextlib.ExitStack) -> None:
    """Close ``hold`` (the run directory's lock) once the finish of ``run_dir`` is complete: at
    once when none is pending."""
    with _lock:
        entry = _pending.get(Path(run_dir))
        if entry is not None and not entry.released:
            entry.holds.append(hold)
            return
    hold.close()


def wait_for(run_dir: str | Path, timeout: float = WAIT_SECONDS) -> FinishFailure | None:
    """Wait for the pending finish of ``run_dir`` (none: returns at once); a finish the worker
    did not complete runs here. Its failure, or ``None``; the answer's log lines are logged."""
    from audioml import figures

    run_dir = Path(run_dir)
    with _lock:
        entry = _pending.pop(run_dir, None)
    if entry is None:
        return None
    try:
        answer = entry.future.result(timeout=timeout)
    except TimeoutError:
        answer = {"lost": True}
        log.warning("%s: the report worker has not completed the run's record in %.0f s: completing it here",
                    run_dir, timeout)
    figures.wait(entry.spec.get("wait_for") or [])  # figure warnings are reported here
    failure = None
    if answer.get("lost"):
        try:
            finish_run(entry.spec)
        except Exception as error:  # noqa: BLE001 - reported as the run's failure
            text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
            failure = FinishFailure(run_dir, f"{type(error).__name__}: {error}", text)
            _mark_failed(entry.spec, failure)
    else:
        if answer.get("error"):
            failure = FinishFailure(run_dir, str(answer["error"]), str(answer.get("traceback") or answer["error"]))
    if failure is not None:
        log.error("%s: its MLflow record was not completed after training: %s (rerun the command to complete "
                  "the run)", run_dir, failure.error)
    with _lock:
        holds, entry.holds, entry.released = entry.holds, [], True
    for hold in holds:
        hold.close()
    return failure


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
    the MLflow ``model`` (``{"checkpoint", "record", "registered_model_name", "trusted"}``,
    ``audioml.run.serving.log_model``), the figures started for ``wait_for`` waited for, the ``artifacts`` (missing ones skipped with a warning),
    status FINISHED; then ``DONE`` in ``run_dir`` with ``done`` (the metrics; ``None``: no
    marker). ``env``: the environment to do it in (the caller's)."""
    from audioml import figures
    from audioml.run import markers

    with _environment(spec.get("env")):
        if spec.get("run_id"):
            _complete_mlflow_run(spec)
        figures.wait(spec.get("wait_for") or [])  # every report on disk before the run counts as finished
        if spec.get("done") is not None:
            markers.write_done(spec["run_dir"], spec["done"])


def _complete_mlflow_run(spec: dict[str, Any]) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import RunTag

    from audioml import figures
    from audioml.run import serving

    uri, run_id = spec["tracking_uri"], spec["run_id"]
    client = MlflowClient(uri)
    if spec.get("tags"):
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in spec["tags"].items()])
    for path, artifact_path in spec.get("checkpoint_artifacts") or []:
        client.log_artifact(run_id, str(path), artifact_path)
    if model := spec.get("model"):
        serving.log_model(run_id, uri, model["checkpoint"], model["record"], model.get("registered_model_name"),
                          model.get("trusted") or [])
    # the figures drawn meanwhile (in the worker, drawn before this task: nothing to wait for)
    figures.wait(spec.get("wait_for") or [])
    for path in spec.get("artifacts") or []:
        if Path(path).is_file():
            client.log_artifact(run_id, str(path))
        else:
            log.warning("artifact %s does not exist; not logged", path)
    # the run's system-metrics monitor was stopped by the process that ran it (TrainingRun), so
    # MLflow's own call, not tracking.set_status: this module does not import torch or Lightning
    client.set_terminated(run_id, "FINISHED")


def _mark_failed(spec: dict[str, Any], failure: FinishFailure) -> None:
    """The MLflow run of a finish that failed: FAILED, ``audioml.error``, ``traceback.txt``."""
    if not spec.get("run_id"):
        return
    try:
        from mlflow import MlflowClient

        with _environment(spec.get("env")):
            client = MlflowClient(spec["tracking_uri"])
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "traceback.txt"
                path.write_text(failure.traceback, encoding="utf-8")
                client.log_artifact(spec["run_id"], str(path))
            client.set_tag(spec["run_id"], "audioml.error", failure.error[:500])
            client.set_terminated(spec["run_id"], "FAILED")
    except Exception as error:  # noqa: BLE001 - the store may be what failed; the error stands
        log.warning("could not mark MLflow run %s FAILED: %s", spec["run_id"], error)


def preload() -> None:
    """Import what :func:`finish_in_worker` needs (the worker does it when it starts)."""
    import mlflow.pyfunc  # noqa: F401

    from audioml.run import markers, serving, store  # noqa: F401


def finish_in_worker(spec: dict[str, Any]) -> None:
    """The report worker's task (``audioml.figures.TASKS``): :func:`finish_run`; a failure marks
    the MLflow run FAILED before it is raised (and answered)."""
    try:
        finish_run(spec)
    except Exception as error:
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        _mark_failed(spec, FinishFailure(Path(spec["run_dir"]), f"{type(error).__name__}: {error}", text))
        raise
