"""Around every command's work: the config resolvers, a quiet terminal (``audioml.logs``) and its
exit status by what ended it (``audioml.run.outcome.classify``): a user's mistake prints one line,
``<command>: <message>``, its traceback only in the job's log file (and on the terminal with
``HYDRA_FULL_ERROR=1``), and exits 2, as a config Hydra cannot compose does; Ctrl-C says how to
continue and exits 130; a preempted run exits 143; a bug shows its traceback. Inside a multirun a
job's error is left to the sweep, which records it and goes on (``audioml.run.record.sweep``).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from audioml.run.outcome import INTERRUPTED_EXIT_CODE, MISTAKE_EXIT_CODE, Outcome, classify, root_cause

__all__ = ["hydra_task", "run_hydra_app", "report_mistake", "end_command"]

_started = False


def _log_file() -> str | None:
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    return handlers[0].baseFilename if handlers else None


def report_mistake(command: str, error: BaseException) -> int:
    """Print ``<command>: <message>`` (and where the full traceback went), write the traceback
    to the log files only; returns ``MISTAKE_EXIT_CODE``."""
    cause = root_cause(error)
    message = str(cause).strip() or type(cause).__name__
    if isinstance(cause, (FileNotFoundError, PermissionError)) and cause.filename and cause.filename not in message:
        message = f"{message}: {cause.filename}"
    record = logging.getLogger(f"audioml.{command}").makeRecord(
        f"audioml.{command}", logging.ERROR, "(entry)", 0, "%s", (message,), (type(error), error, error.__traceback__))
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
    where = _log_file()
    print(f"{command}: {message}" + (f"\n(the full traceback is in {where}; HYDRA_FULL_ERROR=1 prints it here)"
                                     if where else ""), file=sys.stderr)
    return MISTAKE_EXIT_CODE


def end_command(command: str, error: BaseException) -> int | None:
    """The exit status a single (not multirun) command ends with for ``error``: ``None`` when the
    error is a bug (its traceback shown) or asked for in full (``HYDRA_FULL_ERROR=1``)."""
    if isinstance(error, SystemExit) and not isinstance(error.__context__, KeyboardInterrupt):
        return None
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return None
    outcome = classify(error)
    if outcome is Outcome.INTERRUPTED:
        print(f"\n{command}: stopped (Ctrl-C); rerun the same command to continue", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    if outcome is Outcome.MISTAKE:
        return report_mistake(command, error)
    return None


def hydra_task(command: str) -> Callable:
    """Decorate a Hydra task function (under ``@hydra.main``): quiet third-party output, warn of a
    deprecated experiment name (``audioml.config.drop_deprecated_alias``), and in a single run end a user's mistake with one line and status 2, Ctrl-C with status 130."""

    def decorate(task: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(task)
        def run(cfg):
            global _started
            _started = True
            from hydra.core.hydra_config import HydraConfig
            from hydra.types import RunMode

            from audioml.config import drop_deprecated_alias
            from audioml.logs import quiet_third_party

            quiet_third_party()
            logging.getLogger("audioml").setLevel(logging.INFO)
            drop_deprecated_alias(cfg)  # experiment=<old name>: one warning line, the same config
            try:
                return task(cfg)
            except BaseException as error:
                if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
                    raise
                status = end_command(command, error)
                if status is None:
                    raise
                raise SystemExit(status) from None

        return run

    return decorate


def run_hydra_app(command: str, app: Callable[[], Any]) -> None:
    """A console script's body: register the resolvers, run the Hydra ``app``; a config Hydra
    could not compose (it exits 1 before the task started) exits ``MISTAKE_EXIT_CODE``, and Ctrl-C
    outside the task (a multirun) prints a line and exits ``INTERRUPTED_EXIT_CODE``."""
    from audioml.config import register_resolvers

    global _started
    _started = False
    register_resolvers()
    try:
        app()
    except SystemExit as error:
        if error.code == 1 and not _started:  # Hydra printed what it could not compose
            raise SystemExit(MISTAKE_EXIT_CODE) from None
        raise
    except KeyboardInterrupt:
        print(f"\n{command}: stopped (Ctrl-C); rerun the same command to continue", file=sys.stderr)
        raise SystemExit(INTERRUPTED_EXIT_CODE) from None
