"""Users' own data: a folder with one sub-folder per class (``data=folder``) or a table of files
(``data=csv``). Both are ``AudioDataModule`` s, so they get what the built-in datasets get: the
waveform cache, bad-file accounting (``skipped_files.csv``), grouped stratified splits and
grouped k-fold, class weights and samplers, the embedding cache and the honest evaluation.

Layouts::

    data=folder   <root>/<class name>/**/<file>        (any format the decoder reads)
    data=csv      <table>.csv with columns path, label | target, [group], [split]
                  (paths relative to the table's folder, or absolute)
"""

from __future__ import annotations

import logging
import os
import re
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from audioml.data.audio import AUDIO_EXTENSIONS
from audioml.data.base import AudioDataModule, WaveformDataset
from audioml.files import printable_path

log = logging.getLogger(__name__)

__all__ = ["AUDIO_EXTENSIONS", "FolderDataModule", "CsvDataModule", "normalise_split_name"]

_SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                "dev": "val", "devel": "val", "test": "test", "testing": "test", "eval": "test"}
_SPLIT_MODES = ("auto", "given", "grouped", "random")


def normalise_split_name(value: str) -> str:
    """``"Validation"`` -> ``"val"`` etc.; raises ``ValueError`` for an unknown name."""
    name = _SPLIT_NAMES.get(str(value).strip().lower())
    if name is None:
        raise ValueError(f"split value {value!r}: use train, val (or valid/dev/devel) or test")
    return name


class _TableDataModule(AudioDataModule):
    """Shared part of the folder and CSV modules: class names from the data (or given), the
    split mode, and clip regression for numeric targets.

    Args:
        classes: class names in target order; ``None`` = the sorted labels found.
        split: ``auto`` (the table's ``split`` column when there is one, else grouped),
            ``given`` (the column, required), ``grouped`` (grouped stratified holdout by the
            ``group`` column; every file its own group when there is none) or ``random``
            (files split at random, stratified, ignoring groups: the protocol of studies that
            share speakers between parts, for comparison only).
        Other args: ``AudioDataModule``.
    """

    split_modes = _SPLIT_MODES

    def __init__(self, root: str | Path, classes: Sequence[str] | None = None, split: str = "auto",
                 **kwargs) -> None:
        super().__init__(root=root, split=split, **kwargs)
        self._classes = list(classes) if classes else None
        self._found_classes: list[str] | None = None

    @property
    def class_names(self) -> list[str]:
        if self.task == "regression":
            return ["target"]
        if self._classes is not None:
            return list(self._classes)
        if self._found_classes is None:
            self._found_classes = self._labels_found()
        return list(self._found_classes)

    @abstractmethod
    def _labels_found(self) -> list[str]:
        """The class names present in the data, sorted."""

    def _label_targets(self, labels: pd.Series, where: str) -> np.ndarray:
        """Class ids of ``labels``; raises ``ValueError`` naming labels outside ``classes``."""
        names = self.class_names
        unknown = sorted(set(labels.astype(str)) - set(names))
        if unknown:
            raise ValueError(f"{where}: labels {unknown[:5]} are not in data.classes={names}; add them to "
                             "data.classes or set data.classes=null to take every label found")
        index = {name: i for i, name in enumerate(names)}
        return labels.astype(str).map(index).to_numpy(dtype=np.int64)

    def split(self, manifest: pd.DataFrame) -> dict[str, np.ndarray]:
        given = "split" in manifest.columns and manifest["split"].notna().any()
        if self.split_mode == "given" and not given:
            raise ValueError(f"data.split=given but {self.root} has no split column; add one "
                             "(train/val/test per row) or use data.split=grouped")
        if self.fold is None and (self.split_mode == "given" or (self.split_mode == "auto" and given)):
            parts = manifest["split"].map(normalise_split_name)
            if "train" not in set(parts):
                raise ValueError(f"{self.root}: the split column names no training rows")
            return {name: np.flatnonzero(parts.to_numpy() == name) for name in ("train", "val", "test")}
        return super().split(manifest)  # grouped, or per file for split=random

    def stratify_labels(self, manifest: pd.DataFrame) -> np.ndarray:
        if self.task == "regression":  # stratify by target quartile, so every part spans the range
            values = manifest["target"].to_numpy(dtype=float)
            return np.searchsorted(np.quantile(values, [0.25, 0.5, 0.75]), values)
        return super().stratify_labels(manifest)

    def dataset(self, split: str) -> WaveformDataset:
        dataset = super().dataset(split)
        if self.task == "regression":
            return _SingleWindowDataset(dataset.waveforms, dataset.targets, dataset.indices)
        return dataset


