"""One process at a time in a run directory: the same command started while another process
works there waits for it, then finds the run finished instead of training it a second time."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from helpers.runners import REPO

from audioml.files import exclusive_lock
from audioml.run.rundir import RunDir


def test_the_same_command_twice_waits_for_the_first_and_does_not_train_again(tmp_path):
    run_dir = tmp_path / "runs" / "busy"
    command = [sys.executable, "-m", "audioml.train", "data=synthetic", "model=cnn", "model.backbone.channels=[8,16]",
               "model.backbone.dense=16", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
               f"paths.output_dir={tmp_path / 'out'}", f"hydra.run.dir={run_dir}"]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "AUDIOML_CONFIG_PATH")}
    with exclusive_lock(RunDir(run_dir).lock_file):  # the first process, busy in the run directory
        second = subprocess.Popen(command, cwd=REPO, env={**env, "PYTHONUNBUFFERED": "1"}, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        seen, deadline = [], time.monotonic() + 240
        for line in second.stdout:
            seen.append(line)
            if "another process is training in" in line or time.monotonic() > deadline:
                break
        assert any(str(run_dir) in line and "waiting until it ends" in line for line in seen), "".join(seen)
        time.sleep(1.0)
        assert second.poll() is None and not (run_dir / "checkpoints").exists()  # it waits, untouched
        RunDir(run_dir).mark_done({"test/acc": 0.5})  # the first one finishes
    rest, _ = second.communicate(timeout=240)
    assert second.returncode == 0, "".join(seen) + rest
    assert "finished before" in rest and not (run_dir / "checkpoints").exists()
    assert "MLflow run" not in "".join(seen) + rest  # no second MLflow run was opened
