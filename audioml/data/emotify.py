"""Emotify: emotions induced by music, GEMS-9 (Aljanaki, Wiering & Veltkamp 2016).

Layout (``root`` = ``<data_dir>/emotify``)::

    data.csv                                  one row per listener x track
    emotifymusic/{classical,rock,electronic,pop}/{1..100}.mp3

Track ids 1-100 are classical, 101-200 rock, 201-300 electronic, 301-400 pop; the file number
is the id minus the genre's offset. Each track gets one label, its dominant emotion: the
emotion ticked by the most listeners; a tie goes to the emotion listed first in ``GEMS``
(the column order of data.csv). Tracks are cut into segments; every split is grouped by track.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from audioml.data.base import AudioDataModule

log = logging.getLogger(__name__)

__all__ = ["EmotifyDataModule", "GEMS", "GENRE_OFFSETS", "read_annotations", "track_emotions",
           "track_audio_path", "segment_offsets", "probe_duration", "check_annotations", "TRACK_IDS"]

#: The nine GEMS emotions in data.csv column order (also the tie-break order).
GEMS = ("amazement", "solemnity", "tenderness", "nostalgia", "calmness", "power",
        "joyful_activation", "tension", "sadness")
#: Genre folder -> offset of its track ids (file number = track id - offset).
GENRE_OFFSETS = {"classical": 0, "rock": 100, "electronic": 200, "pop": 300}
AUDIO_FOLDER = "emotifymusic"


def read_annotations(csv_path: str | Path) -> pd.DataFrame:
    """Read data.csv; header names are stripped (the file separates them with ``", "``).

    Raises ``ValueError`` naming the file when a required column is missing or an emotion
    value is not 0/1.
    """
    table = pd.read_csv(csv_path, skipinitialspace=True)
    table.columns = [str(c).strip() for c in table.columns]
    required = ["track id", "genre", *GEMS]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ValueError(f"{csv_path}: missing columns {missing} (found {list(table.columns)})")
    values = table[list(GEMS)]
    if not values.isin([0, 1]).all().all():
        bad = int((~values.isin([0, 1])).any(axis=1).to_numpy().argmax())
        raise ValueError(f"{csv_path}: row {bad + 2} has an emotion value other than 0/1")
    table["genre"] = table["genre"].astype(str).str.strip()
    return table


#: Track ids of the published data.csv: 100 per genre.
TRACK_IDS = range(1, 401)


def check_annotations(csv_path: str | Path) -> None:
    """Raise ``ValueError`` unless ``csv_path`` is the whole published data.csv: the checks of
    ``read_annotations`` (an HTML page has none of its columns) and every one of the 400 tracks
    (a transfer cut at a line boundary keeps the format but loses tracks, and with them whole
    classes). ``audioml-data download emotify`` runs it before installing the file."""
    try:
        table = read_annotations(csv_path)
    except UnicodeDecodeError as error:
        raise ValueError(f"{csv_path}: not a text table ({error})") from None
    found = set(pd.to_numeric(table["track id"], errors="coerce").dropna().astype(int))
    missing = sorted(set(TRACK_IDS) - found)
    if missing:
        raise ValueError(f"{csv_path} holds {len(TRACK_IDS) - len(missing)} of the {len(TRACK_IDS)} tracks "
                         f"(first missing: {missing[:5]}): the file is incomplete")


def track_audio_path(track_id: int, genre: str) -> str:
    """Relative audio path ``emotifymusic/<genre>/<n>.mp3`` of a track id.

    Raises ``ValueError`` when the genre is unknown or the id is outside the genre's range.
    """
    if genre not in GENRE_OFFSETS:
        raise ValueError(f"track {track_id}: unknown genre {genre!r} (expected {list(GENRE_OFFSETS)})")
    number = int(track_id) - GENRE_OFFSETS[genre]
    if not 1 <= number <= 100:
        raise ValueError(f"track {track_id}: id outside the {genre} range "
                         f"{GENRE_OFFSETS[genre] + 1}-{GENRE_OFFSETS[genre] + 100}")
    return f"{AUDIO_FOLDER}/{genre}/{number}.mp3"


def track_emotions(annotations: pd.DataFrame) -> pd.DataFrame:
    """Per-track table, index ``track id``, sorted.

    Columns: ``genre``, ``n_listeners``, ``count_<emotion>`` (listeners who ticked it),
    ``frac_<emotion>`` (fraction of the track's listeners who ticked it; rows need not sum to 1,
    a listener ticks up to three), ``dominant`` (emotion name; most ticks, ties to the first in
    ``GEMS``). Raises ``ValueError`` when a track has two genres or no ticks at all.
    """
    grouped = annotations.groupby("track id", sort=True)
    genres = grouped["genre"].agg(lambda g: sorted(set(g)))
    mixed = genres[genres.map(len) > 1]
    if len(mixed):
        raise ValueError(f"data.csv: track {mixed.index[0]} is listed under genres {mixed.iloc[0]}")
    counts = grouped[list(GEMS)].sum()
    listeners = grouped.size()
    totals = counts.to_numpy()
    if (totals.sum(axis=1) == 0).any():
        raise ValueError(f"data.csv: track {counts.index[totals.sum(axis=1) == 0][0]} has no ticked emotion")
    table = pd.DataFrame({"genre": genres.map(lambda g: g[0]), "n_listeners": listeners})
    for index, emotion in enumerate(GEMS):
        table[f"count_{emotion}"] = totals[:, index]
        table[f"frac_{emotion}"] = totals[:, index] / listeners.to_numpy()
    table["dominant"] = [GEMS[i] for i in totals.argmax(axis=1)]  # argmax: first maximum wins
    return table


def segment_offsets(duration: float, segment_seconds: float, hop_seconds: float) -> list[float]:
    """Start times (s) of the segments of a track of ``duration`` seconds.

    Segments that fit completely are kept; a track shorter than one segment gives one segment
    at 0 (padded later). ``floor((duration - segment) / hop) + 1`` segments otherwise.
    """
    if segment_seconds <= 0 or hop_seconds <= 0:
        raise ValueError(f"segment_seconds={segment_seconds} and hop_seconds={hop_seconds} must be > 0")
    if duration < segment_seconds:
        return [0.0]
    count = int(np.floor((duration - segment_seconds) / hop_seconds + 1e-6)) + 1
    return [round(i * hop_seconds, 6) for i in range(count)]


def probe_duration(path: str | Path) -> float:
    """Duration (s) from the container header (no full decode). Raises ``RuntimeError`` when
    the file cannot be opened or states no duration."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.audio[0]
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            if container.duration is not None:
                return container.duration / 1_000_000
    except Exception as error:  # PyAV raises many types; the caller records the file as unreadable
        raise RuntimeError(f"{path}: cannot open ({type(error).__name__}: {error})") from error
    raise RuntimeError(f"{path}: header states no duration")