class _SingleWindowDataset(WaveformDataset):
    """Clip regression as a one-window sequence for ``SequenceRegressor`` models:
    items ``(waveform (1, num_samples), target (1, 1))``."""

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        waveform, target = super().__getitem__(item)
        return waveform.unsqueeze(0), target.reshape(1, -1)


class FolderDataModule(_TableDataModule):
    """``<root>/<class>/**/<audio file>``: the class is the top-level sub-folder.

    Args:
        root: the folder holding one sub-folder per class.
        group_pattern: regular expression searched in each file's path relative to ``root``
            (``/``-separated); its first group (or the whole match) is the file's group, e.g.
            ``"^[^/]+/(spk\\d+)_"`` for speaker ids in the names. ``None``: each file is its own
            group (no grouping). A file it does not match raises ``ValueError`` naming it.
        Other args: ``_TableDataModule``.
    """

    group_name = "group"

    def __init__(self, root: str | Path, group_pattern: str | None = None, **kwargs) -> None:
        super().__init__(root=root, **kwargs)
        self.group_pattern = re.compile(group_pattern) if group_pattern else None

    def check_root(self) -> None:
        if not self.root.is_dir():
            raise FileNotFoundError(f"data=folder: {self.root} does not exist; set data.root to the folder "
                                    "holding one sub-folder per class")

    def _class_dirs(self) -> list[Path]:
        self.check_root()
        dirs = self.storable_paths(sorted(p for p in self.root.iterdir()
                                          if p.is_dir() and not p.name.startswith(".")), "folder")
        if not dirs:
            raise FileNotFoundError(f"data=folder: {self.root} has no class sub-folders "
                                    "(expected <root>/<class name>/<audio files>)")
        return dirs

    def _labels_found(self) -> list[str]:
        found, empty = [], []
        for folder in self._class_dirs():
            (found if self.audio_files(folder, recursive=True)[0] else empty).append(folder.name)
        if empty:
            log.warning("data=folder: class folders without any audio file are not classes: %s (put audio in them, "
                        "or remove them)", ", ".join(printable_path(name) for name in empty))
        return found

    def build_manifest(self) -> pd.DataFrame:
        rows, ignored = [], []
        wanted = set(self.class_names)
        for class_dir in self._class_dirs():
            audio, other = self.audio_files(class_dir, recursive=True)
            ignored += other
            if class_dir.name in wanted and not audio:
                raise FileNotFoundError(f"data=folder: data.classes names {class_dir.name!r}, but {class_dir} holds "
                                        "no audio file: add its clips, or leave it out of data.classes")
            if class_dir.name not in wanted:
                ignored += audio
                continue
            for path in audio:
                relative = path.relative_to(self.root).as_posix()
                rows.append({"path": str(path), "label": class_dir.name,
                             "group": self._group_of(relative)})
        if ignored:
            log.warning("data=folder: ignored %d files that are not audio or not in data.classes (e.g. %s)",
                        len(ignored), ", ".join(printable_path(p.name) for p in ignored[:3]))
        if not rows:
            raise FileNotFoundError(f"data=folder: no audio files ({', '.join(AUDIO_EXTENSIONS)}) under "
                                    f"{self.root}/<class>/")
        manifest = pd.DataFrame(rows)
        manifest["target"] = self._label_targets(manifest["label"], f"data=folder {self.root}")
        return manifest

    def _group_of(self, relative: str) -> str:
        if self.group_pattern is None:
            return relative
        match = self.group_pattern.search(relative)
        if match is None:
            raise ValueError(f"data.group_pattern={self.group_pattern.pattern!r} does not match {relative}; "
                             "fix the pattern or set it to null (every file its own group)")
        return match.group(1) if match.groups() else match.group(0)


