"""MLflow tracking helpers against a real embedded store: continued runs without duplicate metric
points, run status, sweep parents through the environment, params, fingerprints."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from audioml.run.record import facts, tracking
from audioml.run.record.store import Store
from audioml.run.record.sweep import find_or_create_sweep_run, sweep_key
from audioml.run.rundir import RunDir


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (creating its tables takes seconds)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    tracking.prepare_store(uri)
    return uri, MlflowClient(uri)


def test_a_continued_run_keeps_its_id_and_logs_every_point_once(store, tmp_path):
    uri, client = store
    id_file = RunDir(tmp_path).run_id_file
    first = tracking.open_run("continued", "job", Store(uri), RunDir(tmp_path), finish_on_finalize=False)
    for step in range(5):
        first.log_metrics({"val/loss": 1.0 / (step + 1), "epoch": step}, step=step)
    first.finalize("failed")  # what Lightning does when the process is interrupted by an error
    assert client.get_run(first.run_id).info.status == "FAILED"

    second = tracking.open_run("continued", "job", Store(uri), RunDir(tmp_path), finish_on_finalize=False)
    assert second.run_id == first.run_id == id_file.read_text()
    assert client.get_run(second.run_id).info.status == "RUNNING"
    for step in range(3, 8):  # steps 3 and 4 replayed after the resume
        second.log_metrics({"val/loss": 1.0 / (step + 1), "epoch": step}, step=step)
    second.finalize("success")  # Lightning's end of fit: the entry point closes the run later
    assert client.get_run(second.run_id).info.status == "RUNNING"
    history = client.get_metric_history(second.run_id, "val/loss")
    assert sorted(m.step for m in history) == list(range(8))
    assert {m.step: m.value for m in history}[4] == pytest.approx(0.2)
    tracking.set_status(client, second.run_id, "FINISHED")
    assert client.get_run(second.run_id).info.status == "FINISHED"


def test_a_run_id_unknown_to_the_store_starts_a_new_run(store, tmp_path):
    uri, client = store
    id_file = RunDir(tmp_path).run_id_file
    id_file.write_text("0" * 32)  # e.g. the run directory was copied to a machine with another store
    logger = tracking.open_run("moved", "job", Store(uri), RunDir(tmp_path))
    assert logger.run_id != "0" * 32 and id_file.read_text() == logger.run_id
    assert not logger.resumed


def test_sweep_parent_reaches_runs_through_the_environment(store, tmp_path, monkeypatch):
    uri, client = store
    experiment = tracking.get_or_create_experiment(uri, "sweeps")
    key = sweep_key(["model=cnn,cnn_deep", "loss=ce,weighted_ce"])
    assert key == sweep_key(["loss=ce,weighted_ce", "model=cnn,cnn_deep"])  # order does not matter
    parent = find_or_create_sweep_run(uri, experiment, key, ["model=cnn,cnn_deep"])
    tracking.set_status(client, parent, "KILLED")
    assert find_or_create_sweep_run(uri, experiment, key, ["model=cnn,cnn_deep"]) == parent  # rerun: same parent
    assert client.get_run(parent).info.status == "RUNNING"
    monkeypatch.setenv(tracking.PARENT_RUN_ENV, parent)
    monkeypatch.setenv(tracking.SWEEP_KEY_ENV, key)
    child = tracking.open_run("sweeps", "job", Store(uri), RunDir(tmp_path / "child"))
    assert client.get_run(child.run_id).data.tags["mlflow.parentRunId"] == parent
    fold = tracking.open_run("sweeps", "fold", Store(uri), RunDir(tmp_path / "fold"), tags={"mlflow.parentRunId": child.run_id})
    assert client.get_run(fold.run_id).data.tags["mlflow.parentRunId"] == child.run_id  # explicit parent wins


def test_params_are_flattened_logged_once_and_never_changed(store, tmp_path):
    uri, client = store
    logger = tracking.open_run("params", "job", Store(uri), RunDir(tmp_path))
    params = tracking.flatten_params({"model": {"backbone": {"channels": [32, 64]}}, "paths": {"output_dir": "/a"},
                                      "long": "x" * 10000})
    assert params["model.backbone.channels"] == "[32, 64]"
    assert len(params["long"]) == tracking.MAX_PARAM_LENGTH and params["long"].endswith("[see config.yaml]")
    tracking.log_params(client, logger.run_id, params)
    tracking.log_params(client, logger.run_id, {**params, "paths.output_dir": "/b", "new": "1"})  # continued elsewhere
    run = client.get_run(logger.run_id)
    logged = run.data.params
    assert logged["new"] == "1" and logged["model.backbone.channels"] == "[32, 64]"
    # a location is a tag, not a param: it shows where the run is now
    assert "paths.output_dir" not in logged and run.data.tags["path.paths.output_dir"] == "/b"


def test_using_store_puts_the_process_defaults_back(tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking._tracking_service import utils

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setattr(utils, "_tracking_uri", None)
    with tracking.using_store(f"sqlite:///{tmp_path / 'a.db'}"):
        assert mlflow.get_tracking_uri().endswith("a.db") and mlflow.get_registry_uri().endswith("a.db")
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///elsewhere.db" and "MLFLOW_REGISTRY_URI" not in os.environ
    assert utils._tracking_uri is None  # the environment variable, not a process-wide value, decides again


def test_dataset_fingerprint_follows_content_not_location(tmp_path):
    for root in ("a", "b"):
        (tmp_path / root / "x").mkdir(parents=True)
        (tmp_path / root / "x" / "1.wav").write_bytes(b"12345")
        (tmp_path / root / "2.wav").write_bytes(b"1")
    files = ["x/1.wav", "2.wav"]
    fingerprint_a = facts.dataset_fingerprint([tmp_path / "a" / f for f in files], tmp_path / "a", [[0], [1]])
    fingerprint_b = facts.dataset_fingerprint([tmp_path / "b" / f for f in reversed(files)], tmp_path / "b",
                                                 [[1], [0]])
    assert fingerprint_a == fingerprint_b
    assert facts.dataset_fingerprint([tmp_path / "a" / f for f in files], tmp_path / "a", [[0], [2]]) != fingerprint_a
    (tmp_path / "a" / "2.wav").write_bytes(b"12")
    assert facts.dataset_fingerprint([tmp_path / "a" / f for f in files], tmp_path / "a", [[0], [1]]) != fingerprint_a


def test_git_state_names_the_commit_of_the_source_tree():
    state = facts.git_state()
    assert len(state["git.commit"]) == 40 or state["git.commit"] == "unknown"
    if state["git.commit"] != "unknown":
        assert state["git.dirty"] in ("true", "false")


_RACER = """
import sys, time
from pathlib import Path
from audioml.run.record import facts, tracking
from audioml.run.rundir import RunDir
from audioml.run.record.store import Store
uri, index, folder = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
(folder / f"ready{index}").touch()
while not (folder / "go").exists():  # all four start on the fresh store at the same moment
    time.sleep(0.01)
