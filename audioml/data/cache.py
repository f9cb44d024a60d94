"""Fingerprinted, memory-mappable array caches: decoded waveforms, frozen-backbone embeddings.

An entry (:class:`ArrayCache`) is ``<cache_dir>/<name>-<key>.npy``, opened read-only as a memory
map, plus ``<name>-<key>.json`` (key, shape, dtype and what the builder returned); ``key``
fingerprints the inputs and settings, so a change names a new entry. One process builds an entry
(under ``<name>-<key>.lock``) and publishes it atomically; others wait and load it. Why and how:
docs/design/caches.md."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import mmap
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from audioml.files import atomic_path, atomic_write_bytes, exclusive_lock, remove_temporaries

log = logging.getLogger(__name__)

__all__ = ["fingerprint_files", "ArrayCache", "WaveformCache",
           "reopenable", "reopen"]

#: Bump when the on-disk layout changes: old entries are then ignored.
CACHE_FORMAT = 2


def fingerprint_files(paths: Sequence[str | Path], settings: dict[str, Any]) -> str:
    """sha256 (hex, 20 chars) over each file's absolute path, size and mtime (ns) plus ``settings``.

    Touching or rewriting any file, adding, removing or reordering files, or changing a setting
    gives a different fingerprint. A path that cannot be followed (a dangling symbolic link, a
    symlink loop, a file gone) counts by the link itself, or as absent: it is never an error
    here, the decoder lists it as unreadable, and the fingerprint changes once it can be read.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for path in paths:
        try:
            stat = os.stat(path)
            state = f"{stat.st_size}|{stat.st_mtime_ns}"
        except OSError as error:  # ENOENT for a dangling link or a vanished file, ELOOP for a loop
            try:
                link = os.lstat(path)
                state = f"unreadable link {error.errno}|{link.st_mtime_ns}|{os.readlink(path)}"
            except OSError:
                state = f"absent {error.errno}"
        digest.update(f"{os.path.abspath(path)}|{state}\n".encode(errors="surrogateescape"))
    return digest.hexdigest()[:20]


def reopenable(array: np.ndarray) -> tuple[str, Any]:
    """Picklable handle of ``array``: ``("file", (path, offset, dtype, shape))`` for a read-only
    ``np.memmap`` (so a DataLoader worker started with *spawn* reopens the file instead of
    receiving a copy of the whole cache), ``("array", array)`` otherwise."""
    # Only a map of a whole file (its base is the mmap object) has a valid ``offset``; views of it
    # keep the parent's offset and are sent as arrays instead.
    if (isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap) and array.filename is not None
            and not array.flags.writeable):
        return "file", (str(array.filename), int(array.offset), array.dtype.str, tuple(array.shape))
    return "array", np.asarray(array)


def reopen(handle: tuple[str, Any]) -> np.ndarray:
    """Inverse of ``reopenable``."""
    kind, payload = handle
    if kind == "file":
        path, offset, dtype, shape = payload
        return np.memmap(path, dtype=np.dtype(dtype), mode="r", offset=offset, shape=tuple(shape))
    return payload


