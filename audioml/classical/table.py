"""Feature tables for the classical models: one row per clip (or MuSe window), named columns, the
rows' targets, groups and splits, computed once and cached.

Rows are a DataModule's decoded waveforms (``rows_of``: the audio a network of the same data
sees); features come from descriptors or openSMILE (``handcrafted_table``), a frozen backbone
(``backbone_table``) or a trained checkpoint read as data (``checkpoint_table``). A table is
cached under ``<cache_dir>/features/<kind>-<key>/`` (saved without pickle, published atomically),
keyed by the waveform cache key, the rows and the feature settings."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from audioml.classical.descriptors import DescriptorSettings
from audioml.files import exclusive_lock, fingerprint

log = logging.getLogger(__name__)

__all__ = ["Rows", "FeatureTable", "Describer", "rows_of", "handcrafted_table", "backbone_table", "checkpoint_table",
           "load_table", "TABLE_VERSION"]

TABLE_VERSION = 1


class Describer(Protocol):
    """Settings that compute one row of named values per waveform (``DescriptorSettings``,
    ``audioml.features.smile.SmileSettings``); ``describe`` raises ``ValueError`` for a clip
    that gives no values, ``as_dict`` is what the values depend on, ``kind`` names the table."""

    kind: str

    def columns(self) -> list[str]: ...

    def describe(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray: ...

    def as_dict(self) -> dict: ...


@dataclass
class Rows:
    """The rows a table is computed for: ``waveform(i)`` (float32 mono), ``targets`` (class ids
    or ``(n, targets)`` values), ``manifest`` (at least ``path``, ``group``, ``split``),
    ``task``, ``class_names``, ``sample_rate``, ``key`` (waveforms + rows) and what the
    DataModule ``skipped``."""

    waveform: Callable[[int], np.ndarray]
    targets: np.ndarray
    manifest: pd.DataFrame
    task: str
    class_names: list[str]
    sample_rate: int
    key: str
    skipped: pd.DataFrame
    datamodule: object = None

    def __len__(self) -> int:
        return len(self.manifest)


@dataclass
class FeatureTable:
    """``values`` ``(rows, columns)`` float32 with ``columns`` names; ``rows`` (path, group, split,
    target, and where the row came from); ``skipped`` lists the rows that gave no features."""

    values: np.ndarray
    columns: list[str]
    rows: pd.DataFrame
    targets: np.ndarray
    task: str
    class_names: list[str]
    key: str
    skipped: pd.DataFrame

    def content_key(self) -> str:
        """sha256 (20 hex digits) of what the table holds: the key of its values, its columns,
        classes, targets and rows (paths, segments, groups, splits). Two tables of the same
        files with other labels, groups or rows differ; a grid is bound to it."""
        import hashlib

        digest = hashlib.sha256(json.dumps({"key": self.key, "columns": list(self.columns), "task": self.task,
                                            "class_names": list(self.class_names)}).encode())
        digest.update(np.ascontiguousarray(np.asarray(self.targets, dtype=np.float64)).tobytes())
        digest.update(pd.util.hash_pandas_object(self.rows.astype(str), index=False).to_numpy().tobytes())
        return digest.hexdigest()[:20]

    def save(self, folder: str | Path) -> Path:
        """Write ``features.npy`` (no pickle), ``columns.json``, ``rows.csv`` (with the targets)
        and ``skipped.csv`` into ``folder``: the table as users take it elsewhere."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "features.npy", np.ascontiguousarray(self.values, dtype=np.float32), allow_pickle=False)
        np.save(folder / "targets.npy", np.asarray(self.targets), allow_pickle=False)
        (folder / "columns.json").write_text(json.dumps({"columns": self.columns, "task": self.task,
                                                         "class_names": self.class_names, "key": self.key,
                                                         "version": TABLE_VERSION}, indent=1))
        self.rows.to_csv(folder / "rows.csv", index=False)
        self.skipped.to_csv(folder / "skipped.csv", index=False)
        return folder


def load_table(folder: str | Path) -> FeatureTable:
    """A table written by ``FeatureTable.save`` (arrays read with ``allow_pickle=False``)."""
    folder = Path(folder)
    meta = json.loads((folder / "columns.json").read_text())
    values = np.load(folder / "features.npy", allow_pickle=False)
    targets = np.load(folder / "targets.npy", allow_pickle=False)
    rows = pd.read_csv(folder / "rows.csv", keep_default_na=False, dtype={"group": str, "split": str, "path": str})
    skipped = pd.read_csv(folder / "skipped.csv") if (folder / "skipped.csv").stat().st_size > 1 else \
        pd.DataFrame(columns=["path", "reason"])
    if values.shape != (len(rows), len(meta["columns"])) or len(targets) != len(rows):
        raise ValueError(f"{folder}: features {values.shape}, {len(rows)} rows, {len(meta['columns'])} columns and "
                         f"{len(targets)} targets do not match: delete the folder to recompute it")
    return FeatureTable(values, meta["columns"], rows, targets, meta["task"], meta["class_names"], meta["key"],
                        skipped)


