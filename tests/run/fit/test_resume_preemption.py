"""Preemption with real processes: SIGKILL mid-epoch, SIGTERM, a torn checkpoint; rerunning the
same command each time ends in the same MLflow run, every epoch logged once, with exactly the
final metrics of an uninterrupted run (CPU, deterministic)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

REPO = Path(__file__).resolve().parents[3]
# 44 training clips in batches of 4: 11 steps per epoch; a resume checkpoint every 3 steps.
STEPS_PER_EPOCH = 11
COMMAND = ["data=synthetic", "model=cnn", "augmentation=specaugment", "data.batch_size=4", "data.seconds=2.0",
           "trainer.max_epochs=3", "trainer.accelerator=cpu", "trainer.deterministic=true",
           "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "evaluation.bootstrap_samples=0",
           "callbacks.resume_checkpoint.every_n_train_steps=3"]
EPOCH_METRICS = ("val/loss", "val/acc", "val/macro_f1", "train/loss", "train/acc", "train/macro_f1", "lr-Adam")


def _start(output: Path, log_name: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="1")
    log = open(output.parent / f"{output.name}-{log_name}.log", "w")
    return subprocess.Popen([sys.executable, "-m", "audioml.train", *COMMAND, f"paths.output_dir={output}"],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def _log(output: Path, log_name: str) -> str:
    return (output.parent / f"{output.name}-{log_name}.log").read_text()


def _position(output: Path) -> tuple[int, int, dict] | None:
    """(global step, epoch, train-loader state) of the run's last.ckpt, or None."""
    found = list((output / "runs").glob("*/checkpoints/last.ckpt"))
    if not found:
        return None
    try:
        checkpoint = torch.load(found[0], map_location="cpu", weights_only=False)
    except Exception:  # replaced while reading
        return None
    loader = checkpoint["loops"]["fit_loop"]["state_dict"].get("combined_loader", [{}])[0]
    return checkpoint["global_step"], checkpoint["epoch"], loader


def _wait_for_step(process: subprocess.Popen, output: Path, step: int, timeout: float = 300) -> tuple:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "training ended before it could be interrupted"
        position = _position(output)
        if position is not None and position[0] >= step:
            return position
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint at step {step} within {timeout} s")


def _finish(process: subprocess.Popen, timeout: float = 600) -> int:
    return process.wait(timeout=timeout)


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _single_run(output: Path):
    client = MlflowClient(f"sqlite:///{output / 'mlflow' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("synthetic").experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return client, runs[0]


@pytest.mark.slow  # four training processes (about 2 CPU-minutes); test_resume.py covers the same in process
def test_killed_terminated_and_torn_runs_resume_to_the_uninterrupted_result(tmp_path):
    reference_out, out = tmp_path / "reference", tmp_path / "preempted"
    reference = _start(reference_out, "run")
    first = _start(out, "first")

    # 1. SIGKILL in the middle of epoch 2, right after a mid-epoch checkpoint
    _, epoch, loader = _wait_for_step(first, out, STEPS_PER_EPOCH + 3)
    first.send_signal(signal.SIGKILL)
    assert _finish(first) == -signal.SIGKILL
    killed_at = _position(out)
    assert killed_at[1] == 1 and 0 < killed_at[2]["batches"] < STEPS_PER_EPOCH, killed_at  # a mid-epoch checkpoint
    (run_dir,) = (out / "runs").iterdir()
    run_id = (run_dir / "mlflow_run_id").read_text()
    assert not (run_dir / "DONE").exists()

    # 2. the same command continues; SIGTERM makes it checkpoint and exit cleanly, resumable
    second = _start(out, "second")
    signalled_at = _wait_for_step(second, out, killed_at[0] + 4)[0]
    second.send_signal(signal.SIGTERM)
    assert _finish(second) == 143, _log(out, "second")[-3000:]
    assert "checkpoint after this batch" in _log(out, "second")
    assert _position(out)[0] > signalled_at  # the SIGTERM checkpoint, newer than any before the signal
    client, run = _single_run(out)
    assert run.info.run_id == run_id and run.info.status == "KILLED"

    # 3. a torn last.ckpt (e.g. the machine died while the drive synced it): the previous one is used
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])
    third = _start(out, "third")
    assert _finish(third) == 0, _log(out, "third")[-3000:]
    assert "last.ckpt is damaged" in _log(out, "third")
    assert _finish(reference) == 0, _log(reference_out, "run")[-3000:]

    # the same run, every epoch once, the uninterrupted run's numbers
    client, run = _single_run(out)
    reference_client, reference_run = _single_run(reference_out)
    assert run.info.run_id == run_id and run.info.status == "FINISHED" and (run_dir / "DONE").is_file()
    for key in EPOCH_METRICS:
        history = _history(client, run_id, key)
        assert len(history) == 3 and len({step for step, _ in history}) == 3, (key, history)
        assert history == _history(reference_client, reference_run.info.run_id, key), key
    metrics = json.loads((run_dir / "metrics.json").read_text())
    (reference_dir,) = (reference_out / "runs").iterdir()
    assert reference_dir.name == run_dir.name  # the run directory is named from the config alone
    assert metrics == json.loads((reference_dir / "metrics.json").read_text())
    assert run.data.metrics["test/macro_f1"] == pytest.approx(metrics["test/macro_f1"])
