"""A run directory: the one owner of its file names, its lock and its markers.

Every module asks a :class:`RunDir` for a path or a fact of a run directory
(``run.metrics_file``, ``run.finished()``, ``run.best_checkpoint()``); none spells a file name
of it. Imports neither torch nor Lightning: the report worker and ``audioml-compare --status``
use it too.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from audioml.files import atomic_write_bytes, exclusive_lock, file_digest, lock_is_held, remove_temporaries

log = logging.getLogger(__name__)

__all__ = ["RunDir"]


def without_password(uri: str) -> str:
    """``uri`` with any password left out of its authority (``user:secret@host`` -> ``user@host``)."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    user, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user.split(':', 1)[0]}@{host}"))


class RunDir:
    """The directory of one run (a training run, a fold, a grid, a probe table), ``RunDir(path)``.

    What a run leaves there, by role: the resolved ``config.yaml``; ``metrics.json`` (final test
    metrics, flat); ``DONE`` (written last: the run finished; holds its metrics), ``FAILED`` with
    ``traceback.txt`` (a sweep's job that raised), ``PRUNED`` (a search's pruner stopped it); the
    MLflow run id (``mlflow_run_id``), its store (``mlflow_store``), copies in other stores and
    metric points a store did not take; ``data.json`` (the data it is bound to); ``checkpoints/``
    (``last.ckpt`` and the one before it for resuming, ``best-*.ckpt``) and which one the test
    scored (``tested_checkpoint.json``); the reports; ``fold_<i>/`` of a k-fold run; a classical
    grid's ranking, combinations and best pipeline.
    """

    CONFIG = "config.yaml"
    METRICS = "metrics.json"
    LOG = "train.log"
    DONE = "DONE"
    FAILED = "FAILED"
    PRUNED = "PRUNED"
    TRACEBACK = "traceback.txt"
    LOCK = ".lock"
    DATA = "data.json"
    RUN_ID = "mlflow_run_id"
    STORE = "mlflow_store"
    COPIES = "mlflow_copies.json"
    PENDING_POINTS = "mlflow_pending.json"
    CHECKPOINTS = "checkpoints"
    LAST = "last.ckpt"
    PREVIOUS = "last-previous.ckpt"
    INCOMING = "last-incoming.ckpt"
    BEST = "best-*.ckpt"
    BEST_FILENAME = "best-epoch{epoch:03d}"  # ModelCheckpoint's filename pattern (conf/callbacks)
    TESTED = "tested_checkpoint.json"
    SKIPPED = "skipped_files.csv"
    PREDICTIONS = "test_predictions.csv"
    PER_CLASS = "per_class_report.csv"
    COLLAPSE = "class_collapse.json"
    OOF = "oof_predictions.csv"
    FOLD_METRICS = "fold_metrics.csv"
    CONFUSION = "confusion_matrix.png"
    CONFUSION_COLLAPSED = "confusion_matrix_binary.png"
    EMBEDDINGS = "embeddings_pca.png"
    RELIABILITY = "reliability_diagram.png"
    CURVES = "learning_curves.png"
    CURVES_TABLE = "learning_curves.csv"
    LAYER_WEIGHTS = "layer_weights.png"
    PROBE_TABLE = "probe_table.csv"
    PROBE_LAYERS = "probe_layers.csv"
    PROBE_FIGURE = "probe_layers.png"
    RANKING = "ranking.csv"             # a classical grid's directory: its combinations ranked,
    RANKING_TEXT = "ranking.txt"        # the same as printed,
    COMBINATIONS = "combinations"       # each combination's record, pipeline and predictions,
    GRID_BEST = "best"                  # and the best combination's pipeline and reports
    #: Files a run's record uploads to MLflow when it is rebuilt from the folder (``relog``).
    RECORDED = (CONFIG, METRICS, TESTED, PER_CLASS, PREDICTIONS, SKIPPED, COLLAPSE, CURVES_TABLE, FOLD_METRICS, OOF,
                "*.png")

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    def create(self) -> RunDir:
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    # ---------------------------------------------------------------------------------- files
    def _file(self, name: str) -> Path:
        return self.path / name

    config_file = property(lambda self: self._file(self.CONFIG))
    metrics_file = property(lambda self: self._file(self.METRICS))
    log_file = property(lambda self: self._file(self.LOG))
    traceback_file = property(lambda self: self._file(self.TRACEBACK))
    lock_file = property(lambda self: self._file(self.LOCK))
    run_id_file = property(lambda self: self._file(self.RUN_ID))
    pending_points_file = property(lambda self: self._file(self.PENDING_POINTS))
    skipped_file = property(lambda self: self._file(self.SKIPPED))
    predictions_file = property(lambda self: self._file(self.PREDICTIONS))
    per_class_file = property(lambda self: self._file(self.PER_CLASS))
    collapse_file = property(lambda self: self._file(self.COLLAPSE))
    oof_file = property(lambda self: self._file(self.OOF))
    fold_metrics_file = property(lambda self: self._file(self.FOLD_METRICS))
    confusion_figure = property(lambda self: self._file(self.CONFUSION))
    collapsed_confusion_figure = property(lambda self: self._file(self.CONFUSION_COLLAPSED))
    embeddings_figure = property(lambda self: self._file(self.EMBEDDINGS))
    reliability_figure = property(lambda self: self._file(self.RELIABILITY))
    curves_figure = property(lambda self: self._file(self.CURVES))
    curves_table = property(lambda self: self._file(self.CURVES_TABLE))
    layer_weights_figure = property(lambda self: self._file(self.LAYER_WEIGHTS))
    probe_table_file = property(lambda self: self._file(self.PROBE_TABLE))
    probe_layers_file = property(lambda self: self._file(self.PROBE_LAYERS))
    probe_figure = property(lambda self: self._file(self.PROBE_FIGURE))
    ranking_file = property(lambda self: self._file(self.RANKING))
    ranking_text_file = property(lambda self: self._file(self.RANKING_TEXT))
    combinations_dir = property(lambda self: self._file(self.COMBINATIONS))
    grid_best_dir = property(lambda self: self._file(self.GRID_BEST))
    checkpoints = property(lambda self: self._file(self.CHECKPOINTS))
    last_checkpoint = property(lambda self: self.checkpoints / self.LAST)
    incoming_checkpoint = property(lambda self: self.checkpoints / self.INCOMING)

    def resume_checkpoints(self) -> tuple[Path, Path]:
        """``(last.ckpt, last-previous.ckpt)``: where a run resumes from, newest first."""
        return self.checkpoints / self.LAST, self.checkpoints / self.PREVIOUS

    def best_checkpoints(self) -> list[Path]:
        return sorted(self.checkpoints.glob(self.BEST))

    def best_checkpoint(self) -> Path | None:
        """The best checkpoint (the last of several, sorted by epoch), or ``None``."""
        best = self.best_checkpoints()
        return best[-1] if best else None

    def fold(self, index: int) -> RunDir:
        return RunDir(self.path / f"fold_{index}")

    def folds(self) -> list[RunDir]:
        """The fold directories of a k-fold run, in fold order."""
        found = [p for p in self.path.glob("fold_*") if p.is_dir() and p.name[5:].isdigit()]
        return [RunDir(p) for p in sorted(found, key=lambda p: int(p.name[5:]))]

    def file(self, name: str) -> Path:
        """Another file a report writes into the run directory (its name given by the report)."""
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"{name!r} is not a file name")
        return self.path / name

    def remove_partial_writes(self) -> None:
        """Temporary files of checkpoint writes a killed run left (call holding the lock)."""
        for run in (self, *self.folds()):
            remove_temporaries(run.checkpoints, "*.ckpt")

    # ---------------------------------------------------------------------------------- lock
    @contextmanager
    def lock(self, waiting_for: str = "") -> Iterator[None]:
        """One process at a time works here (held while it trains or completes its record)."""
        self.create()
        with exclusive_lock(self.lock_file, waiting_for or f"training in {self.path}: waiting until it ends"):
            yield

    def locked(self) -> bool:
        """Whether a live process holds this directory (or one of its folds)."""
        return any(lock_is_held(run.lock_file) for run in (self, *self.folds()))

    # ------------------------------------------------------------------------------- markers
    _UNREADABLE = object()

    def _read_json(self, name: str, what: str) -> Any:
        """The JSON file ``name``: ``None`` when absent, ``_UNREADABLE`` (with a warning saying
        ``what`` follows) when it cannot be read."""
        path = self._file(name)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            log.warning("%s is unreadable: %s", path, what)
            return self._UNREADABLE

    def _write_json(self, name: str, value: Any) -> Path:
        path = self._file(name)
        atomic_write_bytes(path, json.dumps(value, indent=2, sort_keys=True).encode())
        return path

    def finished(self) -> dict[str, float] | None:
        """The final metrics of a finished run (``DONE``), or ``None`` while it is unfinished."""
        record = self._read_json(self.DONE, "the run is treated as unfinished")
        if record is None or record is self._UNREADABLE:
            return None
        try:
            return {k: float(v) for k, v in record["metrics"].items()}
        except (KeyError, TypeError, ValueError, AttributeError):
            log.warning("%s is unreadable: the run is treated as unfinished", self._file(self.DONE))
            return None

    def wait_finished(self, poll_seconds: float = 2.0) -> dict[str, float]:
        """Block until rank zero marks the run finished, then return its metrics (the other DDP
        ranks wait here while rank zero tests on one device). ``RuntimeError`` when the launching
        process disappears (the rank would otherwise wait forever)."""
        parent = os.getppid()
        while (metrics := self.finished()) is None:
            if os.getppid() != parent:
                raise RuntimeError(f"rank zero of {self.path} is gone before finishing the run")
            time.sleep(poll_seconds)
        return metrics

    def mark_done(self, metrics: dict[str, float]) -> Path:
        """Mark the run finished (atomically; the last file it writes)."""
        return self._write_json(self.DONE, {"metrics": metrics})

    def done_time(self) -> float | None:
        path = self._file(self.DONE)
        return path.stat().st_mtime if path.is_file() else None

    def failure(self) -> dict[str, Any] | None:
        """What a failed job wrote (``{"error", "traceback", "host", "time"}``), or ``None``."""
        record = self._read_json(self.FAILED, "a failure without its message")
        return {"error": "(unreadable FAILED record)"} if record is self._UNREADABLE else record

    def mark_failed(self, error: str, traceback_text: str) -> Path:
        """``FAILED`` (the error's first line, the host, the time) and ``traceback.txt``; returns
        the traceback's path."""
        self.create()
        atomic_write_bytes(self.traceback_file, traceback_text.encode("utf-8", "backslashreplace"))
        self._write_json(self.FAILED, {"error": error, "traceback": self.TRACEBACK, "host": socket.gethostname(),
                                       "time": time.time()})
        return self.traceback_file

    def clear_failure(self) -> None:
        """Forget an earlier failure (the job is being retried)."""
        self._file(self.FAILED).unlink(missing_ok=True)

    def pruned(self) -> dict[str, Any] | None:
        """The record of a run whose training a search's pruner stopped, or ``None``."""
        record = self._read_json(self.PRUNED, "a pruning record without its details")
        return record if isinstance(record, dict) else None if record is None else {"epoch": None}

    def mark_pruned(self, record: dict[str, Any]) -> Path:
        return self._write_json(self.PRUNED, record)

    # -------------------------------------------------------------------------------- MLflow
    def run_id(self) -> str | None:
        """The id of this directory's MLflow run, or ``None`` (none recorded, or not an id)."""
        try:
            text = self.run_id_file.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return text if text.isalnum() else None

    def run_id_or_set_aside(self) -> str | None:
        """``run_id()``; a file that holds no text id (binary garbage) is moved aside to
        ``mlflow_run_id.unreadable`` with a warning (a new MLflow run is started)."""
        if not self.run_id_file.is_file():
            return None
        raw = self.run_id_file.read_bytes()
        try:
            text = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            text = None
        if text is not None and text.isprintable():
            return text or None
        aside = self.run_id_file.with_name(self.RUN_ID + ".unreadable")
        os.replace(self.run_id_file, aside)
        log.warning("%s holds %d bytes that are not a run id: moved aside to %s; starting a new MLflow run",
                    self.run_id_file, len(raw), aside.name)
        return None

    def write_run_id(self, run_id: str) -> None:
        atomic_write_bytes(self.run_id_file, run_id.encode())

    def record_store(self, tracking_uri: str) -> None:
        """Write the store of the MLflow run (``mlflow_store``), without a password."""
        atomic_write_bytes(self._file(self.STORE), without_password(tracking_uri).encode())

    def store(self) -> str | None:
        """The store of the MLflow run; for runs before that record, the one ``config.yaml``
        names (``logger.tracking_uri``, else the embedded store under ``paths.mlflow_dir``)."""
        path = self._file(self.STORE)
        if path.is_file():
            return path.read_text(encoding="utf-8").strip() or None
        config = self.config()
        logger, paths = config.get("logger") or {}, config.get("paths") or {}
        if logger.get("tracking_uri"):
            return str(logger["tracking_uri"])
        return f"sqlite:///{Path(paths['mlflow_dir']).resolve() / 'mlflow.db'}" if paths.get("mlflow_dir") else None

    def copies(self) -> dict[str, str]:
        """Copies of the MLflow run in other stores (``{store: run id}``)."""
        record = self._read_json(self.COPIES, "copies of the run are looked up by tag")
        return dict(record) if isinstance(record, dict) else {}

    def record_copy(self, tracking_uri: str, run_id: str) -> None:
        self._write_json(self.COPIES, {**self.copies(), without_password(tracking_uri): run_id})

    # ---------------------------------------------------------------------------------- data
    def bound_data(self) -> dict[str, str] | None:
        """The data this directory is bound to (``fingerprint``, ``clips``, ``root``), or
        ``None`` (a new directory, or one written before runs were bound to their data)."""
        record = self._read_json(self.DATA, "the run's data cannot be checked")
        if record is None or record is self._UNREADABLE:
            return None
        try:
            return {key: str(record[key]) for key in ("fingerprint", "clips", "root")}
        except (KeyError, TypeError):
            log.warning("%s is unreadable: the run's data cannot be checked", self._file(self.DATA))
            return None

    def bind_data(self, record: dict[str, str]) -> Path:
        """Bind this directory to the data ``record`` describes (``fingerprint``, ``clips``, ``root``)."""
        self.create()
        return self._write_json(self.DATA, record)

    def for_other_data(self, fingerprint: str) -> RunDir:
        """The directory, beside this one, of the same configuration on the data with this
        ``fingerprint``: ``<name>-data-<first 8 hex digits>``."""
        return RunDir(self.path.with_name(f"{self.path.name}-data-{fingerprint[:8]}"))

    # ------------------------------------------------------------------------------- results
    def config(self) -> dict[str, Any]:
        """The resolved ``config.yaml`` (``{}`` when absent or unreadable)."""
        import yaml

        try:
            config = yaml.safe_load(self.config_file.read_text())
        except (OSError, ValueError, yaml.YAMLError):
            return {}
        return config if isinstance(config, dict) else {}

    def write_config(self, text: str) -> Path:
        atomic_write_bytes(self.config_file, text.encode())
        return self.config_file

    def metrics(self) -> dict[str, float] | None:
        """``metrics.json`` (``None`` when absent)."""
        record = self._read_json(self.METRICS, "no metrics")
        return record if isinstance(record, dict) else None

    def write_metrics(self, metrics: dict[str, float]) -> Path:
        return self._write_json(self.METRICS, metrics)

    def collapse(self) -> dict[str, list[str]] | None:
        """The coarser view of the classes the test was also scored on (``class_collapse.json``)."""
        record = self._read_json(self.COLLAPSE, "the collapsed task is left out")
        return record if isinstance(record, dict) else None

    def write_collapse(self, collapse: dict[str, list[str]]) -> Path:
        return self._write_json(self.COLLAPSE, {k: list(v) for k, v in collapse.items()})

    def record_tested(self, checkpoint: Path) -> Path:
        """Record that the test scored ``checkpoint``: its path relative to the run directory (the
        run may move), size in bytes and sha256."""
        checkpoint = Path(checkpoint).resolve()
        try:
            shown = str(checkpoint.relative_to(self.path.resolve()))
        except ValueError:  # a checkpoint outside the run directory (dirpath set elsewhere)
            shown = str(checkpoint)
        return self._write_json(self.TESTED, {"checkpoint": shown, "bytes": checkpoint.stat().st_size,
                                              "sha256": file_digest(checkpoint)})

    def records_tested(self) -> bool:
        return self._file(self.TESTED).is_file()

    def tested_checkpoint(self) -> Path | None:
        """The checkpoint whose test numbers are in ``metrics.json``, still the same bytes;
        ``None`` when none was recorded, or (with a warning) when it is gone or rewritten."""
        record = self._read_json(self.TESTED, "which checkpoint the test scored is unknown")
        if record is None or record is self._UNREADABLE:
            return None
        try:
            checkpoint = self.path / record["checkpoint"]
            unchanged = checkpoint.is_file() and checkpoint.stat().st_size == record["bytes"] and \
                file_digest(checkpoint) == record["sha256"]
        except (KeyError, TypeError, OSError) as error:
            log.warning("%s is unreadable (%s): which checkpoint the test scored is unknown", self._file(self.TESTED),
                        error)
            return None
        if not unchanged:
            log.warning("%s, the checkpoint %s's test scored, is %s since", checkpoint, self.path,
                        "changed" if checkpoint.is_file() else "gone")
            return None
        return checkpoint

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> RunDir:
        """The run directory a checkpoint file of ``<run dir>/checkpoints/`` belongs to."""
        return cls(Path(checkpoint).resolve().parent.parent)
