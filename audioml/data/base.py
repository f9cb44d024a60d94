"""Shared machinery of every audio DataModule: manifest -> decoded cache -> splits -> loaders.

A dataset subclass only says what its files are (``build_manifest``) and what its classes are;
decoding, bad-file accounting, splitting and batching live here once.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from audioml.data.audio import AUDIO_EXTENSIONS, AudioDecodeError
from audioml.data.cache import WaveformCache, fingerprint_files, reopen, reopenable
from audioml.data.decoder import ClipDecoder
from audioml.data.resumable import EpochRandomSampler, EpochWeightedRandomSampler, ResumableDataLoader
from audioml.data.splits import SPLIT_MODE_HINTS, SPLIT_MODES, group_holdout_split, holdout_from_kfold, split_groups
from audioml.files import printable_path, storable_path

if TYPE_CHECKING:
    from audioml.augment.offline import OfflineAugmentation

log = logging.getLogger(__name__)

__all__ = ["AudioDataModule", "WaveformDataset", "MANIFEST_COLUMNS", "NoUsableFilesError"]

#: Columns every manifest has; datasets add their own metadata columns.
MANIFEST_COLUMNS = ("path", "target", "group")


class NoUsableFilesError(ValueError):
    """Every file of a dataset was skipped; ``skipped`` lists them with the reasons."""

    def __init__(self, message: str, skipped: pd.DataFrame) -> None:
        super().__init__(message)
        self.skipped = skipped


class WaveformDataset(Dataset):
    """Items ``(waveform (num_samples,) float32, target)`` from a cached waveform array.

    ``targets`` holds class ids ``(n,)`` int64 or soft/continuous targets ``(n, d)`` float32.
    """

    def __init__(self, waveforms: np.ndarray, targets: np.ndarray, indices: np.ndarray) -> None:
        self.waveforms = waveforms
        self.targets = targets
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = self.indices[item]
        waveform = torch.from_numpy(np.array(self.waveforms[index], dtype=np.float32))
        return waveform, torch.as_tensor(self.targets[index])


class BatchedWaveformDataset(WaveformDataset):
    """``WaveformDataset`` that DataLoader reads a batch at a time (``__getitems__``): one
    gather from the cache instead of a copy per clip plus a stack. Its loader needs
    ``collate_fn=collate_waveforms``; ``AudioDataModule`` loaders use it."""

    def __getitems__(self, items: list[int]) -> WaveformBatch:
        """``(waveforms (batch, num_samples), targets)``: the tensors that collating the items
        would give."""
        rows = self.indices[np.asarray(items, dtype=np.int64)]
        gather = getattr(self.waveforms, "gather", None)
        waveforms = gather(rows) if gather is not None else np.asarray(self.waveforms[rows], dtype=np.float32)
        return WaveformBatch((torch.from_numpy(np.ascontiguousarray(waveforms, dtype=np.float32)),
                              torch.as_tensor(self.targets[rows])))


class WaveformBatch(tuple):
    """``(waveforms, targets)`` already batched by ``BatchedWaveformDataset.__getitems__``."""


def collate_waveforms(batch):
    """DataLoader ``collate_fn``: passes a ``WaveformBatch`` through, collates anything else with
    ``default_collate``."""
    if isinstance(batch, WaveformBatch):
        return list(batch)
    return default_collate(batch)


class AudioDataModule(L.LightningDataModule, ABC):
    """Base DataModule over a manifest of audio files with grouped, stratified splits.

    Args:
        root: dataset folder in its publisher's layout.
        sample_rate: rate (Hz) the model declares; audio is resampled to it.
        clip_seconds: fixed length every clip is padded/cropped to.
        batch_size: DataLoader batch size.
        num_workers: DataLoader worker processes, or ``"auto"``/``None`` for
            ``default_num_workers`` (0 on CPU, a few on CUDA). ``pin_memory`` is on when the
            trainer's device is CUDA; workers are persistent when ``persistent_workers``.
        val_fraction, test_fraction: holdout fractions (grouped, stratified).
        split: ``"grouped"`` (default: no group, e.g. a baby or an actor, in two parts) or
            ``"random"`` (stratified per file, groups shared between parts: the protocol of
            studies that split files at random, for comparison with theirs).
        seed: split seed; the same seed always gives the same split.
        fold, num_folds: when ``fold`` is set, the test part is fold ``fold`` of a grouped
            ``num_folds``-fold partition and validation is carved from the rest.
        balance: ``None``, ``"sampler"`` (WeightedRandomSampler, inverse class frequency) or
            ``"oversample"`` (minority clips repeated up to the majority count).
        min_seconds: clips shorter than this are skipped (counted and listed).
        cache_dir: where decoded waveforms are cached; ``None`` decodes into memory each run.
        pad_mode: ``"start"`` or ``"center"`` crop/pad.
        trim_db: trim leading/trailing audio quieter than this many dB below the peak before
            padding/cropping (``None``: keep the whole file). With ``sample_rate``,
            ``clip_seconds``, ``pad_mode`` and ``min_seconds`` it makes the ``decoder``
            (``audioml.data.decoder.ClipDecoder``) that checkpoints carry to predict.
        offline_augmentation: an ``audioml.augment.OfflineAugmentation``; after splitting, its
            copies of the training clips (only those) are appended to the manifest (column
            ``augmented_copy`` = copy number, 0 for originals) and to the training split.
    """

    task: str = "classification"
    #: Name of the grouping column, shown in logs (uuid, actor, track).
    group_name: str = "group"
    #: Optional coarser view of the classes for reporting, ``{coarse name: [class names]}``
    #: (e.g. hungry vs not_hungry); the test predictions are also scored on it.
    collapse: dict[str, list[str]] | None = None
    #: Values ``data.split`` accepts (subclasses with a given split add theirs).
    split_modes: tuple[str, ...] = SPLIT_MODES
    #: Constructor arguments that act on the machine (where files are written, whether anything
    #: is downloaded): a checkpoint's data record never sets them (``audioml.run.use.checkpoint``).
    machine_arguments: tuple[str, ...] = ("cache_dir",)

    def __init__(self, root: str | Path, sample_rate: int = 16000, clip_seconds: float = 5.0,
                 batch_size: int = 32, num_workers: int | str | None = "auto", val_fraction: float = 0.15,
                 test_fraction: float = 0.15, seed: int = 0, fold: int | None = None,
                 num_folds: int = 5, balance: str | None = None, min_seconds: float = 0.0,
                 cache_dir: str | Path | None = None, pad_mode: str = "start", trim_db: float | None = None,
                 persistent_workers: bool = True, offline_augmentation: OfflineAugmentation | None = None,
                 split: str = "grouped") -> None:
        super().__init__()
        if balance not in (None, "none", "sampler", "oversample"):
            raise ValueError(f"data.balance={balance!r}: use null, 'sampler' or 'oversample'")
        if split not in self.split_modes:
            raise ValueError(f"data.split={split!r}: {type(self).__name__} splits {list(self.split_modes)}"
                             + SPLIT_MODE_HINTS.get(split, ""))
        self.split_mode = split
        self.root = Path(root).expanduser()
        #: How every file becomes a clip (validates the rate, length, padding and trimming).
        self.decoder = ClipDecoder(sample_rate, clip_seconds, pad_mode, trim_db, min_seconds)
        self.sample_rate = self.decoder.sample_rate
        self.clip_seconds = self.decoder.clip_seconds
        self.batch_size = int(batch_size)
        if num_workers not in (None, "auto") and (not str(num_workers).isdigit()):
            raise ValueError(f"data.num_workers={num_workers!r}: use a count >= 0 or 'auto'")
        self.num_workers = None if num_workers in (None, "auto") else int(num_workers)
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.seed = int(seed)
        self.fold = None if fold is None else int(fold)
        self.num_folds = int(num_folds)
        self.balance = None if balance == "none" else balance
        self.min_seconds = self.decoder.min_seconds
        self.cache_dir = None if cache_dir is None else Path(cache_dir).expanduser()
        self.pad_mode = self.decoder.pad_mode
        self.trim_db = self.decoder.trim_db
        self.persistent_workers = persistent_workers
        self.offline_augmentation = offline_augmentation
        self._offline_copies: np.ndarray | None = None
        self.manifest: pd.DataFrame | None = None
        self.skipped: pd.DataFrame = pd.DataFrame(columns=["path", "reason"])
        #: Rows ``build_manifest`` left out because their file is absent (with ``allow_missing``):
        #: listed first in ``skipped``.
        self.missing: pd.DataFrame = pd.DataFrame(columns=["path", "reason"])
        #: Files and folders ``build_manifest`` left out because their name is not valid UTF-8
        #: (``storable_paths``): printable name -> reason; listed in ``skipped`` after ``missing``.
        self.unstorable_names: dict[str, str] = {}
        self.split_indices: dict[str, np.ndarray] = {}
        self._waveforms: np.ndarray | None = None
        #: The WaveformCache of the last ``setup`` (key, ``status``, ``decode_calls``).
        self.waveform_cache: WaveformCache | None = None
        self._targets: np.ndarray | None = None

    # ----------------------------------------------------------------- dataset-specific parts
    @property
    @abstractmethod
    def class_names(self) -> list[str]:
        """Names of the classes (classification) or targets (regression), in target order."""

    @abstractmethod
    def build_manifest(self) -> pd.DataFrame:
        """Table with at least ``path``, ``target``, ``group``; optional ``offset``/``duration``
        (seconds) for segments of longer files. Raises ``FileNotFoundError`` naming missing paths."""

    def storable_paths(self, paths: Iterable[Path], kind: str = "file") -> list[Path]:
        """``paths`` without those whose name is not valid UTF-8 (copied from a system with
        another file-name encoding). No table, log or CSV can hold such a name, so instead of
        failing the whole dataset each one is left out with a warning and listed in ``skipped``
        under its name with escapes (``\\xff``). Manifest builders that list folders call it
        before they parse or store a name."""
        kept, left_out = [], []
        for path in paths:
            if storable_path(path):
                kept.append(path)
                continue
            name = printable_path(path)
            if name not in self.unstorable_names:  # warned once, however often the folder is listed
                left_out.append(name)
            self.unstorable_names[name] = f"{kind} name is not valid UTF-8: rename it to use the {kind}"
        if left_out:
            log.warning("%s: left out %d %ss whose names are not valid UTF-8 (rename them; listed in "
                        "skipped_files.csv): %s", type(self).__name__, len(left_out), kind, ", ".join(left_out[:5]))
        return kept

    def audio_files(self, folder: Path, recursive: bool = False) -> tuple[list[Path], list[Path]]:
        """``(audio files, other files)`` in ``folder`` (sorted; ``recursive``: below it too), by
        extension in any letter case (``AUDIO_EXTENSIONS``). Hidden entries are left out; names
        that are not UTF-8 are listed in ``skipped`` (``storable_paths``); so is a folder named like
        an audio file (``x.wav/``, ``a folder, not a file``): never dropped without a word."""
        entries = sorted(folder.rglob("*") if recursive else folder.iterdir())
        audio, other, folders = [], [], []
        for path in self.storable_paths(p for p in entries if not p.name.startswith(".")):
            is_audio_name = path.suffix.lower() in AUDIO_EXTENSIONS
            if path.is_dir() and not path.is_symlink():
                if is_audio_name:
                    folders.append(path)
                continue
            (audio if is_audio_name else other).append(path)
        if folders:
            log.warning("%s: %d folders named like audio files are not clips, listed in skipped_files.csv: %s",
                        type(self).__name__, len(folders), ", ".join(printable_path(p) for p in folders[:5]))
            self.missing = pd.concat([self.missing, pd.DataFrame({"path": [printable_path(p) for p in folders],
                                                                  "reason": "a folder, not a file"})],
                                     ignore_index=True).drop_duplicates("path")
        return audio, other

    def statistics_batches(self) -> Iterator[torch.Tensor] | None:
        """Training batches a model computes its normalisation statistics from
        (``AudioModule.fit_feature_statistics``), or ``None`` when the data offers none."""
        return None

    def check_root(self) -> None:
        """Raise ``FileNotFoundError`` naming the expected path when the data is not there."""
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"dataset folder {self.root} does not exist. Download the data "
                f"(`audioml-data download <name>`), set AUDIOML_DATA_DIR / paths.data_dir to the "
                f"folder that holds it, or point data.root at it.")

    def split(self, manifest: pd.DataFrame) -> dict[str, np.ndarray]:
        """Indices of train/val/test, stratified by target; grouped by ``manifest.group``
        unless ``data.split=random``."""
        labels = self.stratify_labels(manifest)
        groups = split_groups(manifest["group"].to_numpy(), "random" if self.split_mode == "random" else "grouped")
        if self.fold is not None:
            return holdout_from_kfold(labels, groups, self.num_folds, self.fold, self.val_fraction, self.seed)
        return group_holdout_split(labels, groups, self.val_fraction, self.test_fraction, self.seed)

    def stratify_labels(self, manifest: pd.DataFrame) -> np.ndarray:
        """Labels used to stratify splits (class ids; subclasses with soft targets override)."""
        return manifest["target"].to_numpy()

    # ------------------------------------------------------------------------ common machinery
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_samples(self) -> int:
        return int(round(self.clip_seconds * self.sample_rate))

    def prepare_data(self) -> None:
        self.check_root()

    def setup(self, stage: str | None = None) -> None:
        if self.manifest is not None:
            return
        self.check_root()
        manifest = self.build_manifest().reset_index(drop=True)
        missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
        if missing:
            raise ValueError(f"{type(self).__name__}.build_manifest() lacks columns {missing}")
        if manifest.empty:
            raise FileNotFoundError(f"no audio files found under {self.root}")
        waveforms, failures = self._decode_all(manifest)
        if failures:
            self.skipped = pd.DataFrame(
                {"path": [manifest.loc[i, "path"] for i in failures], "reason": list(failures.values())})
        left_out = [frame for frame in (self.missing, pd.DataFrame({"path": list(self.unstorable_names),
                                                                    "reason": list(self.unstorable_names.values())}))
                    if len(frame)]
        if left_out:
            self.skipped = pd.concat([*left_out, self.skipped], ignore_index=True)
        if failures:
            log.warning("skipped %d of %d files that could not be used (see skipped_files.csv): %s",
                        len(failures), len(manifest),
                        "; ".join(f"{Path(p).name}: {r}" for p, r in self.skipped.head(5).itertuples(index=False)))
            keep = np.setdiff1d(np.arange(len(manifest)), np.fromiter(failures, dtype=int))
        else:
            keep = np.arange(len(manifest))
        if len(keep) == 0:
            raise NoUsableFilesError(f"no usable files in {self.root}: all {len(manifest)} were skipped "
                                     "(see skipped_files.csv for why each one)", self.skipped)
        self.manifest = manifest.iloc[keep].reset_index(drop=True)
        self._rows = keep  # manifest row -> cache row
        self._waveforms = waveforms
        self._targets = self._target_array(self.manifest)
        self.split_indices = self.split(self.manifest)
        if self.offline_augmentation is not None:
            self._append_offline_copies()
        sizes = {name: len(idx) for name, idx in self.split_indices.items()}
        groups = {name: self.manifest["group"].iloc[idx].nunique() for name, idx in self.split_indices.items()}
        log.info("%s: %d clips, splits %s, %ss per split %s", type(self).__name__, len(self.manifest),
                 sizes, self.group_name, groups)

    def _append_offline_copies(self) -> None:
        """Augment the training clips (never val/test) and append the copies as training rows."""
        train = self.split_indices["train"]
        labels = self._targets[train]
        labels = labels.argmax(axis=1) if labels.ndim > 1 else labels
        originals = np.stack([self._waveforms[self._rows[i]] for i in train]) if len(train) else \
            np.zeros((0, self.num_samples), np.float32)
        copies, source, copy_number = self.offline_augmentation.augment(
            originals, labels, self.class_names, self.cache_dir)
        rows = train[source]
        first = len(self.manifest)
        self.manifest = pd.concat([self.manifest.assign(augmented_copy=0),
                                   self.manifest.iloc[rows].assign(augmented_copy=copy_number)],
                                  ignore_index=True)
        self._targets = np.concatenate([self._targets, self._targets[rows]])
        self._offline_copies = copies
        self.split_indices["train"] = np.concatenate([train, first + np.arange(len(rows))])

    def _target_array(self, manifest: pd.DataFrame) -> np.ndarray:
        first = manifest["target"].iloc[0]
        if np.ndim(first) == 0 and self.task == "classification":
            return manifest["target"].to_numpy(dtype=np.int64)
        return np.stack([np.asarray(t, dtype=np.float32) for t in manifest["target"]])

    def _decode_all(self, manifest: pd.DataFrame) -> tuple[np.ndarray, dict[int, str]]:
        has_offset = "offset" in manifest.columns
        settings = {**self.decoder.settings(), "num_samples": self.num_samples,
                    "segments": manifest[["offset", "duration"]].to_numpy().tolist() if has_offset else None,
                    "version": 2}
        cache = WaveformCache(self.cache_dir, fingerprint_files(manifest["path"].tolist(), settings))
        self.waveform_cache = cache
        # Segments of one file are consecutive rows: decode the whole file once, slice each segment.
        last_file: dict[str, np.ndarray] = {}

        def whole_file(path: str) -> np.ndarray:
            if path not in last_file:
                last_file.clear()
                last_file[path] = self.decoder.read(path)
            return last_file[path]

        def decode(index: int) -> np.ndarray:
            row = manifest.iloc[index]
            if not has_offset:
                return self.decoder(row["path"])
            start = int(round(float(row["offset"]) * self.sample_rate))
            duration = float(row["duration"])
            stop = None if np.isnan(duration) else start + int(round(duration * self.sample_rate))
            audio = whole_file(row["path"])[start:stop]
            if audio.shape[0] == 0:
                raise AudioDecodeError(f"{row['path']}: segment at {row['offset']} s is past the end")
            return self.decoder.finish(audio)

        return cache.get_or_build(len(manifest), self.num_samples, decode)

    def dataset(self, split: str) -> WaveformDataset:
        """Dataset of one split (``train``, ``val``, ``test``, or ``all``)."""
        if self.manifest is None:
            self.setup()
        indices = np.arange(len(self.manifest)) if split == "all" else self.split_indices[split]
        return WaveformDataset(_RowView(self._waveforms, self._rows, self._offline_copies), self._targets,
                               indices)

    def split_manifest(self, split: str) -> pd.DataFrame:
        """Manifest rows of one split, in loader order."""
        if self.manifest is None:
            self.setup()
        return self.manifest.iloc[self.split_indices[split]].reset_index(drop=True)

    def train_class_counts(self) -> list[int]:
        """Clips per class in the training split (for class weights and samplers)."""
        if self.task != "classification":
            return []
        labels = self._targets[self.split_indices["train"]]
        if labels.ndim > 1:  # soft labels: count the dominant class
            labels = labels.argmax(axis=1)
        return np.bincount(labels, minlength=self.num_classes).astype(int).tolist()

    def train_target_mean(self) -> np.ndarray:
        """Mean regression target of the training split, per target (the mean-prediction
        baseline of the honest test scores)."""
        if self.manifest is None:
            self.setup()
        targets = np.asarray(self._targets[self.split_indices["train"]], dtype=np.float64)
        return targets.reshape(len(targets), -1).mean(axis=0)

    def train_sample_weights(self) -> np.ndarray:
        """Per-training-clip sampling weights: inverse frequency of its class."""
        counts = np.asarray(self.train_class_counts(), dtype=float)
        labels = self._targets[self.split_indices["train"]]
        if labels.ndim > 1:
            labels = labels.argmax(axis=1)
        return 1.0 / np.maximum(counts[labels], 1.0)

    def _loader(self, dataset: Dataset, shuffle: bool, sampler=None, resumable: bool = False) -> DataLoader:
        trainer = getattr(self, "trainer", None)
        device_type = (trainer.strategy.root_device.type if trainer is not None
                       else "cuda" if torch.cuda.is_available() else "cpu")
        workers = default_num_workers(device_type) if self.num_workers is None else self.num_workers
        # resumable: the epoch position travels in checkpoints (audioml.data.resumable). No
        # `shuffle` beside a sampler: Lightning reads it to decide whether DDP shuffles.
        loader_class = ResumableDataLoader if resumable else DataLoader
        if type(dataset) is WaveformDataset:  # read whole batches from the cache
            dataset = BatchedWaveformDataset(dataset.waveforms, dataset.targets, dataset.indices)
        order = {"shuffle": shuffle} if sampler is None else {"sampler": sampler}
        return loader_class(dataset, batch_size=self.batch_size, **order, num_workers=workers,
                            pin_memory=device_type == "cuda",
                            persistent_workers=self.persistent_workers and workers > 0,
                            collate_fn=collate_waveforms,
                            drop_last=False, generator=torch.Generator().manual_seed(self.seed))

    def train_dataloader(self) -> DataLoader:
        dataset = self.dataset("train")
        # The order of epoch e depends only on (seed, e), so a resumed run draws the same batches.
        if self.balance == "sampler":
            weights = torch.as_tensor(self.train_sample_weights(), dtype=torch.double)
            sampler = EpochWeightedRandomSampler(weights, num_samples=len(dataset), replacement=True,
                                                 seed=self.seed)
            return self._loader(dataset, shuffle=False, sampler=sampler, resumable=True)
        if self.balance == "oversample":
            dataset = WaveformDataset(dataset.waveforms, dataset.targets, self._oversampled_train_indices())
        return self._loader(dataset, shuffle=False, sampler=EpochRandomSampler(dataset, seed=self.seed),
                            resumable=True)

    def _oversampled_train_indices(self) -> np.ndarray:
        train = self.split_indices["train"]
        labels = self._targets[train]
        if labels.ndim > 1:
            labels = labels.argmax(axis=1)
        rng = np.random.default_rng(self.seed)
        target_count = np.bincount(labels).max()
        parts = []
        for cls in np.unique(labels):
            members = train[labels == cls]
            extra = rng.choice(members, size=target_count - len(members), replace=True)
            parts.extend([members, extra])
        return np.concatenate(parts)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("val"), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"), shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def describe(self) -> dict:
        """Facts about the loaded data for logging: sizes, class counts, skipped files."""
        return {"n_clips": len(self.manifest), "n_skipped": len(self.skipped),
                **{f"n_{name}": len(idx) for name, idx in self.split_indices.items()}}


def default_num_workers(device_type: str, cpu_count: int | None = None) -> int:
    """DataLoader workers when ``data.num_workers=auto``.

    Items come from the decoded cache (a memory-mapped array: microseconds per clip), so
    workers only pay off when they overlap the fetch with accelerator work: on CPU they would
    take cores from the model (0), on CUDA a few persistent workers hide the fetch (up to 4,
    leaving half the cores to the main process).
    """
    if device_type != "cuda":
        return 0
    return max(0, min(4, (cpu_count or os.cpu_count() or 1) // 2))


class _RowView:
    """Index ``manifest row -> cache row`` without copying the (possibly memory-mapped) cache.

    Pickles the memory map as its file name (``cache.reopenable``), so DataLoader workers
    started with *spawn* (macOS, Windows) reopen the file instead of receiving a copy."""

    def __init__(self, array: np.ndarray, rows: np.ndarray, extra: np.ndarray | None = None) -> None:
        self.array = array
        self.rows = rows
        self.extra = extra  # offline-augmented copies: manifest rows past len(rows)

    def __getstate__(self) -> dict:
        return {"array": reopenable(self.array), "rows": self.rows,
                "extra": None if self.extra is None else reopenable(self.extra)}

    def __setstate__(self, state: dict) -> None:
        self.array = reopen(state["array"])
        self.rows = state["rows"]
        self.extra = None if state.get("extra") is None else reopen(state["extra"])

    def __getitem__(self, index: int) -> np.ndarray:
        if index >= len(self.rows):
            return self.extra[index - len(self.rows)]
        return self.array[self.rows[index]]

    def __len__(self) -> int:
        return len(self.rows) + (0 if self.extra is None else len(self.extra))

    def gather(self, indices: np.ndarray) -> np.ndarray:
        """Rows ``indices`` (manifest rows; offline copies past ``len(rows)``) as one array."""
        indices = np.asarray(indices, dtype=np.int64)
        cached = indices < len(self.rows)
        if cached.all():
            return self.array[self.rows[indices]]
        out = np.empty((len(indices), *self.array.shape[1:]), dtype=self.array.dtype)
        out[cached] = self.array[self.rows[indices[cached]]]
        out[~cached] = self.extra[indices[~cached] - len(self.rows)]
        return out
