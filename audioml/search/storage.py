"""Where a study lives: a journal file (the default, under the sweep directory; a file on a shared
folder for several machines) or a database through SQLAlchemy (``sqlite:///``, ``postgresql://``,
``mysql+pymysql://``), named by one string, as ``optuna-dashboard`` takes it."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["JOURNAL_FOLDER", "default_storage", "open_storage", "shown_storage", "is_database_url"]

#: The folder of the default journal files, in the sweep directory (beside ``.sweeps``).
JOURNAL_FOLDER = ".optuna"
_URL = re.compile(r"^[a-z][a-z0-9+]*://")


def default_storage(sweep_dir: str | Path, study_name: str) -> str:
    """``<sweep_dir>/.optuna/<study_name>.journal``: a study's storage when none is configured."""
    return str(Path(sweep_dir).expanduser().resolve() / JOURNAL_FOLDER / f"{study_name}.journal")


def is_database_url(storage: str) -> bool:
    """Whether ``storage`` is an SQLAlchemy URL (else it is a journal file's path)."""
    return bool(_URL.match(storage))


def open_storage(storage: str):
    """The Optuna storage ``storage`` names: ``JournalStorage`` on the file (its folder created;
    locked with ``JournalFileOpenLock``, which works on NFS and is the lock ``optuna-dashboard``
    takes on the same file) or ``RDBStorage`` on the URL (an SQLite file's folder created). ``ValueError`` for ``redis://``
    (not installed) and an unknown scheme."""
    import optuna

    if not is_database_url(storage):
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        path = Path(storage).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))
    if storage.startswith("sqlite:///"):
        Path(storage[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
    if storage.startswith("redis"):
        raise ValueError(f"hydra.sweeper.storage={shown_storage(storage)}: Redis is not supported here; use a "
                         "journal file on a shared folder or a PostgreSQL/MySQL URL")
    return optuna.storages.RDBStorage(storage)


def shown_storage(storage: str) -> str:
    """``storage`` with a URL's password replaced by ``***`` (for logs and messages)."""
    return re.sub(r"^([a-z][a-z0-9+]*://[^:/@]*:)[^@]*@", r"\1***@", storage)
