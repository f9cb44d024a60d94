"""Checkpoint files: written atomically, and checked before a run resumes from them (what a
checkpoint records about its model: ``audioml.run.use.checkpoint``).

Every write goes to a temporary file in the destination folder, is flushed to disk and then
renamed over the destination (``os.replace``), so a reader (or a resumed run) sees either the
old file or the complete new one, also on mounted drives where Lightning's own temporary file
(in the system temp folder) would be copied across devices non-atomically.
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from audioml.files import atomic_write_bytes
from audioml.run.rundir import RunDir

log = logging.getLogger(__name__)

__all__ = ["AtomicCheckpointIO", "checkpoint_is_intact", "find_resume_checkpoint"]

class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O that writes every checkpoint atomically (see module docs).

    Pass as ``Trainer(plugins=[AtomicCheckpointIO()])``; reading is Lightning's own.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        import io

        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(path, buffer.getvalue())


def checkpoint_is_intact(path: str | Path) -> bool:
    """Whether ``path`` is a complete ``torch.save`` archive: every member present and matching
    its CRC-32 (a truncated or partly overwritten file fails). Reads the whole file once."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None and any(n.endswith("data.pkl") for n in archive.namelist())
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False


def _loads(path: Path) -> str | None:
    """Why ``path`` cannot be loaded as plain data (``None`` when it can); memory-mapped, so
    the tensors are not read."""
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # torch raises many types for foreign or damaged files
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:200]
    return None


def find_resume_checkpoint(run: RunDir) -> Path | None:
    """The newest intact resume checkpoint of ``run`` (``RunDir.resume_checkpoints``), or
    ``None`` when there is none.

    A damaged file (torn, or complete but not loadable with ``weights_only=True``, e.g. one
    holding pickled objects) is skipped with a warning and renamed to ``<name>.damaged``
    (replacing an older one), so that the next save cannot rotate it into the place of the
    good fallback.
    """
    directory, found = run.checkpoints, None
    for path in run.resume_checkpoints():
        if not path.is_file():
            continue
        problem = None if checkpoint_is_intact(path) else "damaged (truncated or corrupt)"
        if problem is None and (reason := _loads(path)) is not None:
            problem = f"complete but cannot be loaded as plain data ({reason})"
        if problem is None:
            found = path
            break
        try:
            os.replace(path, path.with_name(path.name + ".damaged"))
        except FileNotFoundError:  # another DDP rank moved it aside first
            pass
        log.warning("checkpoint %s is %s: moved aside to %s.damaged", path, problem, path.name)
    if found is None and any(directory.glob("*.damaged")):
        log.warning("no intact resume checkpoint in %s: training starts from the beginning", directory)
    elif found is not None and found != run.last_checkpoint:
        log.warning("resuming from %s, the checkpoint before the damaged one", found)
    return found
