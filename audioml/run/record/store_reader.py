"""Reading runs back from an MLflow store, quickly, for ``audioml-compare`` (its tables and
``--status``): experiments, runs with their final metrics, params and tags, one metric's history.

``reader(uri)`` returns a :class:`SqliteReader` (the embedded ``sqlite:///`` store of one
workspace, opened read-only, its tables and columns checked) or else a :class:`ClientReader`
(MLflow's ``MlflowClient``); both return the same :class:`StoredRun` records, with the attribute
names of ``mlflow.entities.Run``. Why read SQLite directly: docs/design/runs.md."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

__all__ = ["RunInfo", "RunData", "StoredRun", "MetricPoint", "SqliteReader", "ClientReader", "reader"]


@dataclass(frozen=True)
class RunInfo:
    """What ``mlflow.entities.RunInfo`` says of a run (times in ms since the epoch)."""

    run_id: str
    run_name: str | None
    status: str
    experiment_id: str
    start_time: int | None
    end_time: int | None


@dataclass(frozen=True)
class RunData:
    """A run's params, final metric values and tags (``mlflow.entities.RunData``)."""

    params: Mapping[str, str] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredRun:
    info: RunInfo
    data: RunData


@dataclass(frozen=True)
class MetricPoint:
    step: int
    value: float
    timestamp: int


#: The columns the SQLite reader reads, per table (a store without them is read by MLflow's client).
_COLUMNS = {"experiments": {"experiment_id", "name", "lifecycle_stage"},
            "runs": {"run_uuid", "name", "status", "experiment_id", "start_time", "end_time", "lifecycle_stage"},
            "latest_metrics": {"run_uuid", "key", "value", "is_nan"},
            "metrics": {"run_uuid", "key", "value", "is_nan", "step", "timestamp"},
            "params": {"run_uuid", "key", "value"}, "tags": {"run_uuid", "key", "value"}}
#: SQLite's limit of host parameters per statement is 999 in old builds: ids go in chunks.
_CHUNK = 500


class UnreadableStore(Exception):
    """The SQLite file is not an MLflow store this reader knows (MLflow's client reads it instead)."""


