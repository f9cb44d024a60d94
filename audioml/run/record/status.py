"""Where each job of a sweep stands (``audioml-compare --status``), from files and MLflow only, so it
reads the same from another shell and for every launcher.

The sweep callback (:mod:`audioml.run.record.sweep`) writes ``sweep.json`` (the planned jobs) and
``jobs/<job id>.json`` (each started job) under ``<hydra.sweep.dir>/.sweeps/<sweep key>/``; a
job's run directory (:class:`~audioml.run.rundir.RunDir`) and MLflow run say the rest. ``STATES``:
finished, pruned, running, failed, interrupted (started, then neither running, finished nor
failed: rerunning continues it), not started."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from audioml.files import atomic_write_bytes
from audioml.run.rundir import RunDir

__all__ = ["SWEEPS_FOLDER", "PLAN_FILE", "STATES", "record_dir", "job_id", "write_plan", "read_plan",
           "write_job_start", "JobState", "sweep_jobs", "status_table", "failure_summary", "find_record", "HEARTBEAT_SECONDS"]

SWEEPS_FOLDER = ".sweeps"
PLAN_FILE = "sweep.json"
_JOBS_FOLDER = "jobs"
STATES = ("finished", "pruned", "running", "failed", "interrupted", "not started")
#: A job on another host whose MLflow run logged a system metric this recently counts as running.
HEARTBEAT_SECONDS = 120.0


def record_dir(sweep_dir: str | Path, key: str) -> Path:
    """The record folder of sweep ``key`` under the sweep directory (``hydra.sweep.dir``)."""
    return Path(sweep_dir) / SWEEPS_FOLDER / key


def job_id(overrides: Sequence[str]) -> str:
    """12 hex digits naming a job by its overrides (their order does not matter)."""
    return hashlib.sha256(json.dumps(sorted(map(str, overrides))).encode()).hexdigest()[:12]


def write_plan(folder: Path, key: str, overrides: Sequence[str], jobs: Sequence[Sequence[str]] | None,
               parent_run_id: str | None) -> Path:
    """Write ``sweep.json`` (see module docs); a rerun of the sweep rewrites it."""
    path = Path(folder) / PLAN_FILE
    atomic_write_bytes(path, json.dumps({
        "key": key, "overrides": list(map(str, overrides)),
        "jobs": None if jobs is None else [list(map(str, job)) for job in jobs],
        "parent_run_id": parent_run_id, "started": time.time()}, indent=2).encode())
    return path


def read_plan(folder: Path) -> dict[str, Any]:
    """The sweep's ``sweep.json``; ``FileNotFoundError`` naming the folder when there is none."""
    path = Path(folder) / PLAN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no sweep record at {path}")
    return json.loads(path.read_text())


