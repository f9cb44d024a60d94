"""One job of the reproduction report: an entry under one protocol, run as its own process
(``python -m audioml.train ...`` or ``python -m audioml.classical.cli ...``) so a crash, an
out-of-memory kill or a bad config ends that job only. The job's output goes to its log file;
its numbers are read back from the ``metrics.json`` of its run directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from audioml.reproduce.registry import Entry, Locations, Protocol
from audioml.run.rundir import RunDir

__all__ = ["JobResult", "merge_overrides", "job_overrides", "job_name", "run_job", "first_error_line", "JOB_FILE"]

#: Written next to a job's log: its command, return code and wall time (a finished train run
#: found again is reused with these).
JOB_FILE = "job.json"
# the last line of a Python traceback: "ValueError: ...", "hydra.errors.ConfigCompositionException: ..."
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Interrupt|Exit)\b(?::.*)?$")


@dataclass
class JobResult:
    """What one job gave: ``status`` is ``ok``, ``failed``, ``skipped`` or ``not run``;
    ``reason`` the skip reason or the error's first line; ``metrics`` its metrics.json."""

    status: str
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    run_dir: Path | None = None
    log: Path | None = None
    reused: bool = False

    def value(self, key: str) -> float | None:
        value = self.metrics.get(key)
        return None if value is None else float(value)


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def merge_overrides(*groups: Iterable[str]) -> list[str]:
    """Hydra overrides from several sources, later ones replacing earlier ones of the same key
    (Hydra itself refuses a key given twice), in first-appearance order."""
    merged: dict[str, str] = {}
    for group in groups:
        for override in group:
            merged.pop(_key(override), None)
            merged[_key(override)] = override
    return list(merged.values())


def job_name(entry: Entry, protocol: Protocol, quick: bool) -> str:
    """The job's folder name: ``ravdess-gender_cnn-study_protocol[-quick]``."""
    return f"{entry.experiment.replace('/', '-')}-{protocol.key}{'-quick' if quick else ''}"


def job_overrides(entry: Entry, protocol: Protocol, locations: Locations, quick: bool,
                  extra: Sequence[str] = (), features_dir: Path | None = None) -> list[str]:
    """The overrides of ``entry`` under ``protocol``: the runner's, the entry's, the protocol's,
    the quick ones, ``extra`` (the command line's) and the locations (``paths.data_dir``,
    ``paths.weights_dir``, ``data.root``, ``descriptors.source`` from ``features_dir``)."""
    places = [f"paths.data_dir={locations.data_dir}"]
    if locations.weights_dir is not None:
        places.append(f"paths.weights_dir={locations.weights_dir}")
    if entry.dataset.name in locations.roots:
        places.append(f"data.root={locations.roots[entry.dataset.name]}")
    if features_dir is not None:
        places.append(f"descriptors.source={features_dir}")
    return merge_overrides([f"experiment={entry.experiment}"], entry.runner.always, entry.overrides,
                           protocol.overrides, entry.runner.quick if quick else (), entry.quick if quick else (),
                           places, extra)


def first_error_line(text: str) -> str:
    """The first line of the last exception in a job's output (``ValueError: ...``), else its
    last non-empty line."""
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if _EXCEPTION_LINE.match(line):
            return line
    return lines[-1] if lines else "no output"


def _tail(path: Path, size: int = 200_000) -> str:
    with open(path, "rb") as stream:
        stream.seek(max(0, path.stat().st_size - size))
        return stream.read().decode("utf-8", errors="replace")


def run_job(module: str, overrides: Sequence[str], run_dir: Path, log_dir: Path, metric: str,
            timeout: float | None = None, reuse: bool = True) -> JobResult:
    """Run ``python -m <module> <overrides> hydra.run.dir=<run_dir>``, its output into
    ``<log_dir>/<run_dir name>.log``; the result holds its metrics.json, or the error's first
    line when it exits non-zero, times out or writes no ``metric``. A job finished before with
    the same command (its ``job.json`` says exit 0, its ``metrics.json`` is there) is reused
    when ``reuse``; any other job starts from an empty ``run_dir`` (audioml-train would skip a
    finished run directory by itself and report its old numbers as this command's).
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path, job_path = log_dir / f"{run_dir.name}.log", log_dir / f"{run_dir.name}.{JOB_FILE}"
    command = [sys.executable, "-m", module, *overrides, f"hydra.run.dir={run_dir}"]
    if reuse and RunDir(run_dir).metrics_file.is_file() and job_path.is_file():
        record = json.loads(job_path.read_text())
        if record.get("returncode") == 0 and record.get("command") == command:
            return _read_result(run_dir, log_path, metric, float(record.get("seconds", 0.0)), reused=True)
    if run_dir.is_dir():  # not reused: another command (overrides, data, registry) or --rerun
        shutil.rmtree(run_dir)
    environment = {**os.environ, "HYDRA_FULL_ERROR": "1", "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    with open(log_path, "w") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        try:
            returncode = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=environment,
                                        timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            returncode = None
    seconds = time.monotonic() - started
    job_path.write_text(json.dumps({"command": command, "returncode": returncode, "seconds": seconds}, indent=2))
    if returncode is None:
        return JobResult("failed", f"timed out after {timeout:.0f} s (--timeout)", seconds=seconds, run_dir=run_dir,
                         log=log_path)
    if returncode != 0:
        return JobResult("failed", f"exit {returncode}: {first_error_line(_tail(log_path))}", seconds=seconds,
                         run_dir=run_dir, log=log_path)
    return _read_result(run_dir, log_path, metric, seconds)


def _read_result(run_dir: Path, log_path: Path, metric: str, seconds: float, reused: bool = False) -> JobResult:
    metrics_path = RunDir(run_dir).metrics_file
    if not metrics_path.is_file():
        return JobResult("failed", f"finished without {metrics_path}", seconds=seconds, run_dir=run_dir, log=log_path)
    metrics = json.loads(metrics_path.read_text())
    if metric not in metrics:
        return JobResult("failed", f"{metrics_path} has no {metric} (it has {', '.join(sorted(metrics)[:8])}, ...)",
                         metrics=metrics, seconds=seconds, run_dir=run_dir, log=log_path)
    return JobResult("ok", metrics=metrics, seconds=seconds, run_dir=run_dir, log=log_path, reused=reused)