class SqliteReader:
    """The runs of the embedded MLflow store in SQLite file ``path``, read-only.

    Raises ``UnreadableStore`` when the file lacks a table or column read here, or holds
    experiments of several workspaces."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._db = sqlite3.connect(f"file:{quote(str(self.path.resolve()))}?mode=ro", uri=True, timeout=30)
            for table, wanted in _COLUMNS.items():
                columns = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
                if not wanted <= columns:
                    raise UnreadableStore(f"{path}: table {table} lacks {sorted(wanted - columns)}")
                if table == "experiments" and "workspace" in columns and \
                        self._db.execute("SELECT COUNT(DISTINCT workspace) FROM experiments").fetchone()[0] > 1:
                    raise UnreadableStore(f"{path} holds several workspaces")
        except sqlite3.Error as error:
            raise UnreadableStore(f"{path}: {error}") from error

    def experiments(self) -> dict[str, str]:
        """``{experiment id: name}`` of the active experiments."""
        rows = self._db.execute("SELECT experiment_id, name FROM experiments WHERE lifecycle_stage = 'active'")
        return {str(i): name for i, name in rows}

    def experiment_id(self, name: str) -> str | None:
        """The id of the experiment named ``name`` (also when deleted), or ``None``."""
        row = self._db.execute("SELECT experiment_id FROM experiments WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def runs(self, experiment_ids: Sequence[str], tags: Mapping[str, str] | None = None) -> list[StoredRun]:
        """The active runs of ``experiment_ids`` that carry every tag of ``tags``, newest first."""
        if not experiment_ids:
            return []
        query = (f"SELECT run_uuid, name, status, experiment_id, start_time, end_time FROM runs WHERE lifecycle_stage "
                 f"= 'active' AND experiment_id IN ({','.join('?' * len(experiment_ids))})")
        arguments: list = [int(i) for i in experiment_ids]
        for key, value in (tags or {}).items():
            query += " AND run_uuid IN (SELECT run_uuid FROM tags WHERE key = ? AND value = ?)"
            arguments += [key, value]
        rows = self._db.execute(query + " ORDER BY start_time DESC, run_uuid", arguments).fetchall()
        return self._with_data(rows)

    def run(self, run_id: str) -> StoredRun:
        """The run ``run_id``; ``LookupError`` when the store has none."""
        rows = self._db.execute("SELECT run_uuid, name, status, experiment_id, start_time, end_time FROM runs "
                                "WHERE run_uuid = ?", (run_id,)).fetchall()
        if not rows:
            raise LookupError(f"no MLflow run {run_id} in {self.path}")
        return self._with_data(rows)[0]

    def metric_history(self, run_id: str, key: str) -> list[MetricPoint]:
        """Every logged value of metric ``key`` of ``run_id``, by step and time."""
        rows = self._db.execute("SELECT step, value, is_nan, timestamp FROM metrics WHERE run_uuid = ? AND key = ? "
                                "ORDER BY step, timestamp", (run_id, key))
        return [MetricPoint(int(step), math.nan if is_nan else float(value), int(timestamp))
                for step, value, is_nan, timestamp in rows]

    def _with_data(self, rows: list[tuple]) -> list[StoredRun]:
        ids = [row[0] for row in rows]
        found: dict[str, dict[str, dict]] = {i: {"params": {}, "metrics": {}, "tags": {}} for i in ids}
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for run_id, key, value in self._db.execute(f"SELECT run_uuid, key, value FROM params WHERE run_uuid IN "
                                                       f"({marks})", chunk):
                found[run_id]["params"][key] = value
            for run_id, key, value in self._db.execute(f"SELECT run_uuid, key, value FROM tags WHERE run_uuid IN "
                                                       f"({marks})", chunk):
                found[run_id]["tags"][key] = value
            for run_id, key, value, is_nan in self._db.execute(
                    f"SELECT run_uuid, key, value, is_nan FROM latest_metrics WHERE run_uuid IN ({marks})", chunk):
                found[run_id]["metrics"][key] = math.nan if is_nan else float(value)
        return [StoredRun(RunInfo(run_id, name, status, str(experiment), start, end), RunData(**found[run_id]))
                for run_id, name, status, experiment, start, end in rows]


class ClientReader:
    """The same records read through MLflow's ``MlflowClient`` (any store: a server, a database)."""

    def __init__(self, client) -> None:
        self.client = client

    def experiments(self) -> dict[str, str]:
        return {e.experiment_id: e.name for e in self.client.search_experiments()}

    def experiment_id(self, name: str) -> str | None:
        experiment = self.client.get_experiment_by_name(name)
        return None if experiment is None else experiment.experiment_id

    def runs(self, experiment_ids: Sequence[str], tags: Mapping[str, str] | None = None) -> list[StoredRun]:
        if not experiment_ids:
            return []
        quoted = [f"tags.`{key}` = '{str(value).replace(chr(39), '')}'" for key, value in (tags or {}).items()]
        return [_record(run) for run in self.client.search_runs(list(experiment_ids), " and ".join(quoted),
                                                                max_results=50000)]

    def run(self, run_id: str) -> StoredRun:
        from mlflow.exceptions import MlflowException

        try:
            return _record(self.client.get_run(run_id))
        except MlflowException as error:
            raise LookupError(f"no MLflow run {run_id} in {self.client.tracking_uri}") from error

    def metric_history(self, run_id: str, key: str) -> list[MetricPoint]:
        return [MetricPoint(m.step, m.value, m.timestamp) for m in self.client.get_metric_history(run_id, key)]


def _record(run) -> StoredRun:
    info = run.info
    return StoredRun(RunInfo(info.run_id, info.run_name, info.status, info.experiment_id, info.start_time,
                             info.end_time), RunData(dict(run.data.params), dict(run.data.metrics), dict(run.data.tags)))


def reader(uri: str) -> SqliteReader | ClientReader:
    """A :class:`SqliteReader` for ``sqlite:///<file>`` when the file is a store it reads, else a
    :class:`ClientReader` (MLflow's client) for ``uri``."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):].split("?", 1)[0])
        if path.is_file():
            try:
                return SqliteReader(path)
            except UnreadableStore:
                pass
    from mlflow import MlflowClient

    return ClientReader(MlflowClient(uri))
