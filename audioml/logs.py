"""What a command prints: each line once, audioml's first, and none that does not concern the
user. ``quiet_third_party()`` is called by every command before it works (idempotent)."""

from __future__ import annotations

import logging
import re
import sys
import warnings

__all__ = ["quiet_third_party", "StderrHandler", "log_to_stderr", "IGNORED_WARNINGS", "IGNORED_LOG_LINES"]


class StderrHandler(logging.StreamHandler):
    """A handler writing to ``sys.stderr`` as it is when a line is logged (a command run twice in
    one process, under a test's capture, writes where stderr is now, not to a closed stream)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # logging.StreamHandler.__init__ sets it: stderr is looked up instead
        pass


def log_to_stderr(level: int = logging.INFO, format: str = "%(levelname)s %(name)s: %(message)s") -> None:
    """Log to stderr from a command that is not a Hydra app: ``StderrHandler`` on the root
    logger, after dropping any handler whose stream is closed (a run before this one in the same
    process, e.g. under a test's capture); handlers that still write are kept."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False):
            root.removeHandler(handler)
    if not any(isinstance(handler, StderrHandler) for handler in root.handlers):
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter(format))
        root.addHandler(handler)
    root.setLevel(min(root.level, level) if root.level else level)

#: Python warnings of other packages about how audioml uses them, each known to be harmless here.
IGNORED_WARNINGS = (
    # audioml moves batches itself (on_after_batch_transfer, transfer_batch_to_device): by design
    r"You have overridden `(transfer_batch_to_device|on_after_batch_transfer|on_before_batch_transfer)` in `LightningModule`",
    # audioml logs once per epoch (its own epoch means), not every n steps
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    # frozen backbones keep their modules in eval mode on purpose (BatchNorm statistics untouched)
    r"Found \d+ module\(s\) in eval mode at the start of training",
    # torch/Lightning internals, not audioml's code
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # audioml's MLflow model has an explicit signature; it needs neither type hints nor an input example
    r".*Add type hints to the `predict` method",
    r".*An input example was not provided when logging the model",
    # test/val loaders on CPU: audioml chooses the worker count itself (data.num_workers=auto)
    r"The '(train|val|test|predict)_dataloader' does not have many workers",
    # a kNN probe has nothing to step: fitted before the first epoch, its epochs only validate
    r"`LightningModule.configure_optimizers` returned `None`, this fit will run with no optimizer",
    r"`training_step` returned `None`. If this was on purpose, ignore this warning",
)
#: Log lines of other packages that say nothing to an audioml user (matched on the message).
IGNORED_LOG_LINES = (
    r"💡 Tip: .*litlogger",                                   # an advert, at every Trainer
    r"`weights_only` was not set, defaulting to",             # audioml's own loads are weights_only
    r"(GPU|TPU|HPU) available: ",                             # the run's device is logged by audioml
    r"^Seed set to \d+$",                                     # the seed is in the run's config
    r"Creating initial MLflow database tables|Updating database tables",
)
_ignored_lines = re.compile("|".join(f"(?:{pattern})" for pattern in IGNORED_LOG_LINES))


class _DropIgnored(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _ignored_lines.search(record.getMessage())


_FILTER = _DropIgnored()


def quiet_third_party() -> None:
    """Lightning's own console handler removed (its lines go once, through the application's
    handlers: Hydra's console and ``train.log``), the lines and warnings listed above dropped,
    MLflow's store set-up and schema chatter at WARNING."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:  # Lightning adds a bare StreamHandler at import
                logger.removeHandler(handler)
        logger.propagate = True
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch.trainer.connectors.checkpoint_connector", "lightning.fabric.utilities.seed",
                 "lightning.pytorch.accelerators.cuda", "mlflow.store.db.utils"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    for handler in logging.getLogger().handlers:  # the application's (Hydra's console and log file)
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
    for name in ("mlflow.store.db.utils", "alembic", "alembic.runtime.migration", "mlflow.system_metrics"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
