"""donateacry-corpus: infant cries labelled by parents with the reason of crying.

Layout (``root`` = ``<data_dir>/donateacry-corpus``)::

    donateacry_corpus_cleaned_and_updated_data/<class>/<uuid>-<ts>-<ver>-<gender>-<age>-<reason>.wav

Splits are grouped by app-instance uuid: one uuid is one family's phone, so the same baby
never lands in two parts.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from audioml.data.base import AudioDataModule
from audioml.data.cry_names import AGE_CODES, REASON_CODES, CryFileName, parse_cry_filename  # noqa: F401 - part of this module's API

log = logging.getLogger(__name__)

__all__ = ["DonateacryDataModule", "CryFileName", "parse_cry_filename", "REASON_CODES",
           "CLEANED_CLASSES", "CLEANED_FOLDER"]

CLEANED_FOLDER = "donateacry_corpus_cleaned_and_updated_data"
CLEANED_CLASSES = ("belly_pain", "burping", "discomfort", "hungry", "tired")
BINARY_CLASSES = ("hungry", "not_hungry")

class DonateacryDataModule(AudioDataModule):
    """Cleaned donateacry corpus, 5 reasons (``labels="multiclass"``) or hungry vs not
    (``labels="binary"``). Groups are app-instance uuids.

    ``source="raw"`` reads the raw 3gp/caf uploads instead, converted and cleaned by
    ``audioml.data.donateacry_raw`` into ``prepared_dir`` (default ``<cache_dir>/donateacry-raw``)
    with clips under ``raw_min_seconds`` rejected; the report is ``<prepared_dir>/report.csv``.
    ``download=True`` fetches the corpus in ``prepare_data`` when ``root`` is missing.
    Other args: ``AudioDataModule``."""

    group_name = "app_instance_id"
    machine_arguments = ("cache_dir", "prepared_dir", "download")

    def __init__(self, root: str | Path, labels: str = "multiclass", clip_seconds: float = 7.0,
                 source: str = "cleaned", prepared_dir: str | Path | None = None,
                 raw_min_seconds: float = 1.0, download: bool = False, **kwargs) -> None:
        if labels not in ("multiclass", "binary"):
            raise ValueError(f"data.labels={labels!r}: use 'multiclass' (5 reasons) or 'binary' "
                             "(hungry vs not_hungry)")
        if source not in ("cleaned", "raw"):
            raise ValueError(f"data.source={source!r}: use 'cleaned' (the published WAVs) or 'raw' "
                             "(the 3gp/caf uploads, cleaned by code)")
        super().__init__(root=root, clip_seconds=clip_seconds, **kwargs)
        self.labels = labels
        self.source = source
        self.download = download
        self.raw_min_seconds = float(raw_min_seconds)
        if prepared_dir is not None:
            self.prepared_dir = Path(prepared_dir).expanduser()
        else:
            self.prepared_dir = (self.cache_dir or self.root) / "donateacry-raw"

    @property
    def class_names(self) -> list[str]:
        return list(CLEANED_CLASSES if self.labels == "multiclass" else BINARY_CLASSES)

    @property
    def collapse(self) -> dict[str, list[str]] | None:
        """The literature's binary view of the 5 reasons: hungry vs the four others (scored as
        ``test/binary_*`` beside the multiclass metrics); ``None`` with ``labels="binary"``."""
        if self.labels != "multiclass":
            return None
        return {"hungry": ["hungry"], "not_hungry": [c for c in CLEANED_CLASSES if c != "hungry"]}

    @property
    def audio_dir(self) -> Path:
        return self.prepared_dir if self.source == "raw" else self.root / CLEANED_FOLDER

    def prepare_data(self) -> None:
        if self.download and not (self.root / CLEANED_FOLDER).is_dir():
            from audioml.data.download import download_dataset

            download_dataset("donateacry", destination=self.root)
        self.check_root()
        if self.source == "raw":
            from audioml.data.donateacry_raw import ensure_prepared

            ensure_prepared(self.root, self.prepared_dir, self.raw_min_seconds)

    def check_root(self) -> None:
        if self.source == "raw":
            from audioml.data.donateacry_raw import raw_upload_files

            raw_upload_files(self.root)  # raises naming the expected bucket folders
            return
        if not self.audio_dir.is_dir():
            raise FileNotFoundError(
                f"donateacry: {self.audio_dir} does not exist. Get the corpus with "
                f"`audioml-data download donateacry` (or `git clone https://github.com/gveres/"
                f"donateacry-corpus` into {self.root.parent}), set AUDIOML_DATA_DIR or "
                f"paths.data_dir to the folder holding donateacry-corpus/, or set data.root.")

    def build_manifest(self) -> pd.DataFrame:
        if self.source == "raw":
            from audioml.data.donateacry_raw import ensure_prepared

            ensure_prepared(self.root, self.prepared_dir, self.raw_min_seconds)
        rows, ignored = [], []
        for class_dir in sorted(p for p in self.audio_dir.iterdir() if p.is_dir()):
            if class_dir.name not in CLEANED_CLASSES:
                raise ValueError(f"donateacry: unexpected class folder {class_dir} "
                                 f"(expected {list(CLEANED_CLASSES)})")
            audio, other = self.audio_files(class_dir)
            ignored += other
            for path in audio:
                fields = parse_cry_filename(path.name)
                reason = class_dir.name
                target = (CLEANED_CLASSES.index(reason) if self.labels == "multiclass"
                          else int(reason != "hungry"))
                rows.append({"path": str(path), "target": target, "group": fields.app_instance_id,
                             "reason": reason, "gender": fields.gender, "age": fields.age,
                             "app_version": fields.app_version, "timestamp": fields.timestamp})
        if ignored:
            log.warning("donateacry: %d files in the class folders are not audio (by their extension) and were "
                        "left out: %s", len(ignored), ", ".join(p.name for p in ignored[:10]))
        if not rows:
            raise FileNotFoundError(f"donateacry: no audio files under {self.audio_dir}/<class>/")
        return pd.DataFrame(rows)