logger = tracking.open_run("race", f"job{index}", Store(uri), RunDir(folder / f"run{index}"))
for step in range(100):
    logger.log_metrics({"train/loss": 1.0 / (step + 1), "job": float(index)}, step=step)
logger.flush()  # points are buffered (ResumableMLFlowLogger): written before the run closes, as runs do
tracking.log_params(logger.experiment, logger.run_id, {f"p{i}": str(i) for i in range(150)})
tracking.set_status(logger.experiment, logger.run_id, "FINISHED")
"""


@pytest.mark.slow  # four Python processes importing Lightning (about 40 CPU-seconds)
def test_four_processes_starting_at_once_on_a_new_embedded_store_lose_nothing(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    racers = [subprocess.Popen([sys.executable, "-c", _RACER, uri, str(i), str(tmp_path)], cwd=Path(__file__).parents[3],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(4)]
    deadline = time.monotonic() + 300
    while len(list(tmp_path.glob("ready*"))) < 4:
        assert time.monotonic() < deadline and all(r.poll() is None for r in racers)
        time.sleep(0.05)
    (tmp_path / "go").touch()
    for racer in racers:
        output = racer.communicate(timeout=300)[0]
        assert racer.returncode == 0, output[-3000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("race").experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f"job{i}" for i in range(4)]
    for run in runs:
        assert run.info.status == "FINISHED" and len(run.data.params) == 150
        history = client.get_metric_history(run.info.run_id, "train/loss")
        assert sorted(m.step for m in history) == list(range(100))
