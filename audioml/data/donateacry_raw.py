"""donateacry raw uploads -> a prepared folder in the cleaned corpus layout, plus a report.

Reads ``<root>/donateacry-{android,ios}-upload-bucket/`` (3GPP AMR-NB 8 kHz, CAF IMA ADPCM
16 kHz) and writes ``<output>/<class>/<stem>.wav`` (8 kHz mono PCM 16), ``report.csv`` (one row
per upload) and ``prepare.json`` (settings and input fingerprint: a rerun with both unchanged is
a no-op). The published cleaning rules are applied (``lo``, ``sc``, ``dk`` dropped, ``ch`` merged
into ``discomfort``); the published corpus's removal of non-cry recordings by listening is not."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from audioml.data.audio import AudioDecodeError, load_audio
from audioml.data.cache import fingerprint_files
from audioml.data.cry_names import parse_cry_filename
from audioml.files import printable_path, publish_directory, storable_path

log = logging.getLogger(__name__)

__all__ = ["RAW_BUCKETS", "CLEANING_RULES", "STATUSES", "cleaned_class", "raw_upload_files",
           "prepare_raw_uploads", "ensure_prepared"]

RAW_BUCKETS = {"donateacry-android-upload-bucket": ".3gp", "donateacry-ios-upload-bucket": ".caf"}
#: Reason code -> class of the cleaned corpus; ``None`` = dropped by the published rules.
CLEANING_RULES: dict[str, str | None] = {"hu": "hungry", "bu": "burping", "bp": "belly_pain",
                                         "dc": "discomfort", "ch": "discomfort", "ti": "tired",
                                         "lo": None, "sc": None, "dk": None}
STATUSES = ("kept", "dropped_rule", "too_short", "silent", "unreadable")
_VERSION = 1


def cleaned_class(reason_code: str) -> str | None:
    """Class a raw reason code maps to under the published cleaning, ``None`` when dropped."""
    return CLEANING_RULES[reason_code]


def raw_upload_files(root: str | Path) -> list[Path]:
    """Every upload of both buckets, sorted. Raises ``FileNotFoundError`` naming the buckets
    when neither exists."""
    root = Path(root)
    buckets = [root / name for name in RAW_BUCKETS]
    if not any(b.is_dir() for b in buckets):
        raise FileNotFoundError(
            f"donateacry raw: neither {buckets[0]} nor {buckets[1]} exists. Get the corpus with "
            f"`audioml-data download donateacry` or point data.root at a donateacry-corpus folder.")
    files = []
    for bucket, extension in RAW_BUCKETS.items():
        folder = root / bucket
        if folder.is_dir():
            files.extend(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(extension))
    return sorted(files)


def _settings(root: Path, files: list[Path], min_seconds: float, sample_rate: int) -> dict:
    return {"version": _VERSION, "min_seconds": float(min_seconds), "sample_rate": int(sample_rate),
            "inputs": fingerprint_files(files, {"root": str(root.resolve())})}


def _output_stem(name: str) -> str:
    stem = name
    while Path(stem).suffix.lower() in {".caf", ".3gp"}:
        stem = stem[: -len(Path(stem).suffix)]
    return stem


def prepare_raw_uploads(root: str | Path, output: str | Path, min_seconds: float = 1.0,
                        sample_rate: int = 8000, progress: bool = True) -> pd.DataFrame:
    """Decode, clean and convert every raw upload under ``root`` into ``output``.

    Each upload gets one report row with ``status`` in ``STATUSES``: ``kept`` (written to
    ``<output>/<class>/<stem>.wav``), ``dropped_rule`` (lo/sc/dk), ``too_short`` (under
    ``min_seconds``), ``silent`` (all samples zero), ``unreadable`` (decoder error, empty,
    NaN). Samples beyond full scale (AMR decoding overshoots) are clipped to [-1, 1].
    The folder is built beside ``output`` and renamed into place. Returns the report.
    Raises ``ValueError`` naming the file for an unknown gender/age/reason code.
    """
    import soundfile as sf

    root, output = Path(root), Path(output)
    uploads = raw_upload_files(root)
    # A name that is not valid UTF-8 cannot be parsed or stored: a report row under its escaped name.
    rows = [{"file": printable_path(path.relative_to(root)), "status": "unreadable",
             "reason": "file name is not valid UTF-8: rename it to use the upload"}
            for path in uploads if not storable_path(path)]
    files = [path for path in uploads if storable_path(path)]
    parsed = [parse_cry_filename(path.name) for path in files]  # unknown codes fail before any work
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}-staging-", dir=output.parent))
    try:
        iterator = zip(files, parsed)
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, total=len(files), desc="preparing donateacry uploads", unit="file", leave=False)
        written: dict[str, Path] = {}
        for path, fields in iterator:
            row = {"file": str(path.relative_to(root)), "status": "", "reason": "", "class": "",
                   "output": "", "seconds": float("nan"), "app_instance_id": fields.app_instance_id,
                   "reason_code": fields.reason}
            label = cleaned_class(fields.reason)
            if label is None:
                row.update(status="dropped_rule", reason=f"reason code {fields.reason!r} is dropped by the published cleaning")
                rows.append(row)
                continue
            try:
                audio = load_audio(path, sample_rate)
            except AudioDecodeError as error:
                row.update(status="unreadable", reason=str(error))
                rows.append(row)
                continue
            row["seconds"] = audio.shape[0] / sample_rate
            if row["seconds"] < min_seconds:
                row.update(status="too_short", reason=f"{row['seconds']:.3f} s < min_seconds={min_seconds}")
            elif not np.any(audio):
                row.update(status="silent", reason="all samples are zero")
            else:
                relative = f"{label}/{_output_stem(path.name)}.wav"
                if relative in written:
                    raise ValueError(f"{path} and {written[relative]} would both be written as {relative}")
                written[relative] = path
                (staging / label).mkdir(exist_ok=True)
                sf.write(staging / relative, np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16")
                row.update(status="kept", reason="merged cold/hot into discomfort" if fields.reason == "ch" else "",
                           **{"class": label, "output": relative})
            rows.append(row)
        report = pd.DataFrame(rows, columns=["file", "status", "reason", "class", "output", "seconds",
                                             "app_instance_id", "reason_code"])
        report.to_csv(staging / "report.csv", index=False)
        (staging / "prepare.json").write_text(json.dumps(_settings(root, uploads, min_seconds, sample_rate)))
        publish_directory(staging, output)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    counts = report["status"].value_counts().to_dict()
    log.info("donateacry raw: %d uploads -> %s (report: %s)", len(report), counts, output / "report.csv")
    return report


def ensure_prepared(root: str | Path, output: str | Path, min_seconds: float = 1.0,
                    sample_rate: int = 8000) -> pd.DataFrame:
    """``prepare_raw_uploads`` unless ``output`` already holds a preparation of the same uploads
    with the same settings; returns the report either way."""
    root, output = Path(root), Path(output)
    stamp = output / "prepare.json"
    if stamp.is_file() and (output / "report.csv").is_file():
        expected = _settings(root, raw_upload_files(root), min_seconds, sample_rate)
        if json.loads(stamp.read_text()) == expected:
            return pd.read_csv(output / "report.csv").fillna({"reason": "", "class": "", "output": ""})
    return prepare_raw_uploads(root, output, min_seconds, sample_rate)
