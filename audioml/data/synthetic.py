"""Generated dataset: harmonic tones in noise, one pitch band per class, written as real WAVs.

Needs no download, so every model, sweep, notebook and test can run anywhere. With
``learnable=False`` the labels are shuffled independently of the audio (a chance-level control).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from audioml.data.base import AudioDataModule
from audioml.files import exclusive_lock, publish_directory

__all__ = ["SyntheticDataModule", "generate_synthetic_dataset"]


def _render_clip(rng: np.random.Generator, class_index: int, group_shift: float, sample_rate: int,
                 seconds: float) -> np.ndarray:
    time = np.arange(int(seconds * sample_rate)) / sample_rate
    base = 220.0 * 2 ** (class_index * 0.75 + group_shift + rng.uniform(-0.08, 0.08))
    signal = np.zeros_like(time)
    for harmonic in range(1, 4):
        signal += rng.uniform(0.3, 1.0) / harmonic * np.sin(2 * np.pi * base * harmonic * time
                                                            + rng.uniform(0, 2 * np.pi))
    envelope = np.clip(np.sin(np.pi * time / seconds) * 1.5, 0, 1)
    signal = 0.25 * signal * envelope + rng.normal(0, 0.03, time.shape)
    return np.clip(signal, -1, 1).astype(np.float32)


def generate_synthetic_dataset(root: str | Path, num_classes: int = 3, clips_per_class: int = 24,
                               num_groups: int = 12, sample_rate: int = 16000, seconds: float = 1.0,
                               learnable: bool = True, seed: int = 0) -> Path:
    """Write ``root/<class>/<group>_<n>.wav`` and ``root/manifest.csv``; idempotent per settings.

    Returns ``root``. A folder generated with other settings is regenerated. The folder is built
    aside and published in one rename, under a lock: processes generating it at once (a parallel
    sweep) wait for the first, and a killed generation leaves no half folder. A folder that holds
    other files (it has no ``settings.json``) is never written into (``FileExistsError``).
    """
    root = Path(root)
    settings = dict(num_classes=num_classes, clips_per_class=clips_per_class, num_groups=num_groups,
                    sample_rate=sample_rate, seconds=seconds, learnable=learnable, seed=seed, version=1)
    stamp = root / "settings.json"
    root.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(root.with_name(f".{root.name}.lock"), f"generating {root}: waiting for it"):
        if stamp.is_file() and json.loads(stamp.read_text()) == settings and (root / "manifest.csv").is_file():
            return root
        if root.is_dir() and not stamp.is_file() and any(root.iterdir()):
            raise FileExistsError(f"data.root={root} holds files that synthetic data did not write: it is generated "
                                  "only into a new (or empty) folder, or one it generated before; choose another "
                                  "data.root, or leave it null (a folder under paths.cache_dir)")
        staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-staging-", dir=root.parent))
        try:
            _write_tones(staging, settings)
            publish_directory(staging, root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return root


def _write_tones(root: Path, settings: dict) -> None:
    import soundfile as sf

    num_classes, clips_per_class, num_groups, sample_rate, seconds, learnable, seed = (settings[key] for key in (
        "num_classes", "clips_per_class", "num_groups", "sample_rate", "seconds", "learnable", "seed"))
    rng = np.random.default_rng(seed)
    group_shifts = rng.uniform(-0.2, 0.2, num_groups)
    rows = []
    for class_index in range(num_classes):
        for clip in range(clips_per_class):
            group = int(rng.integers(num_groups))
            audio = _render_clip(rng, class_index, group_shifts[group], sample_rate, seconds)
            path = root / f"class_{class_index}" / f"g{group:03d}_{clip:04d}.wav"
            path.parent.mkdir(exist_ok=True)
            sf.write(path, audio, sample_rate, subtype="PCM_16")
            rows.append({"path": str(path.relative_to(root)), "audio_class": class_index,
                         "group": f"g{group:03d}"})
    manifest = pd.DataFrame(rows)
    labels = manifest["audio_class"].to_numpy()
    manifest["target"] = labels if learnable else rng.permutation(labels)
    manifest.to_csv(root / "manifest.csv", index=False)
    (root / "settings.json").write_text(json.dumps(settings))


class SyntheticDataModule(AudioDataModule):
    """Synthetic tones; generated under ``root`` on first use (``None``: a folder named after the
    settings under ``cache_dir``). Args as ``generate_synthetic_dataset`` plus those of
    ``AudioDataModule``."""

    group_name = "speaker"
    machine_arguments = ("cache_dir", "root")  # the data is written there

    def __init__(self, root: str | Path | None = None, num_classes: int = 3, clips_per_class: int = 24,
                 num_groups: int = 12, seconds: float = 1.0, learnable: bool = True,
                 generator_seed: int = 0, clip_seconds: float | None = None, **kwargs) -> None:
        if root is None:
            if kwargs.get("cache_dir") is None:
                raise ValueError("synthetic data needs data.root or data.cache_dir (paths.cache_dir): where to write it")
            root = Path(kwargs["cache_dir"]) / f"synthetic-{num_classes}c-{clips_per_class}-{learnable}-{generator_seed}"
        super().__init__(root=root, clip_seconds=clip_seconds or seconds, **kwargs)
        self.generator_args = dict(num_classes=num_classes, clips_per_class=clips_per_class,
                                   num_groups=num_groups, seconds=seconds, learnable=learnable,
                                   seed=generator_seed)

    @property
    def class_names(self) -> list[str]:
        return [f"class_{i}" for i in range(self.generator_args["num_classes"])]

    def prepare_data(self) -> None:
        generate_synthetic_dataset(self.root, sample_rate=16000, **self.generator_args)

    def check_root(self) -> None:
        self.prepare_data()

    def build_manifest(self) -> pd.DataFrame:
        manifest = pd.read_csv(self.root / "manifest.csv", dtype={"group": str})
        manifest["path"] = [str(self.root / p) for p in manifest["path"]]
        return manifest
