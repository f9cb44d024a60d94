"""``audioml.run.record.store_reader``: the SQLite reader returns what MLflow's own client returns, on a
real store (the trusted reference), and refuses a file that is not a store it knows."""

from __future__ import annotations

import math
import sqlite3

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from audioml.compare import collect_runs
from audioml.run.record import status, tracking
from audioml.run.record.store_reader import ClientReader, SqliteReader, UnreadableStore, reader


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two experiments; a sweep parent with two jobs, a lone run with a NaN metric and a metric
    logged at several steps, an evaluation, a deleted run."""
    folder = tmp_path_factory.mktemp("reader")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    tracking.prepare_store(uri)
    client = MlflowClient(uri)
    cry = tracking.get_or_create_experiment(uri, "cry")
    other = tracking.get_or_create_experiment(uri, "other")
    parent = client.create_run(cry, run_name="sweep seed (2 jobs)",
                               tags={"audioml.sweep_key": "abcabcabcabc", "audioml.role": "sweep"}).info.run_id
    for seed in (1, 2):
        run = client.create_run(cry, run_name=f"cnn seed={seed}", tags={
            "mlflow.parentRunId": parent, "audioml.sweep_key": "abcabcabcabc", "audioml.choice.model": "cnn"})
        tracking.log_params(client, run.info.run_id, {"seed": str(seed), "data.seed": str(seed), "lr": "0.001"})
        client.log_batch(run.info.run_id, metrics=[Metric("val/macro_f1", 0.1 * step + seed, 1000 + step, step)
                                                   for step in range(4)] + [Metric("test/acc", 0.5 + seed / 10, 5, 0)])
        tracking.set_status(client, run.info.run_id, "FINISHED")
    lone = client.create_run(other, run_name="lone", tags={"note": "x'y"}).info.run_id
    client.log_metric(lone, "test/loss", float("nan"))
    client.log_param(lone, "seed", "7")
    client.create_run(cry, run_name="eval", tags={"audioml.kind": "evaluation"})
    gone = client.create_run(cry, run_name="deleted").info.run_id
    client.delete_run(gone)
    return uri, client, parent, lone


def _same(left: pd.DataFrame, right: pd.DataFrame) -> None:
    left = left.sort_values("run_id").reset_index(drop=True)
    right = right.sort_values("run_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(left[sorted(left.columns)], right[sorted(right.columns)])


def test_the_sqlite_reader_reads_what_mlflows_client_reads(store):
    uri, client, parent, lone = store
    fast, reference = reader(uri), ClientReader(client)
    assert isinstance(fast, SqliteReader)
    assert fast.experiments() == reference.experiments()
    assert fast.experiment_id("cry") == reference.experiment_id("cry") and fast.experiment_id("none") is None
    for arguments in ({}, {"experiments": ["cry"]}, {"sweep": parent}, {"sweep": "abcabcabcabc"}):
        _same(collect_runs(fast, **arguments), collect_runs(reference, **arguments))
    listed = collect_runs(fast, ["cry"])
    assert sorted(listed["run_name"]) == ["cnn seed=1", "cnn seed=2"]  # no parent, evaluation or deleted run
    assert [r.info.run_id for r in fast.runs(list(fast.experiments()))] == \
        [r.info.run_id for r in reference.runs(list(reference.experiments()))]  # newest first, alike
    assert math.isnan(fast.run(lone).data.metrics["test/loss"]) and fast.run(lone).data.tags["note"] == "x'y"
    child = fast.runs([fast.experiment_id("cry")], {"mlflow.parentRunId": parent})[0].info.run_id
    assert fast.metric_history(child, "val/macro_f1") == reference.metric_history(child, "val/macro_f1")
    assert len(fast.metric_history(child, "val/macro_f1")) == 4
    assert fast.run(child) == reference.run(child)
    for source in (fast, reference):
        with pytest.raises(LookupError, match="no MLflow run"):
            source.run("0" * 32)


def test_a_file_that_is_not_a_store_it_knows_is_left_to_mlflows_client(tmp_path, store):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE runs (run_uuid TEXT)")
    with pytest.raises(UnreadableStore, match="experiments"):
        SqliteReader(path)
    uri, client, parent, _ = store
    # --status finds a sweep's record through the parent's tag with either reader
    client.set_tag(parent, "audioml.sweep_key", "abcabcabcabc")
    with pytest.raises(LookupError, match="abcabcabcabc"):
        status.find_record([tmp_path], parent, reader(uri))