# ------------------------------------------------------------------------------------ rows
def rows_of(datamodule) -> Rows:
    """The rows of a loaded DataModule: its clips, or for MuSe its distinct 0.5 s windows (each
    with its own label), with their group and split (``train``/``val``/``test``)."""
    if datamodule.manifest is None:
        datamodule.setup("fit")
    if hasattr(datamodule, "windows"):  # MuSe: sequences of windows; a row per distinct window
        return _window_rows(datamodule)
    manifest = datamodule.manifest
    if "augmented_copy" in manifest.columns:
        raise ValueError("offline augmentation copies have no place in a feature table: leave augmentation unset")
    split = np.full(len(manifest), "", dtype=object)
    for name, indices in datamodule.split_indices.items():
        split[indices] = name
    columns = [c for c in ("path", "offset", "duration", "group") if c in manifest.columns]
    table = manifest[columns].copy()
    table["group"] = table["group"].astype(str)
    table["split"] = split.astype(str)
    dataset = datamodule.dataset("all")
    targets = np.asarray(datamodule._targets)
    if datamodule.task == "classification" and targets.ndim > 1:  # soft labels: their majority class
        targets = targets.argmax(axis=1)
    key = fingerprint({"waveforms": datamodule.waveform_cache.key if datamodule.waveform_cache else None,
                       "rows": pd.util.hash_pandas_object(table, index=False).tolist(),
                       "targets": np.asarray(targets).tolist()})
    return Rows(lambda i: dataset[i][0].numpy(), targets, table.reset_index(drop=True), datamodule.task,
                list(datamodule.class_names), int(datamodule.sample_rate), key, datamodule.skipped, datamodule)


def _window_rows(datamodule) -> Rows:
    manifest, length = datamodule.manifest, datamodule.sequence_length
    first = manifest["first_window"].to_numpy()
    window_split: dict[int, str] = {}
    for split_name in ("train", "test", "val"):  # MuSe without test labels: devel is the test split
        for index in datamodule.split_indices.get(split_name, []):
            for window in range(first[index], first[index] + length):
                window_split.setdefault(int(window), split_name)
    windows = np.array(sorted(window_split))
    source = datamodule.windows.iloc[windows]
    table = pd.DataFrame({"path": source["path"].to_numpy(), "timestamp_ms": source["timestamp"].to_numpy(),
                          "group": source["recording"].astype(str).to_numpy(),
                          "split": [window_split[w] for w in windows], "window": windows})
    targets = np.asarray(datamodule._window_targets)[windows]
    targets = targets[:, 0] if targets.ndim == 2 and targets.shape[1] == 1 else targets
    key = fingerprint({"windows": pd.util.hash_pandas_object(table, index=False).tolist(),
                       "targets": np.asarray(targets, dtype=np.float64).tolist(),
                       "waveforms": datamodule.waveform_cache.key if getattr(datamodule, "waveform_cache", None)
                       else fingerprint(sorted(table["path"].unique()))})
    waveforms = datamodule._waveforms
    return Rows(lambda i: np.asarray(waveforms[windows[i]], dtype=np.float32), targets, table, "regression",
                list(datamodule.class_names), int(datamodule.sample_rate), key, datamodule.skipped, datamodule)


# ----------------------------------------------------------------------------------- cache
def _cached(cache_dir: str | Path | None, kind: str, key: str,
            compute: Callable[[], FeatureTable]) -> tuple[FeatureTable, str]:
    """The table of ``key`` from the cache, else computed and published; ``(table, status)``
    with status ``hit``, ``built`` or ``uncached``."""
    if cache_dir is None:
        return compute(), "uncached"
    folder = Path(cache_dir) / "features" / f"{kind}-{key[:16]}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(folder.parent / f".{folder.name}.lock", waiting_for=f"the feature table {folder.name}"):
        if (folder / "columns.json").is_file():
            try:
                return load_table(folder), "hit"
            except (OSError, ValueError, KeyError) as error:
                log.warning("feature cache %s is unreadable (%s): recomputing it", folder, error)
                shutil.rmtree(folder, ignore_errors=True)
        table = compute()
        scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            table.save(scratch)
            os.replace(scratch, folder)  # the folder appears whole or not at all
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        log.info("feature table %s: %d rows x %d columns cached in %s", kind, *table.values.shape, folder)
        return table, "built"


