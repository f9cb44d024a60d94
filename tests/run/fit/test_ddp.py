"""``trainer=ddp_cpu``: two gloo processes per job, for a single run and inside a multirun sweep,
with exactly one MLflow run per job (rank zero logs) and the test set evaluated once."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

REPO = Path(__file__).resolve().parents[3]
TINY = ["data=synthetic", "data.clips_per_class=12", "trainer=ddp_cpu", "trainer.max_epochs=2",
        "data.batch_size=4", "evaluation.bootstrap_samples=0"]  # default progress bar and logger: they once hung DDP


def _train(output: Path, *overrides: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="1")
    process = subprocess.run([sys.executable, "-m", "audioml.train", *overrides, *TINY, f"paths.output_dir={output}"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert process.returncode == 0, f"{process.stdout[-3000:]}\n{process.stderr[-5000:]}"
    return process.stdout + process.stderr


def _run_dir_of(output: Path, run_id: str) -> Path:
    """The run directory that recorded MLflow run ``run_id`` (run names are titles, not folders)."""
    (run_dir,) = [p.parent for p in (output / "runs").glob("*/mlflow_run_id") if p.read_text().strip() == run_id]
    return run_dir


def _check_job(client: MlflowClient, run, run_dir: Path) -> None:
    assert (run_dir / "train_ddp_process_1.log").is_file()  # rank 1 ran this very job, in its directory
    assert (run_dir / "mlflow_run_id").read_text() == run.info.run_id
    assert run.info.status == "FINISHED" and run.data.tags["device"] == "cpu x2"
    for key in ("val/loss", "val/macro_f1", "train/loss"):  # reduced across ranks, logged once per epoch
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == sorted(
            {m.step for m in client.get_metric_history(run.info.run_id, key)}) and len(
            client.get_metric_history(run.info.run_id, key)) == 2, key
    per_rank = [re.findall(r"rank (\d) of 2, epoch (\d): (.*)", (run_dir / name).read_text())
                for name in ("train.log", "train_ddp_process_1.log")]
    assert [r[0] for r in per_rank[0]] == ["0", "0"] and [r[0] for r in per_rank[1]] == ["1", "1"]
    assert [r[1:] for r in per_rank[0]] == [r[1:] for r in per_rank[1]]  # identical metrics on both ranks
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert run.data.metrics["test/macro_f1"] == pytest.approx(metrics["test/macro_f1"])
    predictions = pd.read_csv(run_dir / "test_predictions.csv")
    test_clips = int(re.search(r"'test': (\d+)", (run_dir / "train.log").read_text()).group(1))
    assert len(predictions) == predictions["path"].nunique() == test_clips  # each once: tested on one device
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints and sum(n.startswith("best-") for n in checkpoints) == 1


@pytest.mark.slow  # two processes (about 40 CPU-seconds)
def test_ddp_cpu_single_run_is_one_mlflow_run(tmp_path):
    log = _train(tmp_path)
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("synthetic").experiment_id])
    (run_dir,) = (tmp_path / "runs").iterdir()
    _check_job(client, run, run_dir)


@pytest.mark.slow  # two jobs of two processes each (about 80 CPU-seconds)
def test_ddp_cpu_inside_a_two_job_multirun(tmp_path):
    log = _train(tmp_path, "-m", "model.backbone.dense=32,64")
    # each job started its own second rank (the rank-1 log in each job directory: _check_job)
    assert log.count("GLOBAL_RANK: 1, MEMBER: 2/2") >= 2
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("synthetic").experiment_id])
    parents = [r for r in runs if r.data.tags.get("audioml.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("audioml.role") != "sweep"]
    assert len(parents) == 1 and len(children) == 2
    assert sorted(r.data.params["model.backbone.dense"] for r in children) == ["32", "64"]
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        _check_job(client, run, _run_dir_of(tmp_path, run.info.run_id))


@pytest.mark.slow  # two spawned processes (about 30 CPU-seconds)
def test_ddp_spawn_run_logs_its_reports(tmp_path):
    """``trainer=ddp_cpu trainer.strategy=ddp_spawn``: the fit runs in spawned processes, whose copies of the
    callbacks drew the learning curves; the run still logs them with its other reports."""
    _train(tmp_path, "trainer.strategy=ddp_spawn")  # trainer=ddp_cpu: two CPU processes
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("synthetic").experiment_id])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"learning_curves.png", "learning_curves.csv", "metrics.json", "confusion_matrix.png"} <= artifacts
    assert run.info.status == "FINISHED"
