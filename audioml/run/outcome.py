"""How an error ends a run or a command: the one place that decides.

``classify(error)`` names what happened; ``ending(logger)`` ends the open MLflow run by it
(KILLED for a preemption or Ctrl-C, FAILED with the cause as ``audioml.error`` otherwise) and lets
the error go on; ``audioml.entry`` turns it into the command's exit status (143 preempted: rerun
to continue, 130 interrupted, 2 a user's mistake as one line, a bug's traceback otherwise).
Imports neither torch nor Lightning.
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from audioml.errors import UserError, error_summary

log = logging.getLogger(__name__)

__all__ = [
    "INTERRUPTED_EXIT_CODE",
    "MISTAKE_EXIT_CODE",
    "PREEMPTED_EXIT_CODE",
    "Outcome",
    "classify",
    "ending",
    "error_summary",
    "interrupted",
    "root_cause",
    "stop_on_sigterm",
]

#: Exit status of a run stopped by SIGTERM after saving its checkpoint (128 + SIGTERM).
PREEMPTED_EXIT_CODE = 143
#: Exit status of a command stopped by Ctrl-C (128 + SIGINT).
INTERRUPTED_EXIT_CODE = 130
#: Exit status of a command stopped by a user's mistake.
MISTAKE_EXIT_CODE = 2
_PACKAGE = str(Path(__file__).resolve().parents[1])
#: Modules whose errors say what the user asked for that cannot be done (config, its validation).
_CONFIG_MODULES = ("hydra", "omegaconf")


_MISTAKE_TYPES = (UserError, ValueError, FileNotFoundError, NotADirectoryError, FileExistsError, IsADirectoryError,
                  PermissionError, ConnectionError, LookupError)


class Outcome(enum.Enum):
    """What an error means for the run that raised it."""

    FINISHED = "finished"          # a clean exit (SystemExit 0): nothing to end
    PREEMPTED = "preempted"        # SIGTERM: stopped after a checkpoint, resumable
    INTERRUPTED = "interrupted"    # Ctrl-C: stopped, resumable
    MISTAKE = "mistake"            # the command line, config or data: one clear line
    BUG = "bug"                    # anything else: its traceback


def root_cause(error: BaseException) -> BaseException:
    """Through Hydra's wrappers (``InstantiationException`` keeps the constructor's error as its
    cause) to the error that says what went wrong."""
    while error.__cause__ is not None and type(error).__module__.startswith(_CONFIG_MODULES):
        error = error.__cause__
    return error


def interrupted(error: BaseException | None) -> bool:
    """Whether ``error`` is a Ctrl-C: a ``KeyboardInterrupt``, or the ``SystemExit`` Lightning
    raises while handling one (its graceful shutdown ends with ``exit(1)``)."""
    while error is not None:
        if isinstance(error, KeyboardInterrupt):
            return True
        if not isinstance(error, SystemExit):
            return False
        error = error.__context__
    return False


def _preempted(error: BaseException) -> bool:
    return type(error).__name__ == "SIGTERMException" or (isinstance(error, SystemExit)
                                                           and error.code == PREEMPTED_EXIT_CODE)


def _user_mistake(error: BaseException) -> bool:
    """One of ``_MISTAKE_TYPES`` raised by audioml's own checks or the config system,
    Lightning's ``MisconfigurationException`` (``trainer=ddp`` without a GPU), OmegaConf's errors
    (a missing mandatory value, a bad interpolation), a config Hydra could not compose."""
    cause = root_cause(error)
    name = type(cause).__name__
    if name == "MisconfigurationException" or type(cause).__module__.startswith("omegaconf"):
        return True
    if type(error).__module__.startswith("hydra") and "ConfigCompositionException" in name:
        return True
    if not isinstance(cause, _MISTAKE_TYPES):
        return False
    frames = traceback.extract_tb(cause.__traceback__)
    where = frames[-1].filename if frames else ""
    return isinstance(cause, UserError) or where.startswith(_PACKAGE) or any(
        f"{os.sep}{module}{os.sep}" in where for module in _CONFIG_MODULES)


def classify(error: BaseException) -> Outcome:
    """What ``error`` means for a run: see ``Outcome``."""
    if _preempted(error):
        return Outcome.PREEMPTED
    if interrupted(error):
        return Outcome.INTERRUPTED
    if isinstance(error, SystemExit):
        return Outcome.FINISHED if error.code in (0, None) else Outcome.BUG
    return Outcome.MISTAKE if _user_mistake(error) else Outcome.BUG


@contextmanager
def ending(logger) -> Iterator[None]:
    """End ``logger``'s MLflow run when the ``with`` body raises, so that no exit path leaves it
    RUNNING: ``KILLED`` for a preemption or Ctrl-C, ``FAILED`` for anything else (a run already
    FINISHED or KILLED is left as it is; FAILED by Lightning's own logger, without the cause, is
    corrected), with ``audioml.error`` saying why. ``logger=None`` (MLflow off, not rank zero):
    nothing to end."""
    try:
        yield
    except BaseException as error:
        outcome = classify(error)
        if logger is not None and getattr(logger, "run_id", None) and outcome is not Outcome.FINISHED:
            from audioml.run.record.tracking import set_status

            try:
                current = logger.experiment.get_run(logger.run_id).info.status
                if current in ("RUNNING", "FAILED"):
                    stopped = outcome in (Outcome.PREEMPTED, Outcome.INTERRUPTED)
                    if stopped:  # the metric points logged before the checkpoint it resumes from
                        getattr(logger, "flush", lambda: None)()
                    reason = {Outcome.PREEMPTED: "stopped by SIGTERM", Outcome.INTERRUPTED: "stopped by Ctrl-C"}
                    logger.experiment.set_tag(logger.run_id, "audioml.error", reason.get(outcome, error_summary(error)))
                    set_status(logger.experiment, logger.run_id, "KILLED" if stopped else "FAILED")
                    log.error("MLflow run %s marked %s: %s", logger.run_id, "KILLED" if stopped else "FAILED",
                              type(error).__name__)
            except Exception as tracking_error:  # noqa: BLE001 - the store itself is gone: the original error matters
                log.warning("could not mark MLflow run %s as ended: %s", logger.run_id, tracking_error)
        raise


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """A SIGTERM anywhere in the ``with`` body outside the training loop (decoding, building a
    cache, waiting for the run lock, opening the MLflow run, testing, writing the reports) raises
    Lightning's ``SIGTERMException`` where the run is, so that ``ending`` ends the open MLflow runs
    KILLED; the process then exits with ``PREEMPTED_EXIT_CODE``. Inside the training loop the
    resume checkpoint takes over (``audioml.run.fit.resume``). Outside the main thread (which alone
    receives signals) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_sigterm)
    try:
        yield
    except BaseException as error:
        if type(error).__name__ != "SIGTERMException":
            raise
        log.warning("stopped by SIGTERM (MLflow run KILLED); rerun the same command to continue")
        raise SystemExit(PREEMPTED_EXIT_CODE) from None
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _raise_sigterm(signum, frame) -> None:
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    raise SIGTERMException()
