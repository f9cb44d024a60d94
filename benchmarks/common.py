"""Shared parts of the benchmark scripts: the plain baseline the studies wrote (librosa decode +
librosa log-mel in ``Dataset.__getitem__``), data selection (real donateacry when present,
generated tones otherwise), timers, per-phase peak memory and the machine description.

Run the scripts from the repository root as modules (``python -m benchmarks.<name>``).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

REPO = Path(__file__).resolve().parents[1]
#: Front-end settings of ``audioml/conf/features/logmel.yaml``, shared by the baseline and audioml.
LOGMEL = dict(n_fft=512, hop_length=160, win_length=400, n_mels=64, log_offset=1e-6)


# --------------------------------------------------------------------------- the plain baseline
class PlainLibrosaDataset(Dataset):
    """The studies' pipeline: every item decodes its file with ``librosa.load`` (resampling),
    pads/crops it and computes a librosa log-mel, every epoch, on the CPU.

    Items ``(log-mel (1, n_mels, frames) float32, target)``, instance-normalised like
    ``audioml/conf/features/logmel.yaml``.
    """

    def __init__(self, paths: list[str], targets: list[int], sample_rate: int, clip_seconds: float) -> None:
        self.paths = list(paths)
        self.targets = list(targets)
        self.sample_rate = sample_rate
        self.num_samples = int(round(clip_seconds * sample_rate))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        import librosa

        audio, _ = librosa.load(self.paths[index], sr=self.sample_rate, mono=True)
        audio = librosa.util.fix_length(audio, size=self.num_samples)
        mel = librosa.feature.melspectrogram(y=audio, sr=self.sample_rate, n_fft=LOGMEL["n_fft"],
                                             hop_length=LOGMEL["hop_length"], win_length=LOGMEL["win_length"],
                                             n_mels=LOGMEL["n_mels"])
        mel = np.log(mel + LOGMEL["log_offset"])
        mel = (mel - mel.mean()) / (mel.std() + 1e-5)
        return torch.from_numpy(mel.astype(np.float32))[None], self.targets[index]


def audioml_logmel(sample_rate: int) -> torch.nn.Module:
    """audioml's device front end with the baseline's settings."""
    from audioml.features import LogMel

    return LogMel(sample_rate, n_fft=LOGMEL["n_fft"], hop_length=LOGMEL["hop_length"],
                  win_length=LOGMEL["win_length"], n_mels=LOGMEL["n_mels"], log_offset=LOGMEL["log_offset"],
                  normalize="instance")


# ------------------------------------------------------------------------------------- data
def data_dir() -> Path:
    """``AUDIOML_DATA_DIR`` or ``../shared/data``."""
    return Path(os.environ.get("AUDIOML_DATA_DIR", REPO.parent / "shared" / "data")).expanduser()


def add_data_arguments(parser: argparse.ArgumentParser, batch_size: int = 32) -> None:
    parser.add_argument("--data", choices=["auto", "donateacry", "synthetic"], default="auto",
                        help="auto: the real donateacry corpus when present under AUDIOML_DATA_DIR "
                             "(default ../shared/data), generated tones otherwise")
    parser.add_argument("--clips", type=int, default=0, help="use only the first N clips (0: all)")
    parser.add_argument("--synthetic-clips", type=int, default=450, help="size of the generated dataset")
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--clip-seconds", type=float, default=7.0)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where caches and generated data go (default: a fresh temporary folder)")


def make_datamodule(args: argparse.Namespace, cache_dir: Path | None, num_workers: int | str | None = "auto"):
    """audioml DataModule over the benchmark data (``args.data``), loaded (``setup``: decodes
    every clip into the cache under ``cache_dir``, or reads the cache when it is there)."""
    from audioml.data.donateacry import DonateacryDataModule
    from audioml.data.synthetic import SyntheticDataModule

    common = dict(sample_rate=args.sample_rate, clip_seconds=args.clip_seconds, batch_size=args.batch_size,
                  num_workers=num_workers, cache_dir=cache_dir, seed=0)
    if resolve_data(args) == "donateacry":
        datamodule = DonateacryDataModule(root=data_dir() / "donateacry-corpus", **common)
    else:
        per_class = max(2, args.synthetic_clips // 5)
        datamodule = SyntheticDataModule(root=args.work_dir / "synthetic", num_classes=5, clips_per_class=per_class,
                                         num_groups=40, seconds=args.clip_seconds, **common)
    datamodule.setup("fit")
    return datamodule


def resolve_data(args: argparse.Namespace) -> str:
    if args.data != "auto":
        return args.data
    present = (data_dir() / "donateacry-corpus" / "donateacry_corpus_cleaned_and_updated_data").is_dir()
    return "donateacry" if present else "synthetic"


def limit_rows(rows: np.ndarray, clips: int) -> np.ndarray:
    """The first ``clips`` of ``rows`` (all when ``clips`` is 0)."""
    return rows[:clips] if clips else rows


def split_rows(datamodule, split: str, clips: int = 0) -> np.ndarray:
    """Manifest rows of ``split`` (``"all"``: every usable clip), limited to ``clips``."""
    rows = np.arange(len(datamodule.manifest)) if split == "all" else datamodule.split_indices[split]
    return limit_rows(np.asarray(rows), clips)


def plain_dataset(datamodule, rows: np.ndarray, args: argparse.Namespace) -> PlainLibrosaDataset:
    """The baseline over the same files and targets as ``datamodule`` rows ``rows``."""
    manifest = datamodule.manifest.iloc[rows]
    return PlainLibrosaDataset(manifest["path"].tolist(), manifest["target"].astype(int).tolist(),
                               args.sample_rate, args.clip_seconds)


def cached_dataset(datamodule, rows: np.ndarray):
    """audioml's dataset (cached waveforms) over manifest rows ``rows``."""
    from audioml.data.base import WaveformDataset

    everything = datamodule.dataset("all")
    return WaveformDataset(everything.waveforms, everything.targets, rows)


