"""File primitives every part of audioml uses: atomic publish (``atomic_path``,
``publish_directory``), an exclusive lock (``exclusive_lock``, ``lock_is_held``), fingerprints
(``fingerprint``, ``file_digest``) and file names that may not be UTF-8 (``storable_path``,
``printable_path``)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["atomic_path", "atomic_write_bytes", "fsync_directory", "exclusive_lock", "lock_is_held", "fingerprint",
           "file_digest", "publish_directory", "remove_temporaries", "storable_path", "printable_path"]


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an error the file
    written there is synced and renamed to ``path`` (then the folder is synced), so readers see
    the old file or the complete new one; on an error it is removed."""
    # Written here because the standard library has no atomic write, and the temporary file must
    # be in the destination's folder: one elsewhere would be copied across devices, not renamed.
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or ".tmp")
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        with open(temporary, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_directory(path.parent)


def publish_directory(staging: Path, destination: Path) -> None:
    """Move a fully built ``staging`` folder to ``destination`` (same file system), replacing
    any existing folder there: the old one is renamed aside first, so ``destination`` always
    holds either the old or the new complete content, never a mix."""
    umask = os.umask(0)  # a folder from mkdtemp is private (0700): give it the usual mode of a new folder
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)
    if destination.exists():
        backup = destination.with_name(f".{destination.name}-replaced-{os.getpid()}")
        os.replace(destination, backup)
        os.replace(staging, destination)
        shutil.rmtree(backup)
    else:
        os.replace(staging, destination)


def remove_temporaries(folder: str | Path, name: str) -> int:
    """Delete the temporary files ``atomic_path`` left for ``folder/name`` when its writer was
    killed (``kill -9``, power loss); call it only while holding the lock that excludes a live
    writer of that file. Returns how many were removed."""
    removed = 0
    for leftover in Path(folder).glob(f".{name}.*"):
        if leftover.is_file():
            leftover.unlink(missing_ok=True)
            removed += 1
    if removed:
        log.info("removed %d temporary file(s) of %s left by an interrupted writer", removed, Path(folder) / name)
    return removed


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (``atomic_path``)."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def fsync_directory(folder: str | Path) -> None:
    """Make a rename in ``folder`` durable, where the platform and file system allow it."""
    try:
        directory = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(directory)
    except OSError:  # some network/FUSE file systems refuse to sync a directory
        pass
    finally:
        os.close(directory)


@contextmanager
def exclusive_lock(path: str | Path, waiting_for: str = "") -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` for the block; when another process holds it,
    logs "another process is <waiting_for>" and waits. The kernel drops a lock whose holder
    dies, so a crashed holder never blocks others. Without ``fcntl`` (Windows) it does not lock."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting_for:
                log.warning("another process is %s", waiting_for)
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def lock_is_held(path: str | Path) -> bool:
    """Whether some process holds ``exclusive_lock(path)`` now (``False`` when ``path`` does not
    exist, and on platforms without ``fcntl``). Probes with a non-blocking shared lock, released
    at once; a holder that died no longer counts (the kernel dropped its lock)."""
    try:
        import fcntl
    except ImportError:
        return False
    try:
        handle = open(path, "rb")
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return False


def fingerprint(value: Any, length: int = 20) -> str:
    """sha256 (hex, first ``length`` characters) of ``value`` as canonical JSON; values JSON
    cannot encode are written with ``str``."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes (read in 1 MiB blocks); ``algorithm`` any ``hashlib`` name."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def storable_path(path: str | Path) -> bool:
    """Whether ``path`` is valid text (UTF-8). A name made under another file-name encoding
    (``b"\\xff"``) reaches Python as lone surrogates, which no table (pandas' Arrow strings), CSV,
    log file or MLflow tag can hold."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable_path(path: str | Path) -> str:
    """``path`` as text that can always be shown or stored: the undecodable bytes of a
    non-UTF-8 name written as escapes (``...-14\\xff\\xfe00-...wav``)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