def write_job_start(folder: Path, overrides: Sequence[str], run_dir: str | Path, number: int | None) -> Path:
    """Record that the job with these ``overrides`` (Hydra's job ``number``) started in ``run_dir``."""
    overrides = list(map(str, overrides))
    path = Path(folder) / _JOBS_FOLDER / f"{job_id(overrides)}.json"
    atomic_write_bytes(path, json.dumps({
        "overrides": overrides, "run_dir": str(Path(run_dir).resolve()), "number": number,
        "host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}, indent=2).encode())
    return path


@dataclass
class JobState:
    """One row of the status table."""

    number: int | None
    overrides: list[str]
    state: str
    run_dir: Path | None = None
    epochs_done: int | None = None
    epochs_total: int | None = None
    folds: str | None = None
    monitor: str | None = None
    best_val: float | None = None
    test: float | None = None
    wall_seconds: float | None = None
    error: str | None = None
    run_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: How long the status waits for a tracking server to accept a connection before reading the
#: jobs of its runs from their directories only (MLflow's client would retry for minutes).
STORE_PROBE_SECONDS = 2.0


class _Stores:
    """Readers of MLflow stores (:mod:`audioml.run.record.store_reader`) by URI, and what they say about
    one run (``None`` where unreachable). A tracking server is probed once (``check_reachable``);
    ``unreachable`` maps the servers that did not answer to the reason."""

    def __init__(self) -> None:
        self.readers: dict[str, Any] = {}
        self.unreachable: dict[str, str] = {}

    def run(self, run: RunDir):
        run_id, uri = run.run_id(), run.store()
        if not run_id or not uri or uri in self.unreachable:
            return None, None
        if uri not in self.readers:
            from audioml.run.record.store import check_reachable
            from audioml.run.record.store_reader import reader

            try:
                check_reachable(uri, timeout=STORE_PROBE_SECONDS)
            except ConnectionError as error:
                self.unreachable[uri] = str(error)
                return None, None
            self.readers[uri] = reader(uri)
        store = self.readers[uri]
        try:
            return store, store.run(run_id)
        except Exception:  # the store is unreachable or lost the run: the files still tell the state
            return store, None


def _last_heartbeat(store, run) -> float | None:
    """Seconds since ``run`` last logged a system metric (its monitor's heartbeat), or ``None``."""
    key = next((k for k in run.data.metrics if k.startswith("system/")), None)
    if key is None:
        return None
    history = store.metric_history(run.info.run_id, key)
    return time.time() - max(m.timestamp for m in history) / 1000 if history else None


def _fill_from_mlflow(job: JobState, store, run, config: dict[str, Any], done: dict[str, float] | None) -> None:
    monitor = str(config.get("monitor") or "val/macro_f1")
    maximise = str(config.get("monitor_mode") or "max") == "max"
    group, _, name = monitor.rpartition("/")
    job.monitor = monitor
    job.run_id = run.info.run_id if run is not None else None
    history = store.metric_history(run.info.run_id, monitor) if run is not None else []
    if run is not None:
        job.epochs_done = len({m.step for m in history})
    if history:
        values = [m.value for m in history]
        job.best_val = max(values) if maximise else min(values)
    metrics = dict(run.data.metrics) if run is not None else {}
    metrics.update(done or {})
    best_key = f"{group}/best_{name}" if group else f"best_{name}"
    if best_key in metrics:
        job.best_val = metrics[best_key]
    test_key = f"test/{name}" if f"test/{name}" in metrics else next(
        (k for k in sorted(metrics) if k.startswith("test/") and k.count("/") == 1), None)
    job.test = metrics.get(test_key) if test_key else None
    if test_key and test_key != f"test/{name}":
        job.extra["test_metric"] = test_key
    if run is not None:
        if run.info.status != "RUNNING" and run.info.end_time:
            end = run.info.end_time
        elif job.state == "running":
            end = time.time() * 1000
        else:  # killed while its MLflow run was open: until the last value it logged
            end = max([m.timestamp for m in history] + [run.info.start_time])
        job.wall_seconds = max(0.0, (end - run.info.start_time) / 1000)


def _job_state(job: JobState, record: dict[str, Any], latest_of_pid: bool, stores: _Stores,
               with_mlflow: bool) -> None:
    directory = RunDir(job.run_dir)
    config = directory.config()
    job.epochs_total = (config.get("trainer") or {}).get("max_epochs")
    folds = directory.folds()
    if folds:
        k = (config.get("evaluation") or {}).get("k") or len(folds)
        job.folds = f"{sum(fold.done_time() is not None for fold in folds)}/{k}"
    done = directory.finished()
    failure = directory.failure()
    store, run = stores.run(directory) if with_mlflow else (None, None)
    here = record.get("host") == socket.gethostname()
    if done is not None:
        job.state = "pruned" if directory.pruned() is not None else "finished"
    elif directory.locked():
        job.state = "running"
    elif failure is not None:
        job.state, job.error = "failed", str(failure.get("error", ""))
    elif here and latest_of_pid and record.get("pid") and _pid_alive(int(record["pid"])):
        job.state = "running"  # started, not yet holding its run directory's lock
    elif run is not None and run.info.status == "FAILED":
        job.state, job.error = "failed", run.data.tags.get("audioml.error", "")
    elif (run is not None and run.info.status == "RUNNING" and not here
          and (beat := _last_heartbeat(store, run)) is not None and beat < HEARTBEAT_SECONDS):
        job.state = "running"  # on another machine: its system-metrics monitor is still logging
    else:
        job.state = "interrupted"
    if with_mlflow and (run is not None or done is not None):
        _fill_from_mlflow(job, store, run, config, done)
    if job.wall_seconds is None and done is not None and record.get("started"):
        job.wall_seconds = max(0.0, (directory.done_time() or 0.0) - float(record["started"]))


def sweep_jobs(folder: str | Path, with_mlflow: bool = True, notes: list[str] | None = None) -> list[JobState]:
    """The jobs of the sweep recorded in ``folder`` (:func:`record_dir`): the planned ones in
    Hydra's order, then any started job the plan did not list (a sweeper that decides as it
    goes). ``with_mlflow=False``: states from the files alone (no epochs, scores or times).
    ``notes`` gets a line per tracking server that could not be reached (its jobs' states then
    come from their run directories alone)."""
    folder = Path(folder)
    plan = read_plan(folder)
    records = {}
    for path in sorted((folder / _JOBS_FOLDER).glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except ValueError:
            continue
        records[job_id(record["overrides"])] = record
    latest_by_pid: dict[tuple[str, int], float] = {}
    for record in records.values():
        process = (record.get("host"), record.get("pid"))
        latest_by_pid[process] = max(latest_by_pid.get(process, 0.0), float(record.get("started") or 0))
    planned = [list(job) for job in plan.get("jobs") or []]
    unplanned = [r["overrides"] for r in sorted(records.values(), key=lambda r: r.get("started") or 0)
                 if job_id(r["overrides"]) not in {job_id(p) for p in planned}]
    stores, jobs = _Stores(), []
    for position, overrides in enumerate(planned + unplanned):
        record = records.get(job_id(overrides))
        if record is None:
            jobs.append(JobState(position, overrides, "not started"))
            continue
        number = record.get("number") if record.get("number") is not None else position
        job = JobState(number, overrides, "interrupted", run_dir=Path(record["run_dir"]))
        latest = latest_by_pid[(record.get("host"), record.get("pid"))] == float(record.get("started") or 0)
        _job_state(job, record, latest, stores, with_mlflow)
        jobs.append(job)
    if notes is not None:
        notes.extend(f"{reason}. The jobs logged there show what their run directories say (state, no epochs, "
                     "scores or times; a job running on another machine reads as interrupted)"
                     for reason in stores.unreachable.values())
    return jobs


def _varying(jobs: Sequence[JobState]) -> list[list[str]]:
    """Each job's overrides that differ between the jobs (all of them for a single job)."""
    values: dict[str, set[str]] = {}
    for job in jobs:
        for override in job.overrides:
            key, _, value = override.partition("=")
            values.setdefault(key, set()).add(value)
    varying = {key for key, seen in values.items() if len(seen) > 1 or len(jobs) == 1}
    missing = {key for key in values if any(key not in {o.partition("=")[0] for o in j.overrides} for j in jobs)}
    return [[o for o in job.overrides if o.partition("=")[0] in varying | missing] for job in jobs]


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _override_columns(jobs: Sequence[JobState]) -> dict[str, list[str]]:
    """One column per key whose value differs between the jobs (every key of a single job):
    ``{header: value per job}``, the header the key's last part where no other shown key ends alike
    (``model.optimizer.lr`` -> ``lr``), a job without the key blank."""
    per_job = [dict(o.partition("=")[::2] for o in overrides) for overrides in _varying(jobs)]
    keys = list(dict.fromkeys(key for values in per_job for key in values))
    short = [key.lstrip("+~").rsplit(".", 1)[-1] for key in keys]
    fixed = {"job", "state", "epochs", "folds", "best val", "test", "wall", "error", "run_dir"}
    headers = [name if short.count(name) == 1 and name not in fixed else key for key, name in zip(keys, short)]
    return {header: [values.get(key, "") for values in per_job] for key, header in zip(keys, headers)}


def status_table(jobs: Sequence[JobState]) -> pd.DataFrame:
    """One row per job: ``job``, a column per override that differs between jobs
    (:func:`_override_columns`), ``state``, ``epochs`` (done/total; ``folds`` done/k for k-fold
    jobs), ``best val``, ``test``, ``wall`` (h:mm:ss), ``error`` (failed jobs), ``run_dir``."""
    overrides = _override_columns(jobs)
    rows = []
    for position, job in enumerate(jobs):
        epochs = "" if job.epochs_done is None and job.epochs_total is None else \
            f"{'' if job.epochs_done is None else job.epochs_done}/{'' if job.epochs_total is None else job.epochs_total}"
        rows.append({"job": job.number, **{header: values[position] for header, values in overrides.items()},
                     "state": job.state, "epochs": epochs, "folds": job.folds or "", "best val": job.best_val,
                     "test": job.test, "wall": _duration(job.wall_seconds), "error": job.error or "",
                     "run_dir": job.run_dir.name if job.run_dir else ""})
    table = pd.DataFrame(rows, columns=["job", *overrides, "state", "epochs", "folds", "best val", "test", "wall",
                                        "error", "run_dir"])
    for optional in ("folds", "error"):
        if not table[optional].astype(bool).any():
            table = table.drop(columns=optional)
    return table


def failure_summary(folder: str | Path) -> tuple[str, int]:
    """The closing lines of a multirun (from the files alone) and its number of failed jobs:
    how many jobs finished, were pruned (not failures), failed (each with its overrides, error and
    traceback file), were interrupted or did not start."""
    folder = Path(folder)
    jobs = sweep_jobs(folder, with_mlflow=False)
    counts = {state: sum(job.state == state for job in jobs) for state in STATES}
    key = read_plan(folder).get("key", folder.name)
    parts = [f"{counts[s]} {s}" for s in STATES if counts[s]]
    lines = [f"sweep {key}: {len(jobs)} jobs, {', '.join(parts) or 'none'}"]
    for job, overrides in zip(jobs, _varying(jobs)):
        if job.state in ("finished", "pruned"):
            continue
        detail = f": {job.error}" if job.error else ""
        traceback_file = RunDir(job.run_dir).traceback_file if job.run_dir else None
        where = f" (traceback: {traceback_file})" if job.state == "failed" and traceback_file and \
            traceback_file.is_file() else ""
        lines.append(f"  {job.state} job {job.number} {' '.join(overrides)}{detail}{where}")
    if any(counts[s] for s in ("failed", "interrupted", "not started")):
        searched = read_plan(folder).get("jobs") is None  # a sweeper that decides as it goes (Optuna)
        lines.append(("rerun the same command to continue: interrupted trials are retried, failed ones count as "
                      "trials" if searched else
                      "rerun the same command to retry the failed and unfinished jobs (finished ones are skipped)")
                     + f"; status: audioml-compare --status {key}")
    return "\n".join(lines), counts["failed"]


def find_record(sweep_dirs: Sequence[str | Path], sweep: str | None = None, store=None) -> Path:
    """The record folder of ``sweep`` (a sweep key, or the parent run id when ``store``, a reader
    of :mod:`audioml.run.record.store_reader`, can look it up: its ``audioml.sweep_record`` tag), searched
    under ``sweep_dirs``; ``sweep=None``: the sweep that started last there. Raises ``LookupError``
    saying what was searched."""
    if sweep and store is not None and len(sweep) == 32:
        try:
            tags = store.run(sweep).data.tags
        except Exception:
            tags = {}
        if tags.get("audioml.sweep_record") and (Path(tags["audioml.sweep_record"]) / PLAN_FILE).is_file():
            return Path(tags["audioml.sweep_record"])
        sweep = tags.get("audioml.sweep_key", sweep)
    searched = [Path(d) / SWEEPS_FOLDER for d in sweep_dirs]
    if sweep:
        for folder in searched:
            if (folder / sweep / PLAN_FILE).is_file():
                return folder / sweep
        raise LookupError(f"no record of sweep {sweep!r} under {', '.join(map(str, searched))} (pass the "
                          "--output-dir of the sweep, its paths.output_dir)")
    plans = [p for folder in searched for p in folder.glob(f"*/{PLAN_FILE}")]
    if not plans:
        raise LookupError(f"no sweep recorded under {', '.join(map(str, searched))}: pass the --output-dir of the "
                          "sweep (its paths.output_dir), or its parent run id (a sweep whose hydra.sweep.dir is "
                          "elsewhere, e.g. a debug= preset's, is found by its parent run id); a sweep starts with "
                          "audioml-train -m ...")
    return max(plans, key=lambda p: p.stat().st_mtime).parent