# ------------------------------------------------------------------------------ measurements
def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_bytes() -> tuple[int, int] | None:
    """``(resident, anonymous resident)`` bytes of this process (Linux), else ``None``."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    except OSError:
        return None
    def kib(name: str) -> int:
        return int(fields.get(name, "0 kB").split()[0]) * 1024
    return kib("VmRSS"), kib("RssAnon")


@dataclass
class Measurement:
    """Wall time and peak memory of one phase. ``rss_peak``/``anon_peak``: highest resident /
    anonymous (heap, not file-backed) memory while it ran; ``*_delta``: above the phase start."""

    name: str
    seconds: float = 0.0
    items: int = 0
    rss_peak: int = 0
    rss_delta: int = 0
    anon_peak: int = 0
    anon_delta: int = 0
    cuda_peak: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds else float("nan")


@contextmanager
def measure(name: str, device: torch.device, interval: float = 0.01) -> Iterator[Measurement]:
    """Time the ``with`` body and sample this process's memory every ``interval`` seconds in a
    background thread (no tracing overhead on the measured code)."""
    result = Measurement(name)
    start_rss = _rss_bytes() or (0, 0)
    peaks = list(start_rss)
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval):
            now = _rss_bytes()
            if now:
                peaks[0], peaks[1] = max(peaks[0], now[0]), max(peaks[1], now[1])

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    started = time.perf_counter()
    try:
        yield result
    finally:
        synchronize(device)
        result.seconds = time.perf_counter() - started
        stop.set()
        thread.join()
        end = _rss_bytes() or (0, 0)
        peaks = [max(peaks[0], end[0]), max(peaks[1], end[1])]
        result.rss_peak, result.anon_peak = peaks
        result.rss_delta, result.anon_delta = peaks[0] - start_rss[0], peaks[1] - start_rss[1]
        if device.type == "cuda":
            result.cuda_peak = torch.cuda.max_memory_allocated(device)


def mib(value: int) -> str:
    return f"{value / 2**20:,.0f}"


def print_memory(measurements: list[Measurement]) -> None:
    """Peak memory table (MiB) of the measured phases, plus the process-wide maximum."""
    print("\npeak memory (MiB)  resident peak / +above phase start | anonymous peak / +above start"
          + (" | CUDA max allocated" if any(m.cuda_peak for m in measurements) else ""))
    for m in measurements:
        line = f"  {m.name:<44} {mib(m.rss_peak):>7} / +{mib(m.rss_delta):<6} | {mib(m.anon_peak):>7} / +{mib(m.anon_delta):<6}"
        if m.cuda_peak:
            line += f" | {mib(m.cuda_peak)}"
        print(line)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if platform.system() == "Darwin" else 1024)
    print(f"  process max RSS (getrusage): {mib(maxrss)} MiB. Resident includes memory-mapped cache pages "
          "(page cache, shared and evictable); anonymous is private heap.")


def machine_description() -> str:
    """One line: CPU model and cores, memory, GPU, torch version."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        memory_text = f"{memory:.0f} GiB RAM"
    except (ValueError, OSError, AttributeError):
        memory_text = "RAM unknown"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {cores} cores available, {memory_text}, {gpu}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch threads; load average {os.getloadavg()[0]:.1f}")


def verdict(ratio: float, target: float) -> str:
    return f"{ratio:.1f}x (target >= {target:g}x: {'met' if ratio >= target else 'NOT met'})"
