"""The ``DONE`` marker of a run directory: written last, when everything a run outputs is
written, holding its final metrics. A module of its own, importing neither torch nor Lightning:
the report worker (``audioml.run.finishing``) writes it too, and starts in a second."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from audioml.files import atomic_write_bytes

log = logging.getLogger(__name__)

__all__ = ["DONE_FILE", "read_done", "write_done"]

#: Marker written (atomically, last) when a run finished; holds its final metrics.
DONE_FILE = "DONE"


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
