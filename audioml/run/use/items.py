"""Which test items a run scored, as files: every predictions table a run writes
(``test_predictions.csv``, a k-fold run's ``oof_predictions.csv``) names each item by its file's
path relative to the dataset folder (``file``, the same on every machine) and the sha256 of its
bytes (``sha256``), beside the segment or window it is (``offset``, ``start_ms``, ``window``).
Two runs were scored on the same items when these agree (``audioml.run.use.comparison``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from audioml.files import file_digest

__all__ = ["FILE_COLUMN", "DIGEST_COLUMN", "POSITION_COLUMNS", "with_item_identity"]

#: The item's file, relative to the dataset folder (absolute when outside it), POSIX separators.
FILE_COLUMN = "file"
#: sha256 of the item's file.
DIGEST_COLUMN = "sha256"
#: Where in its file an item is, for datasets whose items are parts of files.
POSITION_COLUMNS = ("offset", "start_ms", "window")


def with_item_identity(table: pd.DataFrame, root: str | Path | None) -> pd.DataFrame:
    """``table`` (with the manifest's ``path`` column) with ``file`` and ``sha256`` inserted
    after ``path``; each file is read once, a missing one gets an empty digest."""
    base = Path(root).expanduser().resolve() if root is not None else None
    names, digests = {}, {}
    for text in dict.fromkeys(table["path"].astype(str)):
        path = Path(text).expanduser().resolve()
        try:
            names[text] = path.relative_to(base).as_posix() if base is not None else path.as_posix()
        except ValueError:
            names[text] = path.as_posix()
        digests[text] = file_digest(path) if path.is_file() else ""
    out = table.copy()
    position = list(out.columns).index("path") + 1
    out.insert(position, DIGEST_COLUMN, out["path"].astype(str).map(digests))
    out.insert(position, FILE_COLUMN, out["path"].astype(str).map(names))
    return out