class CsvDataModule(_TableDataModule):
    """A table of files: ``path`` plus ``label`` (classes) or a numeric ``target``
    (regression), optional ``group`` and ``split`` columns; other columns are kept as metadata.

    Args:
        csv: the table (``.csv``, or ``.tsv`` read tab-separated); relative ``path`` values are
            relative to the table's folder.
        allow_missing: ``False`` (default): files of the table that do not exist raise
            ``FileNotFoundError`` naming them; ``True``: they are skipped and listed in
            ``skipped_files.csv`` like undecodable ones.
        Other args: ``_TableDataModule`` (``root`` defaults to the table's folder).

    With a ``target`` column the task is regression: items are one-window sequences for a
    ``SequenceRegressor`` model (``model=cnn_regressor``, ``loss=mse`` or ``loss=ccc``).
    """

    def __init__(self, csv: str | Path, root: str | Path | None = None, allow_missing: bool = False,
                 **kwargs) -> None:
        self.csv = Path(csv).expanduser()
        super().__init__(root=root if root is not None else self.csv.parent, **kwargs)
        self.allow_missing = bool(allow_missing)
        self._table: pd.DataFrame | None = None
        table = self._read_table()
        self.task = "regression" if "target" in table.columns and "label" not in table.columns else "classification"

    def check_root(self) -> None:
        if not self.csv.is_file():
            raise FileNotFoundError(f"data=csv: the table data.csv={self.csv} does not exist")

    def _read_table(self) -> pd.DataFrame:
        if self._table is None:
            self.check_root()
            table = pd.read_csv(self.csv, sep="\t" if self.csv.suffix.lower() == ".tsv" else ",")
            table.columns = [str(c).strip() for c in table.columns]
            if "path" not in table.columns or not {"label", "target"} & set(table.columns):
                raise ValueError(f"data=csv: {self.csv} needs a 'path' column and a 'label' (class name) or "
                                 f"'target' (number) column; it has {list(table.columns)}")
            if table["path"].isna().any():
                raise ValueError(f"data=csv: {self.csv} has rows without a path "
                                 f"(lines {(np.flatnonzero(table['path'].isna()) + 2)[:5].tolist()})")
            self._table = table
        return self._table

    def _labels_found(self) -> list[str]:
        return sorted(set(self._read_table()["label"].astype(str)))

    def build_manifest(self) -> pd.DataFrame:
        table = self._read_table().copy()
        base = self.csv.parent
        table["path"] = [str(p if Path(p).is_absolute() else base / p) for p in table["path"].astype(str)]
        missing = [p for p in table["path"] if not Path(p).is_file()]
        if missing and not self.allow_missing:
            raise FileNotFoundError(f"data=csv: {len(missing)} files of {self.csv} do not exist, e.g. "
                                    f"{missing[:3]}; fix the paths (relative to the table's folder) or set "
                                    "data.allow_missing=true to skip and list them")
        if missing:
            log.warning("data=csv: %d files of %s do not exist, skipped (first: %s)", len(missing), self.csv,
                        ", ".join(missing[:3]))
            self.missing = pd.DataFrame({"path": missing, "reason": "file not found"})
            table = table[~table["path"].isin(missing)].reset_index(drop=True)
        table = self._without_repeated_files(table)
        if self.task == "regression":
            targets = pd.to_numeric(table["target"], errors="coerce")
            if targets.isna().any():
                bad = (np.flatnonzero(targets.isna()) + 2)[:5].tolist()
                raise ValueError(f"data=csv: {self.csv} has non-numeric target values (lines {bad})")
            table["target"] = targets.astype(np.float32)
        else:
            table["target"] = self._label_targets(table["label"], f"data=csv {self.csv}")
        if "group" not in table.columns:
            table["group"] = table["path"]
        table["group"] = table["group"].astype(str)
        return table

    def _without_repeated_files(self, table: pd.DataFrame) -> pd.DataFrame:
        """Rows naming the same file (the same real path, links followed; the same segment where
        the table has ``offset``/``duration``) are one clip: exact repeats are merged with a
        warning; repeats that disagree on label/target, group or split are refused, because
        copies of one recording on both sides of a split inflate the test scores."""
        key_columns = ["_file", *[c for c in ("offset", "duration") if c in table.columns]]
        table = table.assign(_file=[os.path.realpath(p) for p in table["path"]], _line=np.arange(len(table)) + 2)
        repeated = table[table.duplicated(key_columns, keep=False)]
        if repeated.empty:
            return table.drop(columns=["_file", "_line"])
        facts = [c for c in ("label", "target", "group", "split") if c in table.columns]
        conflicting = [rows for _, rows in repeated.groupby(key_columns, sort=False)
                       if len(rows[facts].astype(str).drop_duplicates()) > 1]
        if conflicting:
            rows = conflicting[0]
            raise ValueError(f"data=csv: {self.csv} lists {len(conflicting)} files more than once with different "
                             f"{'/'.join(facts)}, e.g. {rows['path'].iloc[0]} on lines {rows['_line'].tolist()}: "
                             "one recording in two rows can land in two splits (its copy in test inflates the "
                             "scores); keep one row per file")
        log.warning("data=csv: %d rows of %s repeat an earlier row for the same file (e.g. line %d); merged into "
                    "one row each", int(table.duplicated(key_columns).sum()), self.csv,
                    int(repeated["_line"].iloc[1]))
        return table.drop_duplicates(key_columns).drop(columns=["_file", "_line"]).reset_index(drop=True)

    def _target_array(self, manifest: pd.DataFrame) -> np.ndarray:
        if self.task == "regression":
            return manifest["target"].to_numpy(dtype=np.float32)
        return super()._target_array(manifest)