def _finish(rows: Rows, values: list[np.ndarray | None], reasons: dict[int, str], columns: list[str],
            key: str) -> FeatureTable:
    keep = np.array([i for i in range(len(rows)) if i not in reasons], dtype=int)
    skipped = pd.concat([rows.skipped.reindex(columns=["path", "reason"]),
                         pd.DataFrame({"path": [rows.manifest["path"].iloc[i] for i in reasons],
                                       "reason": list(reasons.values())})], ignore_index=True)
    if reasons:
        log.warning("features: skipped %d of %d rows (listed in skipped.csv): %s", len(reasons), len(rows),
                    "; ".join(f"{Path(rows.manifest['path'].iloc[i]).name}: {r}" for i, r in list(reasons.items())[:5]))
    if len(keep) == 0:
        raise ValueError(f"no row gave features ({len(reasons)} skipped): see the reasons above")
    matrix = np.stack([values[i] for i in keep]).astype(np.float32)
    table_rows = rows.manifest.iloc[keep].reset_index(drop=True)
    return FeatureTable(matrix, columns, table_rows, np.asarray(rows.targets)[keep], rows.task, rows.class_names, key,
                        skipped)


# ------------------------------------------------------------------------------- handcrafted
def _describe_chunk(waveforms: list[np.ndarray], sample_rate: int, settings: Describer) -> list[np.ndarray | str]:
    """Worker: descriptors of a chunk of clips; a failing clip gives its reason, not an error."""
    import warnings

    out: list[np.ndarray | str] = []
    for waveform in waveforms:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # librosa's tuning warnings on silent clips
                out.append(settings.describe(waveform, sample_rate))
        except ValueError as error:  # DescriptorError, SmileError: the clip's own reason
            out.append(str(error))
        except Exception as error:  # noqa: BLE001 - one odd clip never stops the table
            out.append(f"{type(error).__name__}: {error}")
    return out


def handcrafted_table(rows: Rows, settings: Describer, cache_dir: str | Path | None = None,
                      n_jobs: int = -1, chunk_size: int = 16, progress: bool = True) -> tuple[FeatureTable, str]:
    """Descriptors of every row (``(table, cache status)``): librosa's (``DescriptorSettings``)
    or openSMILE's (``SmileSettings``), computed in parallel over chunks of rows with joblib
    (``n_jobs=-1``: all cores) and cached under ``<cache_dir>/features/<settings.kind>-<key>``."""
    columns = settings.columns()  # before the workers: a missing extra or bad setting fails here, once
    key = fingerprint({"rows": rows.key, "sample_rate": rows.sample_rate, "settings": settings.as_dict(),
                       "kind": settings.kind, "version": TABLE_VERSION})

    def compute() -> FeatureTable:
        from joblib import Parallel, delayed
        from tqdm.auto import tqdm

        chunks = [list(range(begin, min(begin + chunk_size, len(rows)))) for begin in range(0, len(rows), chunk_size)]
        jobs = Parallel(n_jobs=n_jobs, return_as="generator")(
            delayed(_describe_chunk)([rows.waveform(i) for i in chunk], rows.sample_rate, settings)
            for chunk in chunks)
        values: list[np.ndarray | None] = [None] * len(rows)
        reasons: dict[int, str] = {}
        bar = tqdm(total=len(rows), desc=f"{settings.kind} descriptors", unit="clip", disable=not progress)
        for chunk, results in zip(chunks, jobs):
            for index, result in zip(chunk, results):
                if isinstance(result, str):
                    reasons[index] = f"descriptors failed: {result}"
                else:
                    values[index] = result
            bar.update(len(chunk))
        bar.close()
        return _finish(rows, values, reasons, columns, key)

    return _cached(cache_dir, settings.kind, key, compute)


# -------------------------------------------------------------------------------------- deep
def _embed_rows(rows: Rows, embed: Callable, batch_size: int, device: str, progress: bool) -> tuple[list[np.ndarray | None], dict[int, str]]:
    import torch
    from tqdm.auto import tqdm

    values: list[np.ndarray | None] = [None] * len(rows)
    bar = tqdm(total=len(rows), desc="deep features", unit="row", disable=not progress)
    with torch.inference_mode():
        for begin in range(0, len(rows), batch_size):
            index = list(range(begin, min(begin + batch_size, len(rows))))
            batch = torch.from_numpy(np.stack([rows.waveform(i) for i in index])).to(device)
            out = embed(batch).float().cpu().numpy()
            for i, vector in zip(index, out):
                values[i] = vector.reshape(-1)
            bar.update(len(index))
    bar.close()
    return values, {}


