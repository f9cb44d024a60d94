"""MuSe-Stress (Ulm-TSST): continuous valence/arousal every 500 ms, from a user-provided MuSe 2021
or 2022 challenge package (licensed by the organisers; nothing is downloaded).

The package is read as shipped (``raw_data/audio/``, ``label_segments/<target>/``,
``metadata/partition.csv``; layout: docs/guide/datasets.md#muse-stress). Each label row gets one
window of audio (:func:`window_starts`); an item is ``sequence_length`` consecutive windows of one
recording: ``(waveform (N, window_samples) float32, target (N, n_targets) float32)``."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from audioml.data.audio import AudioDecodeError
from audioml.data.base import AudioDataModule
from audioml.data.cache import WaveformCache, fingerprint_files, reopen, reopenable
from audioml.data.download import MUSE_INSTRUCTIONS

log = logging.getLogger(__name__)

__all__ = ["MuseDataModule", "SequenceDataset", "find_package", "read_partition", "read_labels",
           "label_folder", "window_starts", "cut_windows", "sequence_starts", "TARGET_FOLDERS"]

#: Target name -> label folders accepted, in order of preference (2022 name first).
TARGET_FOLDERS = {"valence": ("valence",), "arousal": ("physio-arousal", "arousal")}
PARTITIONS = {"train": "train", "devel": "val", "test": "test"}


def find_package(root: str | Path) -> Path:
    """The package folder: ``root`` itself when it has ``metadata/partition.csv``, else its one
    child that has. Raises ``FileNotFoundError`` with the licence and layout instructions."""
    root = Path(root)
    if (root / "metadata" / "partition.csv").is_file():
        return root
    candidates = sorted(p for p in root.iterdir() if (p / "metadata" / "partition.csv").is_file()) if root.is_dir() else []
    if len(candidates) == 1:
        return candidates[0]
    if len(candidates) > 1:
        raise FileNotFoundError(f"muse: several packages under {root}: {[c.name for c in candidates]}; "
                                f"set data.root to the one to use")
    raise FileNotFoundError(f"muse: no metadata/partition.csv in {root} or its subfolders. {MUSE_INSTRUCTIONS}")


def read_partition(package: Path) -> pd.DataFrame:
    """``metadata/partition.csv`` as columns ``id`` (str), ``partition`` (train/devel/test).
    Raises ``ValueError`` naming the file for missing columns or unknown partitions."""
    path = package / "metadata" / "partition.csv"
    table = pd.read_csv(path, dtype=str, skipinitialspace=True)
    table.columns = [c.strip().lower() for c in table.columns]
    if not {"id", "proposal"} <= set(table.columns):
        raise ValueError(f"{path}: expected columns Id, Proposal; found {list(table.columns)}")
    table = pd.DataFrame({"id": table["id"].str.strip(), "partition": table["proposal"].str.strip().str.lower()})
    unknown = sorted(set(table["partition"]) - set(PARTITIONS))
    if unknown:
        raise ValueError(f"{path}: unknown partitions {unknown} (expected {list(PARTITIONS)})")
    return table


def label_folder(package: Path, target: str) -> Path:
    """Folder of one target's label files (2022 or 2021 name). Raises ``FileNotFoundError``."""
    if target not in TARGET_FOLDERS:
        raise ValueError(f"data.targets: unknown target {target!r} (use {list(TARGET_FOLDERS)})")
    for name in TARGET_FOLDERS[target]:
        folder = package / "label_segments" / name
        if folder.is_dir():
            return folder
    expected = " or ".join(str(package / "label_segments" / n) for n in TARGET_FOLDERS[target])
    raise FileNotFoundError(f"muse: no label folder for {target}: expected {expected}")


