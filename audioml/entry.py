"""Around every command's work: the config resolvers, a quiet terminal (``audioml.logs``) and
the one place that decides how an error ends a command.

- a user's mistake (a setting refused, data or a file not found, a server not answering, a
  checkpoint refused: ``is_user_mistake``) prints one line, ``<command>: <message>``, writes the
  traceback to the job's log file only (and to the terminal with ``HYDRA_FULL_ERROR=1``) and exits
  with status 2; so does a config Hydra cannot compose (``data=nosuch``);
- Ctrl-C prints how to continue and exits 130; a preempted run exits 143 (``audioml.run.resume``);
- anything else is a bug: its traceback is shown.

Inside a multirun the job's error is left to the sweep (``audioml.run.sweep``), which records it and
goes on with the other jobs.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["UserError", "is_user_mistake", "hydra_task", "run_hydra_app", "report_mistake", "INTERRUPTED_EXIT",
           "MISTAKE_EXIT"]

MISTAKE_EXIT = 2
INTERRUPTED_EXIT = 130
_PACKAGE = str(Path(__file__).resolve().parent)
#: Modules whose errors say what the user asked for that cannot be done (config, its validation).
_CONFIG_MODULES = ("hydra", "omegaconf")
_started = False


class UserError(Exception):
    """A mistake the user can fix; the message says how. (audioml also raises ``ValueError``,
    ``FileNotFoundError``, ``ConnectionError`` ... with such messages: ``is_user_mistake``.)"""


_MISTAKE_TYPES = (UserError, ValueError, FileNotFoundError, NotADirectoryError, FileExistsError, IsADirectoryError,
                  PermissionError, ConnectionError, LookupError)


def _root_cause(error: BaseException) -> BaseException:
    """Through Hydra's wrappers (``InstantiationException`` keeps the constructor's error as its
    cause) to the error that says what went wrong."""
    while error.__cause__ is not None and type(error).__module__.startswith(_CONFIG_MODULES):
        error = error.__cause__
    return error


def _raised_where(error: BaseException) -> str:
    """The file of the innermost frame that raised ``error``."""
    frames = traceback.extract_tb(error.__traceback__)
    return frames[-1].filename if frames else ""


def is_user_mistake(error: BaseException) -> bool:
    """Whether ``error`` is a mistake of the command line, config or data (a message for the
    user) rather than a bug: one of ``_MISTAKE_TYPES`` raised by audioml's own checks or the
    config system, Lightning's ``MisconfigurationException`` (e.g. ``trainer=ddp`` without a GPU),
    or OmegaConf's errors (a missing mandatory value, a bad interpolation)."""
    cause = _root_cause(error)
    name = type(cause).__name__
    if name == "MisconfigurationException" or type(cause).__module__.startswith("omegaconf"):
        return True
    if type(error).__module__.startswith("hydra") and "ConfigCompositionException" in name:
        return True
    if not isinstance(cause, _MISTAKE_TYPES):
        return False
    where = _raised_where(cause)
    return isinstance(cause, UserError) or where.startswith(_PACKAGE) or any(
        f"{os.sep}{module}{os.sep}" in where for module in _CONFIG_MODULES)


def _log_file() -> str | None:
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    return handlers[0].baseFilename if handlers else None


def report_mistake(command: str, error: BaseException) -> int:
    """Print ``<command>: <message>`` (and where the full traceback went), write the traceback
    to the log files only; returns ``MISTAKE_EXIT``."""
    cause = _root_cause(error)
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
    return MISTAKE_EXIT


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

            from audioml.logs import quiet_third_party

            from audioml.config import drop_deprecated_alias

            quiet_third_party()
            logging.getLogger("audioml").setLevel(logging.INFO)
            drop_deprecated_alias(cfg)  # experiment=<old name>: one warning line, the same config
            try:
                return task(cfg)
            except BaseException as error:
                multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
                if multirun or isinstance(error, SystemExit) or os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                if _interrupted(error):
                    print(f"\n{command}: stopped (Ctrl-C); rerun the same command to continue", file=sys.stderr)
                    raise SystemExit(INTERRUPTED_EXIT) from None
                if is_user_mistake(error):
                    raise SystemExit(report_mistake(command, error)) from None
                raise

        return run

    return decorate


def _interrupted(error: BaseException) -> bool:
    while error is not None:
        if isinstance(error, KeyboardInterrupt):
            return True
        if not isinstance(error, SystemExit):
            return False
        error = error.__context__
    return False


def run_hydra_app(command: str, app: Callable[[], Any]) -> None:
    """A console script's body: register the resolvers, run the Hydra ``app``; a config Hydra
    could not compose (it exits 1 before the task started) exits ``MISTAKE_EXIT``, and Ctrl-C
    outside the task (a multirun) prints a line and exits ``INTERRUPTED_EXIT``."""
    from audioml.config import register_resolvers

    global _started
    _started = False
    register_resolvers()
    try:
        app()
    except SystemExit as error:
        if error.code == 1 and not _started:  # Hydra printed what it could not compose
            raise SystemExit(MISTAKE_EXIT) from None
        raise
    except KeyboardInterrupt:
        print(f"\n{command}: stopped (Ctrl-C); rerun the same command to continue", file=sys.stderr)
        raise SystemExit(INTERRUPTED_EXIT) from None