def backbone_table(rows: Rows, model, cache_dir: str | Path | None = None, batch_size: int = 32,
                   device: str = "cpu", progress: bool = True, name: str = "backbone") -> tuple[FeatureTable, str]:
    """The pooled embedding (``model.embed``) of every row: a model built from a ``model=``
    config (pretrained, frozen), run in eval mode. Cached by the rows and the network's own
    fingerprint (classes, settings, every weight)."""
    from audioml.models.embedding_cache import module_fingerprint

    key = fingerprint({"rows": rows.key, "network": module_fingerprint(model.frontend, model.backbone),
                       "version": TABLE_VERSION})

    def compute() -> FeatureTable:
        model.eval().to(device)
        values, reasons = _embed_rows(rows, model.embed, batch_size, device, progress)
        width = len(next(v for v in values if v is not None))
        return _finish(rows, values, reasons, [f"{name}_{i:04d}" for i in range(width)], key)

    return _cached(cache_dir, "backbone", key, compute)


def checkpoint_table(rows: Rows, model, checkpoint: str | Path, cache_dir: str | Path | None = None,
                     batch_size: int = 32, device: str = "cpu", progress: bool = True) -> tuple[FeatureTable, str]:
    """Deep features of a trained model (``model_from_record``): a regressor with
    ``deep_features`` (``crnn_attention``: ``[context; h_t]`` of each window, computed over
    the DataModule's own sequences so every window has its context), else the pooled embedding."""
    import hashlib

    import torch

    from audioml.models.embedding_cache import module_fingerprint

    weights = hashlib.sha256()  # every byte of every tensor: two checkpoints never share a table
    for name, value in model.state_dict().items():
        weights.update(f"{name}{tuple(value.shape)}{value.dtype}".encode())
        value = value.detach().cpu().contiguous()
        weights.update((value.float() if value.dtype == torch.bfloat16 else value).numpy().tobytes())
    state = weights.hexdigest()
    key = fingerprint({"rows": rows.key, "checkpoint": state, "network": module_fingerprint(
        model.frontend if hasattr(model, "frontend") else torch.nn.Identity(), model.backbone),
        "version": TABLE_VERSION})

    def compute() -> FeatureTable:
        model.eval().to(device)
        if hasattr(model, "deep_features") and rows.datamodule is not None and hasattr(rows.datamodule, "windows"):
            values, reasons = _sequence_features(rows, model, batch_size, device, progress)
        else:
            values, reasons = _embed_rows(rows, model.embed, batch_size, device, progress)
        width = len(next(v for v in values if v is not None))
        return _finish(rows, values, reasons, [f"deep_{i:04d}" for i in range(width)], key)

    return _cached(cache_dir, f"checkpoint-{Path(str(checkpoint)).stem[:24]}", key, compute)


def _sequence_features(rows: Rows, model, batch_size: int, device: str,
                       progress: bool) -> tuple[list[np.ndarray | None], dict[int, str]]:
    """Per-window ``deep_features`` over every sequence of the DataModule; a window in several
    sequences (training stride < length) keeps the features of the first one holding it."""
    import torch
    from tqdm.auto import tqdm

    datamodule = rows.datamodule
    position = {int(w): i for i, w in enumerate(rows.manifest["window"])}
    dataset = datamodule.dataset("all")
    first = datamodule.manifest["first_window"].to_numpy()
    values: list[np.ndarray | None] = [None] * len(rows)
    bar = tqdm(total=len(dataset), desc="deep features", unit="sequence", disable=not progress)
    with torch.inference_mode():
        for begin in range(0, len(dataset), batch_size):
            index = list(range(begin, min(begin + batch_size, len(dataset))))
            batch = torch.stack([dataset[i][0] for i in index]).to(device)
            features = model.deep_features(batch).float().cpu().numpy()
            for sequence, per_window in zip(index, features):
                for offset, vector in enumerate(per_window):
                    row = position.get(int(first[sequence]) + offset)
                    if row is not None and values[row] is None:
                        values[row] = vector
            bar.update(len(index))
    bar.close()
    reasons = {i: "no sequence holds this window" for i, v in enumerate(values) if v is None}
    return values, reasons


def settings_from_config(config) -> Describer:
    """The settings of a ``descriptors`` config node of kind ``handcrafted`` (librosa:
    ``DescriptorSettings``) or ``opensmile`` (``SmileSettings``; ``MissingExtraError`` without
    the extra)."""
    if config.kind == "opensmile":
        from audioml.features.smile import SmileSettings

        return SmileSettings(str(config.feature_set), str(config.get("level", "functionals")),
                             tuple(config.get("statistics") or ("mean", "std")))
    return DescriptorSettings(tuple(config.names), tuple(config.get("statistics") or ("mean", "std")),
                              n_fft=int(config.get("n_fft", 2048)), hop_length=int(config.get("hop_length", 512)),
                              n_mfcc=int(config.get("n_mfcc", 13)), brightness_hz=float(config.get("brightness_hz",
                                                                                                   1500.0)))
