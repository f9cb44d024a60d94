"""donateacry's file names: ``<uuid>-<timestamp>-<version>-<gender>-<age>-<reason>.<ext>``, the
labels the parents gave (read by the cleaned corpus and the raw uploads alike)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from audioml.data.audio import AUDIO_EXTENSIONS

__all__ = ["CryFileName", "parse_cry_filename", "REASON_CODES", "AGE_CODES"]

REASON_CODES = {"hu": "hungry", "bu": "burping", "bp": "belly_pain", "dc": "discomfort",
                "ti": "tired", "lo": "lonely", "ch": "cold_hot", "sc": "scared", "dk": "dont_know"}
AGE_CODES = {"04": "0-4 weeks", "48": "4-8 weeks", "26": "2-6 months", "72": "7 months-2 years",
             "22": "over 2 years"}


@dataclass(frozen=True)
class CryFileName:
    """Fields of a donateacry file name. ``reason`` is the two-letter code."""

    app_instance_id: str
    timestamp: str
    app_version: str
    gender: str
    age: str
    reason: str


def parse_cry_filename(name: str) -> CryFileName:
    """Parse ``<uuid>-<timestamp>-<version>-<gender>-<age>-<reason>.<ext>``.

    Tolerates the malformed real names of the iOS bucket (double extension, an extra uuid in
    place of the version): the uuid is always the first 36 characters and gender, age and reason
    are always the last three dash-separated fields.
    Raises ``ValueError`` naming the file when a field is not a known code.
    """
    stem = Path(name).name
    while Path(stem).suffix.lower() in AUDIO_EXTENSIONS:
        stem = stem[: -len(Path(stem).suffix)]
    if len(stem) < 37 or stem[36] != "-":
        raise ValueError(f"{name}: does not start with a 36-character app-instance uuid")
    app_instance_id = stem[:36].lower()
    rest = stem[37:].split("-")
    if len(rest) < 5:
        raise ValueError(f"{name}: expected <uuid>-<timestamp>-<version>-<gender>-<age>-<reason>")
    gender, age, reason = rest[-3], rest[-2], rest[-1].lower()
    if gender not in {"m", "f"}:
        raise ValueError(f"{name}: unknown gender code {gender!r} (expected m or f)")
    if age not in AGE_CODES:
        raise ValueError(f"{name}: unknown age code {age!r} (expected one of {sorted(AGE_CODES)})")
    if reason not in REASON_CODES:
        raise ValueError(f"{name}: unknown reason code {reason!r} (expected one of {sorted(REASON_CODES)})")
    return CryFileName(app_instance_id, rest[0], "-".join(rest[1:-3]), gender, age, reason)
