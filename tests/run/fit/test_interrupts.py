"""Ctrl-C ends every MLflow run KILLED, never RUNNING or FAILED (issue 35, 3m): in-process (where
Lightning turns the interrupt into ``exit(1)``) and in a parallel sweep whose workers die with it;
the rerun continues the same runs, and a completed run no longer carries the stopped attempt's
error (it is kept as ``audioml.previous_error``)."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from audioml.api import compose_config, train

TINY = ["data=synthetic", "model=cnn", "model.backbone.channels=[8,16]", "model.backbone.dense=16",
        "data.num_workers=0", "trainer.enable_progress_bar=false", "logger.system_metrics=false"]


def _runs(store):
    client = MlflowClient(store)
    return client, client.search_runs([e.experiment_id for e in client.search_experiments()])


def test_a_rerun_after_ctrl_c_finishes_the_same_run_without_its_error(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    overrides = [*TINY, "trainer.max_epochs=3", f"paths.output_dir={tmp_path}",
                 "+callbacks.interrupt._target_=helpers.callbacks.InterruptAfterEpoch", "+callbacks.interrupt.epoch=1",
                 f"+callbacks.interrupt.marker={tmp_path / 'interrupted'}"]
    with pytest.raises((SystemExit, KeyboardInterrupt)):
        train(compose_config(overrides))
    client, (stopped,) = _runs(store)
    assert stopped.info.status == "KILLED" and stopped.data.tags["audioml.error"] == "stopped by Ctrl-C"
    train(compose_config(overrides))
    client, (finished,) = _runs(store)
    assert finished.info.run_id == stopped.info.run_id and finished.info.status == "FINISHED"
    assert "audioml.error" not in finished.data.tags
    assert finished.data.tags["audioml.previous_error"] == "stopped by Ctrl-C"


@pytest.mark.slow  # a parallel sweep of two 30-epoch jobs interrupted, then rerun (about two minutes)
def test_ctrl_c_during_a_parallel_sweep_leaves_no_run_running(tmp_path):
    output = tmp_path / "out"
    command = [sys.executable, "-m", "audioml.train", "-m", "hydra/launcher=parallel", *TINY, "trainer.max_epochs=30",
               "seed=1,2", f"paths.output_dir={output}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("MLFLOW_TRACKING_URI", None)
    sweep = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                             start_new_session=True)
    deadline = time.monotonic() + 300
    while len(glob.glob(str(output / "runs" / "*" / "checkpoints" / "last.ckpt"))) < 2:
        assert sweep.poll() is None and time.monotonic() < deadline, sweep.stderr.read().decode()[-3000:]
        time.sleep(0.5)
    os.killpg(sweep.pid, signal.SIGINT)
    sweep.wait(timeout=300)
    client, runs = _runs(f"sqlite:///{output / 'mlflow' / 'mlflow.db'}")
    assert sorted(r.info.status for r in runs) == ["KILLED"] * 3, [(r.info.run_name, r.info.status, r.data.tags.get("audioml.error")) for r in runs]
    rerun = subprocess.run([*command[:-2], "trainer.max_epochs=30", "seed=1,2", f"paths.output_dir={output}"],
                           capture_output=True, text=True, env=env, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    client, runs = _runs(f"sqlite:///{output / 'mlflow' / 'mlflow.db'}")
    jobs = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(jobs) == 2 and all(r.info.status == "FINISHED" and "audioml.error" not in r.data.tags for r in jobs)
