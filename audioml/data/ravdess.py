"""RAVDESS emotional speech (audio-only speech part, Livingstone & Russo 2018).

Layouts accepted (``root`` = ``<data_dir>/ravdess``)::

    Actor_01/03-01-05-01-02-01-01.wav ...                       # Zenodo zip
    audio_speech_actors_01-24/Actor_01/03-01-05-01-02-01-01.wav  # Kaggle repackaging

File name ``MM-VV-EE-II-SS-RR-AA.wav``: modality, vocal channel, emotion, intensity, statement,
repetition, actor (odd = male, even = female). Tasks: ``emotion`` (8), ``gender`` (2),
``statement`` (2), ``actor`` (the actors present). Emotion, gender and statement are split by
actor (speaker-independent); actor identity can only be split per file (stratified random).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from audioml.data.base import AudioDataModule
from audioml.data.splits import (
    EMOBOX_RAVDESS_FOLDS,
    SPLIT_MODES,
    assign_groups,
    emobox_ravdess_split,
    group_holdout_split,
)

log = logging.getLogger(__name__)

__all__ = ["RavdessDataModule", "RavdessFileName", "parse_ravdess_filename", "find_actor_dirs",
           "actor_split", "EMOTIONS", "TASKS", "KAGGLE_FOLDER"]

KAGGLE_FOLDER = "audio_speech_actors_01-24"
EMOTIONS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
STATEMENTS = ("kids", "dogs")  # 01 "Kids are talking by the door", 02 "Dogs are sitting by the door"
GENDERS = ("male", "female")
TASKS = ("emotion", "gender", "statement", "actor")
_MODALITIES = {"01": "audio-video", "02": "video-only", "03": "audio-only"}
_CHANNELS = {"01": "speech", "02": "song"}


@dataclass(frozen=True)
class RavdessFileName:
    """Decoded fields of ``MM-VV-EE-II-SS-RR-AA.wav``; codes are the file's two-digit strings."""

    modality: str
    vocal_channel: str
    emotion: str
    intensity: str
    statement: str
    repetition: str
    actor: int

    @property
    def emotion_name(self) -> str:
        return EMOTIONS[int(self.emotion) - 1]

    @property
    def gender(self) -> str:
        return GENDERS[0] if self.actor % 2 == 1 else GENDERS[1]


def parse_ravdess_filename(name: str) -> RavdessFileName:
    """Parse a RAVDESS file name. Raises ``ValueError`` naming the file for any unknown code."""
    stem = Path(name).stem
    fields = stem.split("-")
    if len(fields) != 7 or not all(len(f) == 2 and f.isdigit() for f in fields):
        raise ValueError(f"{name}: expected seven two-digit fields MM-VV-EE-II-SS-RR-AA")
    modality, channel, emotion, intensity, statement, repetition, actor = fields
    checks = {"modality": (modality, _MODALITIES), "vocal channel": (channel, _CHANNELS),
              "emotion": (emotion, {f"{i:02d}" for i in range(1, 9)}),
              "intensity": (intensity, {"01", "02"}), "statement": (statement, {"01", "02"}),
              "repetition": (repetition, {"01", "02"}),
              "actor": (actor, {f"{i:02d}" for i in range(1, 25)})}
    for field, (code, known) in checks.items():
        if code not in known:
            raise ValueError(f"{name}: unknown {field} code {code!r} (expected one of {sorted(known)})")
    return RavdessFileName(modality, channel, emotion, intensity, statement, repetition, int(actor))


def find_actor_dirs(root: Path) -> list[Path]:
    """``Actor_XX`` folders under ``root`` (Zenodo) or ``root/audio_speech_actors_01-24`` (Kaggle).

    When both exist (the Kaggle download ships both copies) the top-level ones are used and the
    duplicate is ignored. Raises ``FileNotFoundError`` naming both expected places.
    """
    top = sorted(p for p in root.glob("Actor_*") if p.is_dir())
    nested = sorted(p for p in (root / KAGGLE_FOLDER).glob("Actor_*") if p.is_dir())
    if top and nested:
        log.info("ravdess: both %s/Actor_XX and %s/Actor_XX exist; using the first (the second is "
                 "the Kaggle duplicate)", root, root / KAGGLE_FOLDER)
    found = top or nested
    if not found:
        raise FileNotFoundError(
            f"ravdess: no Actor_XX folders in {root} (Zenodo layout) or {root / KAGGLE_FOLDER} "
            f"(Kaggle layout). Get the data with `audioml-data download ravdess`, set "
            f"AUDIOML_DATA_DIR / paths.data_dir to the folder holding ravdess/, or set data.root.")
    return found