class EmotifyDataModule(AudioDataModule):
    """Emotify segments labelled with their track's dominant emotion (or its distribution).

    Args:
        segment_seconds: segment length; also the clip length.
        hop_seconds: distance between segment starts (``None`` = ``segment_seconds``).
        min_tracks_per_class: emotions that are the dominant one of fewer tracks (counted over
            every track of data.csv, present audio or not) are dropped with their tracks.
        soft_labels: target = the track's emotion distribution over the kept classes
            (``count / sum of counts``, float32 ``(num_classes,)``) instead of the class id.
        allow_missing: continue on the present MP3s when some are missing (listed in
            ``skipped``); by default a missing file is an error.
        fold, num_folds: cross-validation fold (grouped by track); default fold 0 of 5.
        Other arguments: ``AudioDataModule``.
    """

    group_name = "track"
    machine_arguments = ("cache_dir", "download")

    def __init__(self, root: str | Path, segment_seconds: float = 15.0, hop_seconds: float | None = None,
                 min_tracks_per_class: int = 10, soft_labels: bool = False, allow_missing: bool = False,
                 fold: int | None = 0, num_folds: int = 5, download: bool = False, **kwargs) -> None:
        super().__init__(root=root, clip_seconds=segment_seconds, fold=fold, num_folds=num_folds, **kwargs)
        self.segment_seconds = float(segment_seconds)
        self.hop_seconds = float(hop_seconds) if hop_seconds else self.segment_seconds
        self.min_tracks_per_class = int(min_tracks_per_class)
        self.soft_labels = soft_labels
        self.allow_missing = allow_missing
        self.download = download
        self._tracks: pd.DataFrame | None = None
        self._classes: list[str] | None = None

    @property
    def csv_path(self) -> Path:
        return self.root / "data.csv"

    def check_root(self) -> None:
        if not self.csv_path.is_file() or not (self.root / AUDIO_FOLDER).is_dir():
            raise FileNotFoundError(
                f"emotify: expected {self.csv_path} and {self.root / AUDIO_FOLDER}/<genre>/<n>.mp3. "
                f"Get them with `audioml-data download emotify` (publisher: Utrecht University), "
                f"set AUDIOML_DATA_DIR / paths.data_dir to the folder holding emotify/, or set data.root.")

    def prepare_data(self) -> None:
        if self.download and not self.csv_path.is_file():
            from audioml.data.download import download_dataset

            download_dataset("emotify", destination=self.root)
        self.check_root()

    def tracks(self) -> pd.DataFrame:
        """Per-track emotions (``track_emotions``) of every annotated track, plus ``path``."""
        if self._tracks is None:
            self.check_root()
            tracks = track_emotions(read_annotations(self.csv_path))
            tracks["path"] = [str(self.root / track_audio_path(t, g)) for t, g in zip(tracks.index, tracks["genre"])]
            self._tracks = tracks
        return self._tracks

    @property
    def class_names(self) -> list[str]:
        if self._classes is None:
            per_class = self.tracks()["dominant"].value_counts()
            dropped = [e for e in GEMS if 0 < per_class.get(e, 0) < self.min_tracks_per_class]
            self._classes = [e for e in GEMS if per_class.get(e, 0) >= self.min_tracks_per_class]
            if dropped:
                log.info("emotify: dropped classes with fewer than %d tracks: %s", self.min_tracks_per_class,
                         {e: int(per_class[e]) for e in dropped})
            if len(self._classes) < 2:
                raise ValueError(f"emotify: data.min_tracks_per_class={self.min_tracks_per_class} leaves "
                                 f"{self._classes}; lower it")
        return self._classes

    def build_manifest(self) -> pd.DataFrame:
        classes = self.class_names
        tracks = self.tracks()
        tracks = tracks[tracks["dominant"].isin(classes)]
        present = np.array([Path(p).is_file() for p in tracks["path"]])
        if not present.all():
            absent = tracks.loc[~present, "path"].tolist()
            names = [str(Path(p).relative_to(self.root)) for p in absent]
            if not self.allow_missing:
                raise FileNotFoundError(
                    f"emotify: {len(absent)} of {len(tracks)} tracks in data.csv have no audio file "
                    f"(e.g. {', '.join(names[:5])}). Download the full emotifymusic.zip "
                    f"(`audioml-data download emotify`) or set data.allow_missing=true to use the "
                    f"{int(present.sum())} present tracks.")
            log.warning("emotify: %d of %d tracks have no audio file, continuing on %d (first missing: %s)",
                        len(absent), len(tracks), int(present.sum()), ", ".join(names[:5]))
            self.missing = pd.DataFrame({"path": absent, "reason": "missing audio file"})
            tracks = tracks[present]
        if tracks.empty:
            raise FileNotFoundError(f"emotify: no audio files for the tracks of data.csv under {self.root / AUDIO_FOLDER}")
        counts = tracks[[f"count_{e}" for e in classes]].to_numpy(dtype=np.float64)
        distribution = (counts / counts.sum(axis=1, keepdims=True)).astype(np.float32)
        rows = []
        for position, (track_id, track) in enumerate(tracks.iterrows()):
            label = classes.index(track["dominant"])
            try:
                duration = probe_duration(track["path"])
                offsets = segment_offsets(duration, self.segment_seconds, self.hop_seconds)
            except RuntimeError as error:  # unreadable: one row, so decoding lists it in `skipped`
                log.warning("emotify: %s", error)
                duration, offsets = float("nan"), [0.0]
            for segment, offset in enumerate(offsets):
                rows.append({"path": track["path"], "target": distribution[position] if self.soft_labels else label,
                             "group": int(track_id), "offset": offset, "duration": self.segment_seconds,
                             "track_id": int(track_id), "segment": segment, "genre": track["genre"],
                             "emotion": track["dominant"], "label": label, "track_seconds": duration,
                             "n_listeners": int(track["n_listeners"]),
                             **{f"frac_{e}": float(track[f"frac_{e}"]) for e in GEMS}})
        return pd.DataFrame(rows)

    def stratify_labels(self, manifest: pd.DataFrame) -> np.ndarray:
        return manifest["label"].to_numpy()
