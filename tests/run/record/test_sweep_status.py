"""Where each job of a sweep stands (``audioml-compare --status``) and the seed aggregate
(``--aggregate seed``, the sweep's parent run). The status test lays out a sweep's record and
run directories as a sweep leaves them (a real MLflow store; a run directory's lock held by this
process for the running job); the aggregate test runs a real 2-config x 3-seed sweep."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from scipy import stats as scipy_stats

from audioml import compare
from audioml.files import exclusive_lock
from audioml.run.record import status
from audioml.run.rundir import RunDir

REPO = Path(__file__).resolve().parents[3]


def _run_dir(output: Path, name: str, client: MlflowClient, experiment: str, *, val: list[float],
             run_status: str, done: dict[str, float] | None = None) -> Path:
    """A run directory with its config, checkpoints and MLflow run (``val``: one point per epoch)."""
    run_dir = output / "runs" / name
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"checkpoint")
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"monitor": "val/macro_f1", "monitor_mode": "max",
                                                         "trainer": {"max_epochs": 4}}))
    run = client.create_run(experiment)
    for epoch, value in enumerate(val):
        client.log_metric(run.info.run_id, "val/macro_f1", value, step=epoch)
    if run_status != "RUNNING":
        client.set_terminated(run.info.run_id, run_status)
    RunDir(run_dir).write_run_id(run.info.run_id)
    RunDir(run_dir).record_store(client.tracking_uri)
    RunDir(run_dir).lock_file.touch()
    if done is not None:
        RunDir(run_dir).mark_done(done)
    return run_dir


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_status_shows_finished_running_interrupted_and_not_started(tmp_path, capsys):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    experiment = client.create_experiment("synthetic")
    record = status.record_dir(tmp_path / "runs", "0123456789ab")
    jobs = [["model=cnn", f"seed={seed}"] for seed in (1, 2, 3, 4)]
    status.write_plan(record, "0123456789ab", ["model=cnn", "seed=1,2,3,4"], jobs, None)
    finished = _run_dir(tmp_path, "finished", client, experiment, val=[0.2, 0.6, 0.4, 0.5], run_status="FINISHED",
                        done={"test/macro_f1": 0.55, "val/best_macro_f1": 0.6})
    # killed mid-training: checkpoints, no DONE, its MLflow run left RUNNING, nobody holds its lock
    interrupted = _run_dir(tmp_path, "interrupted", client, experiment, val=[0.1, 0.3], run_status="RUNNING")
    running = _run_dir(tmp_path, "running", client, experiment, val=[0.25], run_status="RUNNING")
    for job, run_dir in zip(jobs, (finished, interrupted, running)):
        path = status.write_job_start(record, job, run_dir, jobs.index(job))
        path.write_text(path.read_text().replace(f'"pid": {os.getpid()}', f'"pid": {_dead_pid()}'))
    with exclusive_lock(RunDir(running).lock_file):
        assert compare.main(["--status", "--output-dir", str(tmp_path)]) == 0
        states = {job.overrides[-1]: job for job in status.sweep_jobs(record)}
    printed = capsys.readouterr().out
    assert "4 jobs, 1 finished, 1 running, 1 interrupted, 1 not started" in printed
    lines = printed.split("\n\n")[0].splitlines()
    assert lines[1].split()[:3] == ["job", "seed", "state"]  # the override that differs, a column of its own
    rows = {line.split()[1]: line.split() for line in lines[2:]}
    assert rows["1"][2:6] == ["finished", "4/4", "0.6000", "0.5500"]
    assert rows["2"][2:5] == ["interrupted", "2/4", "0.3000"]
    assert rows["3"][2:5] == ["running", "1/4", "0.2500"]
    assert rows["4"][2:4] == ["not", "started"]
    assert states["seed=2"].state == "interrupted" and states["seed=2"].wall_seconds is not None
    # once the lock is released (the job died) the running job reads as interrupted
    assert {job.state for job in status.sweep_jobs(record) if job.overrides[-1] == "seed=3"} == {"interrupted"}
    summary, failed = status.failure_summary(record)
    assert failed == 0 and "interrupted job 1 seed=2" in summary and "not started job 3 seed=4" in summary
    # the comparison table's options are refused with --status, not silently ignored
    assert compare.main(["--status", "--output-dir", str(tmp_path), "--aggregate", "seed", "--csv", "x.csv"]) == 2
    assert "takes no --aggregate, --csv" in capsys.readouterr().err


def test_status_with_an_unreachable_tracking_server_reads_its_jobs_from_their_directories(tmp_path, capsys):
    """A job logged to a server that is down: the status probes it once (seconds, not MLflow's
    minutes of retries), says so, and still shows every job, the others with their scores."""
    import socket

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    experiment = client.create_experiment("synthetic")
    record = status.record_dir(tmp_path / "runs", "0123456789ab")
    jobs = [["model=cnn", f"seed={seed}"] for seed in (1, 2)]
    status.write_plan(record, "0123456789ab", ["model=cnn", "seed=1,2"], jobs, None)
    local = _run_dir(tmp_path, "local", client, experiment, val=[0.2, 0.6], run_status="FINISHED",
                     done={"test/macro_f1": 0.55, "val/best_macro_f1": 0.6})
    remote = _run_dir(tmp_path, "remote", client, experiment, val=[0.3], run_status="FINISHED",
                      done={"test/macro_f1": 0.45, "val/best_macro_f1": 0.5})
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    RunDir(remote).record_store(f"http://127.0.0.1:{port}")
    for job, run_dir in zip(jobs, (local, remote)):
        status.write_job_start(record, job, run_dir, jobs.index(job))
    assert compare.main(["--status", "--output-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "2 jobs, 2 finished" in printed
    assert f"http://127.0.0.1:{port}" in printed and "cannot be reached" in printed
    rows = {line.split()[1]: line.split() for line in printed.split("\n\n")[0].splitlines()[2:]
            if line.split() and line.split()[0].isdigit()}
    assert rows["1"][2:6] == ["finished", "2/4", "0.6000", "0.5500"]
    assert rows["2"][2] == "finished" and "0.4500" in rows["2"]  # from its DONE marker
    # a sweep named by its parent run id on that server: said at once, exit status 2
    assert compare.main(["--status", "0" * 32, "--output-dir", str(tmp_path), "--tracking-uri",
                         f"http://127.0.0.1:{port}"]) == 2
    assert "cannot be reached" in capsys.readouterr().err


def test_mean_interval_is_the_t_interval():
    from audioml.stats import mean_interval

    values = [0.61, 0.55, 0.70]
    mean, std, low, high = mean_interval(values)
    half = scipy_stats.t.ppf(0.975, 2) * np.std(values, ddof=1) / math.sqrt(3)
    assert (mean, std) == pytest.approx((np.mean(values), np.std(values, ddof=1)))
    assert (low, high) == pytest.approx((mean - half, mean + half))
    assert math.isnan(mean_interval([0.5])[2])


TINY = ["data=synthetic", "data.clips_per_class=4", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
        "evaluation.bootstrap_samples=0", "logger.log_model=false", "logger.log_checkpoint=false"]


@pytest.mark.slow  # a 6-job sweep (about 20 s)
def test_seed_aggregate_of_a_two_config_three_seed_sweep(tmp_path, capsys):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR")}
    process = subprocess.run([sys.executable, "-m", "audioml.train", "-m", *TINY, "model.backbone.dense=16,32",
                              "seed=1,2,3", f"paths.output_dir={tmp_path}"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-4000:]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("synthetic").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("audioml.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("audioml.role") != "sweep"]
    assert len(children) == 6
    # what the MLflow UI shows (audioml.run.record.presentation): the parent named after what the sweep varies,
    # each job's data as its dataset input, the experiment as model training with the audioml view
    assert parent.info.run_name == "sweep dense x seed (6 jobs)"
    for child in children:
        (data,) = child.inputs.dataset_inputs
        assert (data.dataset.name, data.dataset.digest) == ("synthetic", child.data.tags["data.fingerprint"])
    experiment = client.get_experiment_by_name("synthetic")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(json.loads(experiment.tags["mlflow.sharedViewState.audioml"])["state"])
    assert {"params.`model.backbone.dense`", "params.`seed`", "metrics.`val/best_macro_f1`",
            "metrics.`test/macro_f1`", "attributes.`Dataset`"} <= set(view["selectedColumns"])
    assert (f"#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning&viewStateShareKey=audioml"
            in process.stdout + process.stderr)
    csv = tmp_path / "aggregate.csv"
    assert compare.main(["--sweep", parent.info.run_id, "--aggregate", "seed", "--csv", str(csv),
                         "--output-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(csv)
    assert sorted(table["configuration"]) == ["model.backbone.dense=16", "model.backbone.dense=32"]
    assert list(table["n"]) == [3, 3] and list(table["seed"]) == ["1,2,3", "1,2,3"]
    for _, row in table.iterrows():
        dense = row["configuration"].split("=")[1]
        members = [c for c in children if c.data.params["model.backbone.dense"] == dense]
        for metric in ("test/macro_f1", "test/acc", "test/loss"):
            values = [c.data.metrics[metric] for c in members]
            assert row[f"{metric} mean"] == pytest.approx(np.mean(values))
            assert row[f"{metric} std"] == pytest.approx(np.std(values, ddof=1))
            assert row[f"{metric} ci_low"] <= row[f"{metric} mean"] <= row[f"{metric} ci_high"]
    assert "test/macro_f1: model.backbone.dense=" in printed and "intervals" in printed
    # the sweep's parent run holds the same numbers
    local = client.download_artifacts(parent.info.run_id, "aggregate_seed.csv", str(tmp_path))
    pd.testing.assert_frame_equal(pd.read_csv(local), table)
    assert "intervals" in Path(client.download_artifacts(parent.info.run_id, "aggregate_seed.txt",
                                                          str(tmp_path))).read_text()


def test_a_job_refused_before_its_run_opens_is_recorded_on_the_parent(tmp_path, monkeypatch):
    from hydra.core.utils import JobReturn, JobStatus
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from audioml.run.record import tracking
    from audioml.run.record.sweep import MLflowSweepCallback

    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    (tmp_path / "mlflow").mkdir()
    client = MlflowClient(uri)
    parent = client.create_run(client.create_experiment("synthetic")).info.run_id
    monkeypatch.setenv(tracking.PARENT_RUN_ENV, parent)
    monkeypatch.setenv(tracking.SWEEP_KEY_ENV, "0123456789ab")
    run_dir = tmp_path / "runs" / "synthetic-cnn-0000000000"
    run_dir.mkdir(parents=True)
    config = OmegaConf.create({"logger": {"enabled": True, "tracking_uri": uri}, "paths": {"mlflow_dir": "unused"},
                               "hydra": {"mode": RunMode.MULTIRUN, "runtime": {"output_dir": str(run_dir)},
                                         "overrides": {"task": ["trainer.max_epochs=-5"]},
                                         "sweep": {"dir": str(tmp_path / "runs")}, "job": {"num": 1}}})
    try:
        raise ValueError("trainer.max_epochs=-5: use a positive number\nsecond line")
    except ValueError as error:
        refused = JobReturn(status=JobStatus.FAILED, _return_value=error)
    callback = MLflowSweepCallback()
    callback.on_job_start(config)
    callback.on_job_end(config, refused)
    assert RunDir(run_dir).failure()["error"] == "ValueError: trainer.max_epochs=-5: use a positive number"
    (artifact,) = client.list_artifacts(parent, f"failed/{run_dir.name}")
    text = Path(client.download_artifacts(parent, artifact.path, str(tmp_path))).read_text()
    assert text.startswith("overrides: trainer.max_epochs=-5") and "Traceback (most recent call last)" in text
    status.write_plan(status.record_dir(tmp_path / "runs", "0123456789ab"), "0123456789ab",
                      ["trainer.max_epochs=-5"], [["trainer.max_epochs=-5"]], parent)
    (job,) = status.sweep_jobs(status.record_dir(tmp_path / "runs", "0123456789ab"))
    assert job.state == "failed" and job.error.startswith("ValueError: trainer.max_epochs=-5")
    callback.on_job_start(config)  # a retry forgets the failure
    assert RunDir(run_dir).failure() is None


@pytest.mark.slow  # kept out of the default run for its time (15-30 s); `pytest -m slow` runs it
def test_status_of_a_sweep_whose_job_was_killed(tmp_path):
    """A real sweep SIGKILLed in its second job's training: the first job reads finished, the
    killed one interrupted (with its epochs so far), the third not started; its rerun would
    continue the killed job."""
    import signal
    import time

    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR")}
    sweep = subprocess.Popen([sys.executable, "-m", "audioml.train", "-m", *TINY[:2], *TINY[3:],
                              "trainer.max_epochs=1,300,2", f"paths.output_dir={tmp_path}"], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and sweep.poll() is None:  # job 1 wrote its first resume checkpoint
            done = list((tmp_path / "runs").glob("*/DONE"))
            training = [p for p in (tmp_path / "runs").glob("*/checkpoints/last.ckpt")
                        if not (p.parent.parent / "DONE").exists()]
            if done and training:
                break
            time.sleep(0.2)
        assert sweep.poll() is None, "the sweep ended before its second job was killed"
    finally:
        os.killpg(sweep.pid, signal.SIGKILL)
        sweep.wait()
    (record,) = [p for p in (tmp_path / "runs" / ".sweeps").iterdir() if p.is_dir()]
    states = {next(o for o in job.overrides if o.startswith("trainer.max_epochs=")): job
              for job in status.sweep_jobs(record)}
    assert states["trainer.max_epochs=1"].state == "finished"
    killed = states["trainer.max_epochs=300"]
    assert killed.state == "interrupted", killed
    assert states["trainer.max_epochs=2"].state == "not started"