def actor_split(labels: np.ndarray, actors: np.ndarray, val_fraction: float, test_fraction: float,
                seed: int, train_actors: list[int] | None = None, val_actors: list[int] | None = None,
                test_actors: list[int] | None = None) -> dict[str, np.ndarray]:
    """Speaker-independent train/val/test indices.

    Explicit lists win over fractions: ``test_actors`` (required then) and ``val_actors`` name
    their parts and ``train_actors`` defaults to every other actor. Without lists, whole actors are assigned by
    ``group_holdout_split`` (stratified by ``labels``). When validation would get no actor of
    its own (``val_actors`` empty, or only two actors in the data), it is a stratified random
    ``val_fraction`` of the training files instead: the test part stays speaker-independent,
    validation does not (logged).

    Raises ``ValueError`` for overlapping lists, actors not in the data, or fewer than two actors.
    """
    labels = np.asarray(labels)
    actors = np.asarray(actors)
    present = sorted(set(actors.tolist()))
    explicit = any(x is not None for x in (train_actors, val_actors, test_actors))
    if explicit:
        lists = {"train_actors": train_actors, "val_actors": val_actors or [], "test_actors": test_actors or []}
        for name, members in lists.items():
            unknown = sorted(set(members or []) - set(present))
            if unknown:
                raise ValueError(f"data.{name}={members}: actors {unknown} are not in the data "
                                 f"(present: {present})")
        if not lists["test_actors"]:
            raise ValueError(f"data.test_actors is empty while other actor lists are set ({lists}); "
                             "name the held-out test actors")
        named = [a for key in ("val_actors", "test_actors") for a in lists[key]]
        if len(named) != len(set(named)) or set(train_actors or []) & set(named):
            raise ValueError(f"data.train_actors/val_actors/test_actors overlap: {lists}")
        train_set = set(train_actors) if train_actors is not None else set(present) - set(named)
        if not train_set:
            raise ValueError(f"no training actors left after val/test lists {lists}")
        parts = {"train": np.flatnonzero(np.isin(actors, sorted(train_set))),
                 "val": np.flatnonzero(np.isin(actors, lists["val_actors"])),
                 "test": np.flatnonzero(np.isin(actors, lists["test_actors"]))}
    elif len(present) >= 3 or val_fraction == 0 or test_fraction == 0:
        return group_holdout_split(labels, actors, val_fraction, test_fraction, seed)
    elif len(present) == 2:
        bins = assign_groups(labels, actors, [1 - test_fraction, test_fraction], seed)
        parts = {"train": np.flatnonzero(bins == 0), "val": np.array([], dtype=int),
                 "test": np.flatnonzero(bins == 1)}
    else:
        raise ValueError(f"a speaker-independent split needs at least 2 actors, found {present}")
    if len(parts["val"]) == 0 and val_fraction > 0:
        train = parts["train"]
        inner = assign_groups(labels[train], np.arange(len(train)), [1 - val_fraction, val_fraction], seed + 1)
        parts["train"], parts["val"] = train[inner == 0], train[inner == 1]
        log.warning("ravdess: validation has no actor of its own; it is a random %.0f%% of the "
                    "training actors' files (the test part stays speaker-independent)", 100 * val_fraction)
    return parts


