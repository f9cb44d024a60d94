"""The files that say what a run directory is: the ``DONE`` marker (written last, when everything
a run outputs is written, holding its final metrics), the MLflow run id file and the store it is
in, and the lock held while it trains. A module of its own, importing neither torch nor Lightning: the report worker
(``audioml.run.finishing``) writes ``DONE`` too and starts in a second, and ``audioml-compare
--status`` reads them all."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import yaml

from audioml.files import atomic_write_bytes

log = logging.getLogger(__name__)

__all__ = ["DONE_FILE", "RUN_ID_FILE", "RUN_LOCK", "PENDING_POINTS_FILE", "PRUNED_FILE", "STORE_FILE", "read_done",
           "write_done", "read_run_id", "write_pruned", "read_pruned", "record_store", "recorded_store",
           "without_password"]

#: Marker written (atomically, last) when a run finished; holds its final metrics.
DONE_FILE = "DONE"
#: The id of the run directory's MLflow run (its store: ``record_store``).
RUN_ID_FILE = "mlflow_run_id"
#: Held (``audioml.files.exclusive_lock``) while a process trains in the run directory.
RUN_LOCK = ".lock"
#: Metric points the MLflow store did not take (it stopped answering), written by the run's next logger.
PENDING_POINTS_FILE = "mlflow_pending.json"
#: Written when a hyperparameter search's pruner stopped the run's training early
#: (``audioml.search.pruning``): ``{"epoch", "monitor", "value", "trial", "study", "time"}``.
PRUNED_FILE = "PRUNED"
#: The tracking URI (without a password) of the store holding the run's MLflow run (``record_store``).
STORE_FILE = "mlflow_store"


def read_run_id(run_dir: str | Path) -> str | None:
    """The MLflow run id recorded in ``run_dir``, or ``None`` (none recorded, or not an id)."""
    try:
        text = (Path(run_dir) / RUN_ID_FILE).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if text.isalnum() else None


def write_done(run_dir: str | Path, metrics: dict[str, float]) -> Path:
    """Mark ``run_dir`` finished (atomically; call last, after every other output)."""
    path = Path(run_dir) / DONE_FILE
    atomic_write_bytes(path, json.dumps({"metrics": metrics}, indent=2, sort_keys=True).encode())
    return path


def read_done(run_dir: str | Path) -> dict[str, float] | None:
    """The final metrics of a finished run in ``run_dir``, or ``None`` when it is unfinished."""
    path = Path(run_dir) / DONE_FILE
    if not path.is_file():
        return None
    try:
        return {k: float(v) for k, v in json.loads(path.read_text())["metrics"].items()}
    except (ValueError, KeyError, TypeError):
        log.warning("%s is unreadable: the run is treated as unfinished", path)
        return None


def write_pruned(run_dir: str | Path, record: dict) -> Path:
    """Mark the training of ``run_dir`` as stopped by a search's pruner (``record``: plain data)."""
    path = Path(run_dir) / PRUNED_FILE
    atomic_write_bytes(path, json.dumps(record, indent=2, sort_keys=True).encode())
    return path


def read_pruned(run_dir: str | Path) -> dict | None:
    """The record of a run whose training a search's pruner stopped, or ``None``."""
    path = Path(run_dir) / PRUNED_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except ValueError:
        record = None
    return record if isinstance(record, dict) else {"epoch": None}


def without_password(uri: str) -> str:
    """``uri`` with any password left out of its authority (``user:secret@host`` -> ``user@host``)."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    user, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user.split(':', 1)[0]}@{host}"))


def record_store(run_dir: Path, tracking_uri: str) -> None:
    """Write the store of the run directory's MLflow run (``mlflow_store``), without a password."""
    atomic_write_bytes(Path(run_dir) / STORE_FILE, without_password(tracking_uri).encode())


def recorded_store(run_dir: Path) -> str | None:
    """The store ``record_store`` wrote; for runs before that record, the one their
    ``config.yaml`` names (``logger.tracking_uri``, else the embedded store under
    ``paths.mlflow_dir``), or ``None``."""
    path = Path(run_dir) / STORE_FILE
    if path.is_file():
        return path.read_text(encoding="utf-8").strip() or None
    try:
        config = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    logger, paths = config.get("logger") or {}, config.get("paths") or {}
    if logger.get("tracking_uri"):
        return str(logger["tracking_uri"])
    return f"sqlite:///{Path(paths['mlflow_dir']).resolve() / 'mlflow.db'}" if paths.get("mlflow_dir") else None