class ArrayCache:
    """One fingerprinted array ``<cache_dir>/<name>-<key>.npy`` with its metadata.

    Args:
        cache_dir: folder of the cache files; ``None`` builds in memory and stores nothing.
        name: file-name prefix (``"waveforms"``, ``"embeddings"``).
        key: fingerprint of everything the array's content depends on.

    After ``get_or_build``, ``status`` says what happened: ``"hit"`` (loaded), ``"waited"``
    (loaded after another process finished building it), ``"built"`` (built and stored) or
    ``"memory"`` (built, no ``cache_dir``).
    """

    def __init__(self, cache_dir: str | Path | None, name: str, key: str) -> None:
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self.name = name
        self.key = key
        self.status: str | None = None

    def _path(self, suffix: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{self.name}-{self.key}{suffix}"

    @property
    def array_path(self) -> Path | None:
        return self._path(".npy")

    @property
    def meta_path(self) -> Path | None:
        return self._path(".json")

    @property
    def lock_path(self) -> Path | None:
        return self._path(".lock")

    def exists(self) -> bool:
        return self.array_path is not None and self.array_path.is_file() and self.meta_path.is_file()

    def load(self) -> tuple[np.ndarray, dict[str, Any]]:
        """Read-only memory map of the array and its metadata.

        Raises ``FileNotFoundError`` when the entry is absent and ``ValueError`` when its files
        do not belong together (metadata of another key, shape or dtype mismatch).
        """
        if not self.exists():
            raise FileNotFoundError(f"no cache entry {self.array_path}")
        meta = json.loads(self.meta_path.read_text())
        array = np.load(self.array_path, mmap_mode="r")
        if (meta.get("key") != self.key or meta.get("format") != CACHE_FORMAT
                or list(array.shape) != list(meta.get("shape", [])) or array.dtype.str != meta.get("dtype")):
            raise ValueError(f"cache entry {self.array_path} does not match its metadata")
        return array, meta

    def _try_load(self, shape: tuple[int, ...] | None) -> tuple[np.ndarray, dict[str, Any]] | None:
        if not self.exists():
            return None
        try:
            array, meta = self.load()
        except (ValueError, OSError, json.JSONDecodeError) as error:
            log.warning("cache entry %s unreadable (%s); rebuilding it", self.array_path, error)
            return None
        if shape is not None and tuple(array.shape) != tuple(shape):
            log.warning("cache entry %s has shape %s, expected %s; rebuilding it",
                        self.array_path, array.shape, shape)
            return None
        return array, meta

    def get_or_build(self, shape: tuple[int, ...], build: Callable[[np.ndarray], dict[str, Any]],
                     dtype: str | np.dtype = np.float32) -> tuple[np.ndarray, dict[str, Any]]:
        """Load the entry, or create it with ``build(out)``.

        ``build`` fills ``out`` (zeros of ``shape``/``dtype``; a writable memory map when a
        ``cache_dir`` is set, so the array never has to fit in memory twice) and returns
        JSON-serialisable metadata, stored with the array and returned on every later load.
        Returns ``(array, metadata)``; the array is a read-only memory map when stored.
        """
        shape = tuple(int(s) for s in shape)
        dtype = np.dtype(dtype)
        if self.cache_dir is None:
            out = np.zeros(shape, dtype=dtype)
            meta = dict(build(out))
            self.status = "memory"
            return out, meta
        loaded = self._try_load(shape)
        if loaded is not None:
            self.status = "hit"
            log.info("cache hit: %s", self.array_path)
            return loaded
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(self.lock_path, f"building {self.array_path}: waiting for it"):
            loaded = self._try_load(shape)  # another process may have built it while we waited
            if loaded is not None:
                self.status = "waited"
                log.info("cache built by another process: %s", self.array_path)
                return loaded
            for path in (self.array_path, self.meta_path):  # a killed builder's leftovers (we hold the lock)
                remove_temporaries(self.cache_dir, path.name)
            started = time.perf_counter()
            self._build_and_publish(shape, dtype, build)
            self.status = "built"
            log.info("cache built in %.1f s: %s", time.perf_counter() - started, self.array_path)
        return self.load()

    def _build_and_publish(self, shape: tuple[int, ...], dtype: np.dtype,
                           build: Callable[[np.ndarray], dict[str, Any]]) -> None:
        # Metadata first, array last: the entry exists only once both are in place.
        with atomic_path(self.array_path, suffix=".npy") as array_temp:
            out = np.lib.format.open_memmap(array_temp, mode="w+", dtype=dtype, shape=shape)
            _reserve_space(array_temp, self.array_path)
            user_meta = dict(build(out))
            out.flush()
            del out
            meta = {**user_meta, "key": self.key, "format": CACHE_FORMAT, "shape": list(shape),
                    "dtype": dtype.str, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
            atomic_write_bytes(self.meta_path, json.dumps(meta).encode())


def _reserve_space(path: Path, destination: Path) -> None:
    """Allocate every block of the memory-mapped file ``path`` (to become ``destination``) now.
    A memory map on a full file system does not raise: the first write to a page that has no
    block kills the process with SIGBUS (exit 135, no message). Reserved up front, a full disk
    is an ``OSError`` here, and the temporary file is removed on the way out. File systems that
    cannot reserve are left as they are."""
    size = path.stat().st_size
    with open(path, "rb+") as file:
        try:
            os.posix_fallocate(file.fileno(), 0, size)
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                free = shutil.disk_usage(destination.parent).free
                raise OSError(error.errno, f"no space left in {destination.parent} for the {size / 2**20:.1f} MiB "
                                           f"cache file {destination.name} ({free / 2**20:.1f} MiB free): free some "
                                           "space or set paths.cache_dir to a larger disk") from None
            if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise


class WaveformCache:
    """Decoded fixed-length waveforms ``(n_items, num_samples)`` float32 plus decode failures.

    Failures are cached too: a file that failed once is not decoded again until it (or a setting)
    changes. ``decode_calls`` counts the calls to ``decode`` made by this object (0 on a hit).

    Args:
        cache_dir: folder for cache files; ``None`` decodes into memory every time.
        key: fingerprint from ``fingerprint_files``.
    """

    def __init__(self, cache_dir: str | Path | None, key: str) -> None:
        self._entry = ArrayCache(cache_dir, "waveforms", key)
        self.decode_calls = 0

    @property
    def key(self) -> str:
        return self._entry.key

    @property
    def cache_dir(self) -> Path | None:
        return self._entry.cache_dir

    @property
    def array_path(self) -> Path | None:
        return self._entry.array_path

    @property
    def status(self) -> str | None:
        """``"hit"``, ``"waited"``, ``"built"`` or ``"memory"`` after ``get_or_build``."""
        return self._entry.status

    def exists(self) -> bool:
        return self._entry.exists()

    def get_or_build(self, n_items: int, num_samples: int, decode: Callable[[int], np.ndarray],
                     progress: bool = True) -> tuple[np.ndarray, dict[int, str]]:
        """Load the cache, or decode every item with ``decode(i) -> (num_samples,)`` and store it.

        ``decode`` raises to mark an item as failed; the exception message is kept as the reason
        and the item's row stays zeros. Returns ``(array (n_items, num_samples), {index: reason})``.
        """

        def build(out: np.ndarray) -> dict[str, Any]:
            failures: dict[str, str] = {}
            indices = range(n_items)
            if progress:
                from tqdm.auto import tqdm

                indices = tqdm(indices, desc="decoding audio", unit="file", leave=False)
            for index in indices:
                self.decode_calls += 1
                try:
                    out[index] = decode(index)
                except Exception as error:  # noqa: BLE001 - any decoder failure skips this one item
                    failures[str(index)] = str(error)
            return {"failures": failures}

        array, meta = self._entry.get_or_build((n_items, num_samples), build)
        return array, {int(index): reason for index, reason in meta.get("failures", {}).items()}
