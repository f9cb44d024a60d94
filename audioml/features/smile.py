"""openSMILE's standard feature sets (eGeMAPS, ComParE 2016, ...) through the ``opensmile``
package, an optional extra (``pip install -e ".[opensmile]"``; licence: docs/guide/classical.md).

``SmileSettings`` says what is computed for one mono waveform: the functionals of a feature
set (eGeMAPSv02: 88 values, ComParE_2016: 6,373), or its low-level descriptors (LLDs, one row
per 10 ms frame) summarised over the clip by ``statistics`` (for MuSe's 0.5 s windows: the LLDs
of each window). Columns are openSMILE's own feature names (``F0semitoneFrom27.5Hz_sma3nz_amean``;
LLDs ``Loudness_sma3_mean``). A clip openSMILE gives no values for (shorter than its analysis
window, ~0.1 s) raises ``SmileError``, so callers list it instead of inventing numbers.

``SmileInput`` is the same vector as a module for a network's head (``model.head.extra_features``):
``(batch, time) -> (batch, width)``, standardised with statistics of the training clips.
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from audioml.errors import UserError

__all__ = ["INSTALL", "MissingExtraError", "SmileError", "SmileSettings", "SmileInput", "PRESETS",
           "require_opensmile", "LEVELS", "STATISTICS"]

#: The command that installs the extra (named by every message about it).
INSTALL = 'pip install -e ".[opensmile]"'
LEVELS = ("functionals", "lld")
#: Summaries of an LLD over a clip's frames (``level="lld"``), NaN frames ignored.
STATISTICS = {"mean": np.nanmean, "std": np.nanstd, "min": np.nanmin, "max": np.nanmax, "median": np.nanmedian}


class MissingExtraError(UserError, ImportError):
    """An optional dependency that is not installed; the message names the install command (a
    user's mistake (``audioml.errors``): one line, exit status 2, in every command)."""


class SmileError(ValueError):
    """A clip that gives no openSMILE values (too short, non-finite samples)."""


def require_opensmile():
    """The ``opensmile`` module, or ``MissingExtraError`` naming the install command."""
    try:
        import opensmile
    except ImportError as error:
        raise MissingExtraError(
            f"openSMILE features (descriptors=egemaps / compare, model.head.extra_features) need the opensmile "
            f"package: {INSTALL} (openSMILE is free for non-commercial research and teaching only; see "
            f"docs/guide/classical.md for its licence)") from error
    return opensmile


@functools.lru_cache(maxsize=8)
def _extractor(feature_set: str, level: str):
    """One ``opensmile.Smile`` per (set, level) and process: building one parses its config
    files (~0.3 s), processing a clip does not."""
    opensmile = require_opensmile()
    return opensmile.Smile(feature_set=opensmile.FeatureSet[feature_set],
                           feature_level=opensmile.FeatureLevel.Functionals if level == "functionals"
                           else opensmile.FeatureLevel.LowLevelDescriptors)


@dataclass(frozen=True)
class SmileSettings:
    """``feature_set``: a member of ``opensmile.FeatureSet`` (``eGeMAPSv02``, ``ComParE_2016``,
    ``emobase``, ...); ``level``: ``functionals`` (one vector per clip) or ``lld`` (frame-level
    descriptors summarised by ``statistics``, keys of ``STATISTICS``).

    Raises ``MissingExtraError`` without the extra, ``ValueError`` for an unknown set, level or
    statistic."""

    feature_set: str = "eGeMAPSv02"
    level: str = "functionals"
    statistics: tuple[str, ...] = ("mean", "std")
    #: Name of the tables these settings make (``<cache>/features/opensmile-<key>``).
    kind: ClassVar[str] = "opensmile"

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"descriptors.level={self.level!r}: use one of {list(LEVELS)}")
        bad = [s for s in self.statistics if s not in STATISTICS]
        if bad or (self.level == "lld" and not self.statistics):
            raise ValueError(f"descriptors.statistics={list(self.statistics)}: use some of {sorted(STATISTICS)}")
        opensmile = require_opensmile()
        if self.feature_set not in opensmile.FeatureSet.__members__:
            raise ValueError(f"descriptors.feature_set={self.feature_set!r}: use one of "
                             f"{sorted(opensmile.FeatureSet.__members__)}")

    def columns(self) -> list[str]:
        """Names of ``describe``'s values, in order."""
        names = list(_extractor(self.feature_set, self.level).feature_names)
        if self.level == "functionals":
            return names
        return [f"{name}_{statistic}" for name in names for statistic in self.statistics]

    def describe(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        """One float64 row (``columns()`` order) for a mono waveform at ``sample_rate`` Hz.

        Raises ``SmileError`` for non-finite samples or a clip openSMILE gives no values for."""
        y = np.asarray(waveform, dtype=np.float32).reshape(-1)
        if not np.all(np.isfinite(y)):
            raise SmileError(f"{int((~np.isfinite(y)).sum())} non-finite samples")
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Segment too short, filling with NaN": said below, with the length
            frames = _extractor(self.feature_set, self.level).process_signal(y, int(sample_rate)).to_numpy(np.float64)
        if self.level == "functionals":
            row = frames.reshape(-1)
        else:
            valid = frames[np.isfinite(frames).all(axis=1)]
            if len(valid) == 0:
                raise SmileError(f"openSMILE gave no {self.feature_set} frames for a clip of "
                                 f"{len(y) / sample_rate:.3f} s (shorter than its analysis window)")
            row = np.stack([STATISTICS[s](valid, axis=0) for s in self.statistics], axis=1).reshape(-1)
        if not np.all(np.isfinite(row)):
            raise SmileError(f"openSMILE gave no {self.feature_set} values for a clip of {len(y) / sample_rate:.3f} s "
                             "(shorter than its analysis window, ~0.1 s)")
        return row

    def as_dict(self) -> dict:
        """What the values depend on (a cache key): the settings and openSMILE's version."""
        from importlib.metadata import version

        return {"feature_set": self.feature_set, "level": self.level,
                "statistics": list(self.statistics) if self.level == "lld" else [],
                "opensmile": version("opensmile")}


#: Names ``model.head.extra_features`` takes (the ``descriptors=`` configs of the same name).
PRESETS = {"egemaps": ("eGeMAPSv02", "functionals"), "compare": ("ComParE_2016", "functionals")}


class SmileInput(nn.Module):
    """A second input for a classifier's head: ``(batch, time)`` waveforms at ``sample_rate`` ->
    ``(batch, width)`` openSMILE functionals, z-scored with the ``mean`` / ``std`` buffers
    (``fit`` sets them from the training clips; a checkpoint carries them).

    openSMILE is native code outside torch: each clip is computed on the CPU once and remembered
    by the sha256 of its samples (up to ``memory_bytes`` of vectors, least recently used
    dropped), so the epochs after the first look every training clip up instead of recomputing
    it. No gradient flows through it. Raises ``ValueError`` for a name outside ``PRESETS``.
    """

    def __init__(self, name: str, sample_rate: int, memory_bytes: int = 256 << 20) -> None:
        super().__init__()
        if name not in PRESETS:
            raise ValueError(f"model.head.extra_features={name!r}: use one of {sorted(PRESETS)} (openSMILE "
                             "functionals computed from each clip)")
        self.name, self.sample_rate = str(name), int(sample_rate)
        feature_set, level = PRESETS[name]
        self.settings = SmileSettings(feature_set, level)
        self.width = len(self.settings.columns())
        self.register_buffer("mean", torch.zeros(self.width))
        self.register_buffer("std", torch.ones(self.width))
        self._memory: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._memory_rows = max(1, memory_bytes // (self.width * 4))

    @staticmethod
    def clip_key(waveform: np.ndarray) -> bytes:
        return hashlib.sha256(np.ascontiguousarray(waveform, dtype=np.float32).tobytes()).digest()

    def raw(self, waveform: torch.Tensor) -> torch.Tensor:
        """``(batch, time)`` -> unstandardised values ``(batch, width)`` float32, on the CPU.

        Raises ``SmileError`` for a clip without values."""
        clips = waveform.detach().float().cpu().numpy().reshape(waveform.shape[0], -1)
        rows = []
        for clip in clips:
            key = self.clip_key(clip)
            row = self._memory.get(key)
            if row is None:
                row = self.settings.describe(clip, self.sample_rate).astype(np.float32)
                self._memory[key] = row
                if len(self._memory) > self._memory_rows:
                    self._memory.popitem(last=False)
            else:
                self._memory.move_to_end(key)
            rows.append(row)
        return torch.from_numpy(np.stack(rows))

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        raw = self.raw(waveform).to(self.mean.device)
        return (raw - self.mean) / self.std

    @torch.no_grad()
    def fit(self, batches: Iterable[torch.Tensor]) -> None:
        """Set ``mean`` / ``std`` from the training clips (``(batch, time)`` batches), which are
        remembered for the epochs; a constant feature keeps std 1."""
        values = torch.cat([self.raw(batch) for batch in batches]).double()
        if len(values) == 0:
            raise ValueError("model.head.extra_features: no training clips to standardise the features with")
        std = values.std(dim=0, unbiased=False)
        self.mean.copy_(values.mean(dim=0).float())
        self.std.copy_(torch.where(std > 1e-12, std, torch.ones_like(std)).float())

    def extra_repr(self) -> str:
        return f"name={self.name!r}, sample_rate={self.sample_rate}, width={self.width}"