def read_labels(path: Path) -> pd.DataFrame:
    """One label file as columns ``timestamp`` (int ms) and ``value`` (float), sorted, NaN rows
    dropped. Columns are found by name; ``subject_id`` / ``segment_id`` are ignored.
    Raises ``ValueError`` naming the file when ``timestamp`` or ``value`` is missing."""
    table = pd.read_csv(path, skipinitialspace=True)
    table.columns = [str(c).strip().lower() for c in table.columns]
    if not {"timestamp", "value"} <= set(table.columns):
        raise ValueError(f"{path}: expected columns timestamp and value; found {list(table.columns)}")
    table = table[["timestamp", "value"]].dropna()
    return table.astype({"timestamp": np.int64, "value": np.float32}).sort_values("timestamp").reset_index(drop=True)


def window_starts(timestamps_ms: np.ndarray, window_seconds: float, alignment: str, sample_rate: int) -> np.ndarray:
    """First sample of the window of each label time ``t`` (may be negative): ``alignment="start"``
    covers ``[t, t + window)`` (the windows of 500 ms labels tile the recording from 0), ``"end"``
    ``[t - window, t)``, ``"center"`` ``[t - window/2, t + window/2)``."""
    shift = {"start": 0.0, "end": -1.0, "center": -0.5}
    if alignment not in shift:
        raise ValueError(f"data.alignment={alignment!r}: use 'start', 'end' or 'center'")
    seconds = np.asarray(timestamps_ms, dtype=np.float64) / 1000.0 + shift[alignment] * window_seconds
    return np.round(seconds * sample_rate).astype(np.int64)


def cut_windows(audio: np.ndarray, starts: np.ndarray, window_samples: int) -> np.ndarray:
    """``(time,)`` audio -> ``(len(starts), window_samples)``; samples outside the audio are 0."""
    starts = np.asarray(starts, dtype=np.int64)
    if len(starts) == 0:
        return np.zeros((0, window_samples), dtype=np.float32)
    left = int(max(0, -starts.min()))
    right = int(max(0, starts.max() + window_samples - audio.shape[0]))
    padded = np.pad(audio, (left, right))
    index = (starts + left)[:, None] + np.arange(window_samples)[None, :]
    return padded[index].astype(np.float32, copy=False)


def sequence_starts(n_windows: int, length: int, stride: int) -> np.ndarray:
    """Window index where each sequence starts: every ``stride`` windows, plus one sequence
    ending at the last window when the stride leaves a tail; none when ``n_windows < length``."""
    if length < 1 or stride < 1:
        raise ValueError(f"sequence_length={length} and stride={stride} must be >= 1")
    if n_windows < length:
        return np.zeros(0, dtype=np.int64)
    starts = list(range(0, n_windows - length + 1, stride))
    if starts[-1] != n_windows - length:
        starts.append(n_windows - length)
    return np.asarray(starts, dtype=np.int64)


class SequenceDataset(Dataset):
    """Items ``(waveform (N, window_samples) float32, target (N, n_targets) float32)``: the
    ``N = length`` consecutive window rows starting at each of ``first_windows``."""

    def __init__(self, windows: np.ndarray, targets: np.ndarray, first_windows: np.ndarray, length: int) -> None:
        self.windows = windows
        self.targets = targets
        self.first_windows = np.asarray(first_windows, dtype=np.int64)
        self.length = int(length)

    def __len__(self) -> int:
        return len(self.first_windows)

    def __getstate__(self) -> dict:  # DataLoader workers reopen the memory-mapped cache by name
        return {**self.__dict__, "windows": reopenable(self.windows)}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({**state, "windows": reopen(state["windows"])})

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        first = self.first_windows[item]
        rows = slice(first, first + self.length)
        return (torch.from_numpy(np.array(self.windows[rows], dtype=np.float32)),
                torch.from_numpy(np.array(self.targets[rows], dtype=np.float32)))


