"""A real ``mlflow server`` (SQLite backend, local artifact store) on 127.0.0.1 receives a 2-job
sweep through ``logger.tracking_uri``; everything is read back through its REST API."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from helpers.servers import start_mlflow_server, stop_mlflow_server

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def server(tmp_path):
    process, url = start_mlflow_server(tmp_path)
    yield url
    stop_mlflow_server(process)


def _get(url: str, endpoint: str, **query) -> dict:
    with urllib.request.urlopen(f"{url}{endpoint}?{urllib.parse.urlencode(query)}", timeout=30) as response:
        return json.loads(response.read())


def _post(url: str, endpoint: str, body: dict) -> dict:
    request = urllib.request.Request(f"{url}{endpoint}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.mark.slow  # an mlflow server and a 2-job sweep (about a CPU-minute)
def test_sweep_logged_to_a_real_mlflow_server_reads_back_complete(server, tmp_path):
    output = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    process = subprocess.run(
        [sys.executable, "-m", "audioml.train", "-m", "data=synthetic", "data.clips_per_class=12",
         "model.backbone.dense=32,64", "trainer.max_epochs=2", "trainer.accelerator=cpu", "data.batch_size=8",
         "trainer.enable_progress_bar=false", "evaluation.bootstrap_samples=0", f"logger.tracking_uri={server}",
         f"paths.output_dir={output}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert process.returncode == 0, process.stderr[-5000:]
    assert not (output / "mlflow").exists()  # nothing went to the embedded store

    experiment = _get(server, "/api/2.0/mlflow/experiments/get-by-name", experiment_name="synthetic")["experiment"]
    runs = _post(server, "/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    tags = [{t["key"]: t["value"] for t in run["data"].get("tags", [])} for run in runs]
    parents = [run for run, t in zip(runs, tags) if t.get("audioml.role") == "sweep"]
    children = [(run, t) for run, t in zip(runs, tags) if t.get("audioml.role") != "sweep"]
    assert len(parents) == 1 and len(children) == 2 and parents[0]["info"]["status"] == "FINISHED"
    for run, run_tags in children:
        run_id = run["info"]["run_id"]  # its run directory recorded it (run names are titles, not folders)
        (run_dir,) = [p.parent for p in (output / "runs").glob("*/mlflow_run_id") if p.read_text().strip() == run_id]
        assert run_tags["mlflow.parentRunId"] == parents[0]["info"]["run_id"] and run["info"]["status"] == "FINISHED"
        assert {"host", "device", "git.commit", "data.fingerprint"} <= set(run_tags)
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert params["model.backbone.dense"] == str(config["model"]["backbone"]["dense"])
        assert params["seed"] == "42" and len(params) > 50
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        written = json.loads((run_dir / "metrics.json").read_text())
        assert all(metrics[k] == pytest.approx(v) for k, v in written.items())
        history = _get(server, "/api/2.0/mlflow/metrics/get-history", run_id=run_id, metric_key="val/loss")["metrics"]
        assert len(history) == 2 and len({m["step"] for m in history}) == 2
        listed = _get(server, "/api/2.0/mlflow/artifacts/list", run_id=run_id)["files"]
        assert {"config.yaml", "metrics.json", "checkpoints", "test_predictions.csv"} <= {f["path"] for f in listed}
        checkpoints = _get(server, "/api/2.0/mlflow/artifacts/list", run_id=run_id, path="checkpoints")["files"]
        assert len(checkpoints) == 1 and checkpoints[0]["file_size"] > 10_000
        with urllib.request.urlopen(f"{server}/get-artifact?" + urllib.parse.urlencode(
                {"path": "metrics.json", "run_uuid": run_id}), timeout=30) as response:
            assert json.loads(response.read()) == written


@contextlib.contextmanager
def _basic_auth_server(tmp_path):
    """MLflow's basic-auth app on 127.0.0.1 (the README's team server)."""
    (tmp_path / "auth.ini").write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{tmp_path / 'auth.db'}\nadmin_username = admin\n"
        "admin_password = a-long-team-password-42\nauthorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    process, url = start_mlflow_server(tmp_path, "--app-name", "basic-auth",
                                 env={"MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "auth.ini"),
                                      "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret"})
    try:
        yield url
    finally:
        stop_mlflow_server(process)


@contextlib.contextmanager
def _credentials():
    os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD="a-long-team-password-42")
    try:
        yield
    finally:
        for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(key, None)


@pytest.mark.slow  # an auth server started and a run logged through it (about 45 s)
def test_a_basic_auth_server_refuses_anonymous_writes_and_takes_a_run_with_credentials(tmp_path):
    """Runs authenticate with MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (the way
    audioml-train's MLflow client does; the whole training run is the slow test below)."""
    from mlflow import MlflowClient

    with _basic_auth_server(tmp_path) as url:
        with pytest.raises(urllib.error.HTTPError) as anonymous:
            _post(url, "/api/2.0/mlflow/experiments/create", {"name": "intruder"})
        assert anonymous.value.code == 401
        with _credentials():
            client = MlflowClient(url)
            run = client.create_run(client.create_experiment("team"))
            client.log_metric(run.info.run_id, "test/macro_f1", 0.5)
            client.set_terminated(run.info.run_id)
            logged = client.get_run(run.info.run_id)
        assert logged.info.status == "FINISHED" and logged.data.metrics == {"test/macro_f1": 0.5}


@pytest.mark.slow
def test_audioml_train_logs_into_a_basic_auth_server_with_credentials(tmp_path):
    """A whole audioml-train run into the basic-auth server (every request checks the password
    hash: ~50 s)."""
    from mlflow import MlflowClient

    with _basic_auth_server(tmp_path) as url:
        output = tmp_path / "out"
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        env.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD="a-long-team-password-42")
        trained = subprocess.run(
            [sys.executable, "-m", "audioml.train", "data=synthetic", "data.clips_per_class=8",
             "model.backbone.channels=[8,16]", "model.backbone.dense=16", "trainer.max_epochs=1",
             "trainer.enable_progress_bar=false", f"logger.tracking_uri={url}", f"paths.output_dir={output}"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert trained.returncode == 0, trained.stderr[-5000:]
        with _credentials():
            runs = MlflowClient(url).search_runs([MlflowClient(url).get_experiment_by_name("synthetic").experiment_id])
        assert len(runs) == 1 and runs[0].info.status == "FINISHED" and "test/macro_f1" in runs[0].data.metrics