class RavdessDataModule(AudioDataModule):
    """RAVDESS speech: one of ``TASKS``, audio resampled to ``sample_rate`` and downmixed.

    Args:
        task: ``emotion`` | ``gender`` | ``statement`` | ``actor``.
        trim_db: trim leading/trailing parts quieter than ``trim_db`` below the peak
            (``librosa.effects.trim``) before padding/cropping; ``None`` keeps the whole file.
        train_actors, val_actors, test_actors: explicit actor numbers (1-24), see ``actor_split``;
            not allowed for ``task="actor"``.
        include_song: also read song files (vocal channel 02) if present; by default only the
            speech part is used.
        split: ``AudioDataModule``'s modes, or ``"emobox"``: fold ``fold`` (1-6) of EmoBox's
            published actor folds (``audioml.data.splits.emobox_ravdess_split``; set by
            ``evaluation=emobox``), validation from ``emobox_val_actors`` whole training actors
            (0: a random ``val_fraction`` of the training files, EmoBox's recipe).
        Other arguments: ``AudioDataModule``.
    """

    machine_arguments = ("cache_dir", "download")
    split_modes = (*SPLIT_MODES, "emobox")

    def __init__(self, root: str | Path, task: str = "emotion", clip_seconds: float = 4.0,
                 trim_db: float | None = None, train_actors: list[int] | None = None,
                 val_actors: list[int] | None = None, test_actors: list[int] | None = None,
                 include_song: bool = False, download: bool = False, emobox_val_actors: int = 2,
                 **kwargs) -> None:
        if task not in TASKS:
            raise ValueError(f"data.task={task!r}: use one of {list(TASKS)}")
        explicit = [x for x in (train_actors, val_actors, test_actors) if x is not None]
        if task == "actor" and explicit:
            raise ValueError("data.task=actor cannot be split by actor; leave train_actors, "
                             "val_actors and test_actors unset (the split is stratified per file)")
        super().__init__(root=root, clip_seconds=clip_seconds, trim_db=trim_db, **kwargs)
        if explicit and self.split_mode == "random":
            raise ValueError("data.split=random splits files, not actors: leave train_actors, val_actors and "
                             "test_actors unset, or use data.split=grouped")
        if self.split_mode == "emobox":
            if explicit or task == "actor":
                raise ValueError("data.split=emobox holds out EmoBox's actors of data.fold: leave train_actors, "
                                 "val_actors and test_actors unset, and use a task other than actor")
            if self.fold not in EMOBOX_RAVDESS_FOLDS:
                raise ValueError(f"data.split=emobox needs data.fold, EmoBox's fold number "
                                 f"({sorted(EMOBOX_RAVDESS_FOLDS)}), got {self.fold}; evaluation=emobox sets it")
        if int(emobox_val_actors) < 0:
            raise ValueError(f"data.emobox_val_actors={emobox_val_actors}: use 0 or more actors")
        self.emobox_val_actors = int(emobox_val_actors)
        self.task = "classification"
        self.label_task = task
        self.group_name = "file" if task == "actor" else "actor"
        self.train_actors = None if train_actors is None else [int(a) for a in train_actors]
        self.val_actors = None if val_actors is None else [int(a) for a in val_actors]
        self.test_actors = None if test_actors is None else [int(a) for a in test_actors]
        self.include_song = include_song
        self.download = download
        self._actor_classes: list[str] | None = None

    @property
    def class_names(self) -> list[str]:
        if self.label_task == "emotion":
            return list(EMOTIONS)
        if self.label_task == "gender":
            return list(GENDERS)
        if self.label_task == "statement":
            return list(STATEMENTS)
        if self._actor_classes is None:
            numbers = sorted(int(p.name.split("_")[-1]) for p in find_actor_dirs(self.root))
            self._actor_classes = [f"actor_{n:02d}" for n in numbers]
        return self._actor_classes

    def prepare_data(self) -> None:
        if self.download and not any(self.root.glob("Actor_*")) and not (self.root / KAGGLE_FOLDER).is_dir():
            from audioml.data.download import download_dataset

            download_dataset("ravdess", destination=self.root)
        self.check_root()

    def check_root(self) -> None:
        find_actor_dirs(self.root)

    def _target(self, fields: RavdessFileName) -> int:
        if self.label_task == "emotion":
            return int(fields.emotion) - 1
        if self.label_task == "gender":
            return GENDERS.index(fields.gender)
        if self.label_task == "statement":
            return int(fields.statement) - 1
        return self.class_names.index(f"actor_{fields.actor:02d}")

    def build_manifest(self) -> pd.DataFrame:
        rows, songs = [], 0
        for actor_dir in find_actor_dirs(self.root):
            for path in self.storable_paths(sorted(actor_dir.glob("*.wav"))):
                fields = parse_ravdess_filename(path.name)
                if f"Actor_{fields.actor:02d}" != actor_dir.name:
                    raise ValueError(f"{path}: actor field {fields.actor:02d} does not match its "
                                     f"folder {actor_dir.name}")
                if fields.vocal_channel == "02" and not self.include_song:
                    songs += 1
                    continue
                rows.append({"path": str(path), "target": self._target(fields),
                             "group": str(path) if self.label_task == "actor" else f"actor_{fields.actor:02d}",
                             "actor": fields.actor, "emotion": fields.emotion_name,
                             "intensity": "strong" if fields.intensity == "02" else "normal",
                             "statement": STATEMENTS[int(fields.statement) - 1],
                             "repetition": int(fields.repetition), "gender": fields.gender,
                             "vocal_channel": _CHANNELS[fields.vocal_channel]})
        if songs:
            log.info("ravdess: ignored %d song files (vocal channel 02); set data.include_song=true "
                     "to use them", songs)
        if not rows:
            raise FileNotFoundError(f"ravdess: no speech .wav files in the Actor_XX folders under {self.root}")
        return pd.DataFrame(rows)

    def split(self, manifest: pd.DataFrame) -> dict[str, np.ndarray]:
        labels = manifest["target"].to_numpy()
        if self.split_mode == "emobox":
            parts = emobox_ravdess_split(labels, manifest["actor"].to_numpy(), self.fold, self.emobox_val_actors,
                                         self.val_fraction, self.seed)
            if self.emobox_val_actors and set(manifest["actor"].iloc[parts["val"]]) & \
                    set(manifest["actor"].iloc[parts["train"]]):
                log.warning("ravdess: EmoBox fold %d has too few training actors for %d validation actors; "
                            "validation is a random %.0f%% of the training actors' files (the test part stays "
                            "speaker-independent)", self.fold, self.emobox_val_actors, 100 * self.val_fraction)
            return parts
        if self.label_task == "actor":
            if self.fold is not None:
                return super().split(manifest)
            return group_holdout_split(labels, np.arange(len(manifest)), self.val_fraction,
                                       self.test_fraction, self.seed)
        if self.fold is not None or self.split_mode == "random":
            return super().split(manifest)
        return actor_split(labels, manifest["actor"].to_numpy(), self.val_fraction, self.test_fraction,
                           self.seed, self.train_actors, self.val_actors, self.test_actors)