class MuseDataModule(AudioDataModule):
    """MuSe-Stress sequences for ``SequenceRegressor`` models (``task = "regression"``).

    Args:
        root: the package folder (or a folder holding one ``c3_muse_stress*`` package).
        targets: subset of ``("valence", "arousal")``; the target order of the items.
        sample_rate: rate (Hz) the model declares; recordings are resampled to it.
        window_seconds: audio per label (0.5 s = the 500 ms label step).
        alignment: ``start`` | ``end`` | ``center`` (:func:`window_starts`).
        sequence_length: windows per item (40 = 20 s).
        stride: windows between training sequence starts; ``eval_stride`` for devel/test
            (default ``sequence_length``: no overlap except the last, end-aligned sequence).
        test_partition: ``auto`` (test when its labels exist, else devel; logged), ``test``,
            or ``devel``.
        batch_size, num_workers, seed, cache_dir: as ``AudioDataModule``.
        fold, num_folds: accepted so that ``evaluation=kfold`` fails clearly; ``fold`` must be ``None``.

    ``statistics_batches()`` yields the distinct windows of the training sequences: the model
    computes its normalisation statistics from them through its own front end
    (``SequenceRegressor.fit_feature_statistics``), so they cannot disagree with it.
    """

    task = "regression"
    group_name = "recording"

    def __init__(self, root: str | Path, targets: list[str] | tuple[str, ...] = ("valence",),
                 sample_rate: int = 16000, window_seconds: float = 0.5, alignment: str = "start",
                 sequence_length: int = 40, stride: int = 20, eval_stride: int | None = None,
                 test_partition: str = "auto", batch_size: int = 16,
                 num_workers: int | str | None = "auto", seed: int = 0, cache_dir: str | Path | None = None,
                 persistent_workers: bool = True, fold: int | None = None, num_folds: int = 5) -> None:
        if fold is not None:
            raise ValueError("muse: the challenge partitions (metadata/partition.csv) define train/devel/test; "
                             "k-fold evaluation (evaluation=kfold, data.fold) does not apply")
        super().__init__(root=root, sample_rate=sample_rate, clip_seconds=window_seconds,
                         batch_size=batch_size, num_workers=num_workers, seed=seed, cache_dir=cache_dir,
                         persistent_workers=persistent_workers)
        targets = [targets] if isinstance(targets, str) else list(targets)
        unknown = [t for t in targets if t not in TARGET_FOLDERS]
        if not targets or unknown or len(set(targets)) != len(targets):
            raise ValueError(f"data.targets={targets}: use a list of distinct names from {list(TARGET_FOLDERS)}")
        if test_partition not in ("auto", "test", "devel"):
            raise ValueError(f"data.test_partition={test_partition!r}: use 'auto', 'test' or 'devel'")
        window_starts(np.zeros(1), window_seconds, alignment, self.sample_rate)  # validates alignment
        self.targets = targets
        self.window_seconds = float(window_seconds)
        self.alignment = alignment
        self.sequence_length = int(sequence_length)
        self.stride = int(stride)
        self.eval_stride = int(eval_stride) if eval_stride else self.sequence_length
        sequence_starts(self.sequence_length, self.sequence_length, self.stride)  # validates lengths
        self.test_partition = test_partition
        self.windows: pd.DataFrame | None = None
        self._window_targets: np.ndarray | None = None
        self._test_is_devel = False

    @property
    def class_names(self) -> list[str]:
        """Target names, in target order."""
        return list(self.targets)

    @property
    def window_samples(self) -> int:
        return self.num_samples

    def check_root(self) -> None:
        find_package(self.root)

    def build_manifest(self) -> pd.DataFrame:
        """Window table: one row per label time with columns ``recording``, ``path``, ``partition``,
        ``timestamp`` (ms) and one column per target (this DataModule's manifest is of sequences,
        built in ``setup``)."""
        package = find_package(self.root)
        partition = read_partition(package)
        folders = {t: label_folder(package, t) for t in self.targets}
        test_ids = partition.loc[partition["partition"] == "test", "id"].tolist()
        test_labelled = bool(test_ids) and all((folders[t] / f"{i}.csv").is_file() for i in test_ids for t in self.targets)
        use_test = {"auto": test_labelled, "test": True, "devel": False}[self.test_partition]
        if self.test_partition == "test" and not test_labelled:
            raise FileNotFoundError(f"muse: data.test_partition=test but the test labels are not in "
                                    f"{list(folders.values())} (the challenge withholds them); use 'auto' or 'devel'")
        if not use_test:
            log.warning("muse: %s; the devel partition is also the test split (as in challenge "
                        "papers, which report devel results)",
                        "test labels are withheld" if self.test_partition == "auto" else "data.test_partition=devel")
        self._test_is_devel = not use_test
        used = partition[partition["partition"].isin(["train", "devel"] + (["test"] if use_test else []))]
        audio_dir = package / "raw_data" / "audio"
        missing_audio = [str(audio_dir / f"{i}.wav") for i in used["id"] if not (audio_dir / f"{i}.wav").is_file()]
        if missing_audio:
            raise FileNotFoundError(f"muse: {len(missing_audio)} recordings of partition.csv have no audio "
                                    f"(e.g. {missing_audio[:3]}); the package is incomplete")
        frames = []
        for recording, split in used.itertuples(index=False):
            joined = None
            for target in self.targets:
                path = folders[target] / f"{recording}.csv"
                if not path.is_file():
                    raise FileNotFoundError(f"muse: {split} recording {recording} has no label file {path}")
                labels = read_labels(path).rename(columns={"value": target})
                joined = labels if joined is None else joined.merge(labels, on="timestamp", how="inner")
            joined.insert(0, "partition", split)
            joined.insert(0, "path", str(audio_dir / f"{recording}.wav"))
            joined.insert(0, "recording", recording)
            frames.append(joined)
        return pd.concat(frames, ignore_index=True)

    def setup(self, stage: str | None = None) -> None:
        if self.manifest is not None:
            return
        windows = self.build_manifest()
        waveforms, failures = self._decode_windows(windows)
        skipped, keep = [], np.ones(len(windows), dtype=bool)
        if failures:
            failed = pd.Series(failures)
            for recording, reasons in failed.groupby(windows["recording"].iloc[failed.index].to_numpy()):
                skipped.append({"path": windows.loc[reasons.index[0], "path"],
                                "reason": f"{len(reasons)} windows unusable: {reasons.iloc[0]}"})
            keep[list(failures)] = False
        rows = []
        window_rows = np.flatnonzero(keep)
        kept = windows.iloc[window_rows]
        for recording, group in kept.groupby("recording", sort=False):
            split = PARTITIONS[group["partition"].iloc[0]]
            positions = group.index.to_numpy()  # rows of `windows`
            contiguous = np.all(np.diff(positions) == 1)
            if not contiguous:  # a failed window in the middle: sequences must not jump over it
                skipped.append({"path": group["path"].iloc[0], "reason": "unusable windows inside the recording"})
                continue
            starts = sequence_starts(len(group), self.sequence_length,
                                     self.stride if split == "train" else self.eval_stride)
            if len(starts) == 0:
                skipped.append({"path": group["path"].iloc[0],
                                "reason": f"{len(group)} windows < data.sequence_length={self.sequence_length}"})
                continue
            timestamps = group["timestamp"].to_numpy()
            for start in starts:
                first = positions[start]
                rows.append({"path": group["path"].iloc[0], "group": recording, "recording": recording,
                             "partition": group["partition"].iloc[0], "split": split,
                             "first_window": int(first), "start_ms": int(timestamps[start]),
                             "end_ms": int(timestamps[start + self.sequence_length - 1])})
        if skipped:
            self.skipped = pd.DataFrame(skipped)
            log.warning("muse: skipped %d recordings or parts of them (see skipped_files.csv): %s",
                        len(skipped), "; ".join(f"{Path(s['path']).name}: {s['reason']}" for s in skipped[:5]))
        if not rows:
            raise ValueError(f"muse: no recording of {self.root} gives a sequence of "
                             f"{self.sequence_length} windows")
        manifest = pd.DataFrame(rows)
        targets = windows[self.targets].to_numpy(dtype=np.float32)
        manifest["target"] = [targets[f:f + self.sequence_length] for f in manifest["first_window"]]
        self.windows = windows
        self._waveforms = waveforms
        self._window_targets = targets
        self.manifest = manifest
        self.split_indices = {name: np.flatnonzero(manifest["split"] == name) for name in ("train", "val", "test")}
        if self._test_is_devel:
            self.split_indices["test"] = self.split_indices["val"]
        for name in ("train", "val"):
            if len(self.split_indices[name]) == 0:
                raise ValueError(f"muse: the {name} split has no sequence; check metadata/partition.csv")
        log.info("muse: %d windows, sequences per split %s, recordings per split %s", int(keep.sum()),
                 {k: len(v) for k, v in self.split_indices.items()},
                 {k: manifest["recording"].iloc[v].nunique() for k, v in self.split_indices.items()})

    def _decode_windows(self, windows: pd.DataFrame) -> tuple[np.ndarray, dict[int, str]]:
        """Every window's audio ``(n_windows, window_samples)``, each recording decoded once;
        cached under ``cache_dir``."""
        starts = window_starts(windows["timestamp"].to_numpy(), self.window_seconds, self.alignment, self.sample_rate)
        layout = hashlib.sha256(pd.util.hash_pandas_object(windows[["recording", "timestamp"]], index=False)
                                .to_numpy().tobytes()).hexdigest()
        settings = {"kind": "muse-windows", "sample_rate": self.sample_rate, "window_samples": self.window_samples,
                    "alignment": self.alignment, "windows": layout, "version": 1}
        cache = WaveformCache(self.cache_dir, fingerprint_files(sorted(windows["path"].unique()), settings))
        paths = windows["path"].to_numpy()
        current: dict[str, np.ndarray] = {}

        def decode(index: int) -> np.ndarray:
            path = paths[index]
            if path not in current:
                current.clear()
                current[path] = self.decoder.read(path)
            audio = current[path]
            start = starts[index]
            if start >= audio.shape[0] or start + self.window_samples <= 0:
                raise AudioDecodeError(f"window at {windows['timestamp'].iloc[index]} ms lies outside the "
                                       f"{audio.shape[0] / self.sample_rate:.2f} s of audio")
            return cut_windows(audio, np.array([start]), self.window_samples)[0]

        return cache.get_or_build(len(windows), self.window_samples, decode)

    # --------------------------------------------------------------------------- items, loaders
    def dataset(self, split: str) -> SequenceDataset:
        """Sequences of one split (``train``, ``val``, ``test`` or ``all``)."""
        if self.manifest is None:
            self.setup()
        indices = np.arange(len(self.manifest)) if split == "all" else self.split_indices[split]
        first = self.manifest["first_window"].to_numpy()[indices]
        return SequenceDataset(self._waveforms, self._window_targets, first, self.sequence_length)

    def train_windows(self) -> np.ndarray:
        """Row indices (into ``windows``) of every distinct window of the training sequences."""
        first = self.manifest["first_window"].to_numpy()[self.split_indices["train"]]
        return np.unique((first[:, None] + np.arange(self.sequence_length)[None, :]).ravel())

    def train_target_mean(self) -> np.ndarray:
        """Mean target ``(n_targets,)`` over the distinct windows of the training sequences (the
        mean-prediction baseline of the honest test scores)."""
        if self.manifest is None:
            self.setup()
        return self._window_targets[self.train_windows()].astype(np.float64).mean(axis=0)

    def statistics_batches(self, batch_size: int = 256) -> Iterator[torch.Tensor]:
        """The distinct windows of the training sequences as float32 ``(batch, window_samples)``
        batches: what the model's normalisation statistics are computed from (training split only)."""
        if self.manifest is None:
            self.setup()
        rows = self.train_windows()
        for begin in range(0, len(rows), batch_size):
            yield torch.from_numpy(np.array(self._waveforms[rows[begin:begin + batch_size]], dtype=np.float32))
