"""A run's MLflow record completed in the background (audioml.run.record.finishing): inside a scope the
report worker completes it while the next run trains, with the same MLflow runs and files as
inline; the run directory stays locked until DONE; a worker that ends first leaves the finish to
the caller; a finish that fails marks the MLflow run FAILED with its traceback and is returned.
Real worker process, real Trainer, real embedded MLflow store."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path

import pytest
from mlflow import MlflowClient

from audioml.api import compose_config, train
from audioml.files import exclusive_lock, lock_is_held
from audioml.run.figures import drawing as figures
from audioml.run.record import finishing

TINY = ["data=synthetic", "data.clips_per_class=4", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
        "evaluation.bootstrap_samples=0"]


@pytest.fixture(autouse=True)
def no_scope_left(monkeypatch: pytest.MonkeyPatch):
    """This test's own scopes and pending finishes (none leaks into the next test)."""
    monkeypatch.setattr(finishing, "_scopes", [])
    monkeypatch.setattr(finishing, "_pending", {})


def _record(output: Path, run_dir: Path):
    client = MlflowClient(f"sqlite:///{output / 'mlflow' / 'mlflow.db'}")
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    run = client.get_run(run_id)
    return client, run, sorted(a.path for a in client.list_artifacts(run_id)) + \
        sorted(f"checkpoints/{Path(a.path).name}" for a in client.list_artifacts(run_id, "checkpoints"))


@pytest.mark.slow  # two runs completed inline and two in the worker (about 40 s)
def test_runs_of_a_scope_complete_in_the_worker_as_they_would_inline(tmp_path: Path, fresh_worker, caplog) -> None:
    caplog.set_level(logging.INFO, logger="audioml")
    _, inline_dir = train(compose_config([*TINY, f"paths.output_dir={tmp_path / 'inline'}"]))
    assert "completed in the background" not in caplog.text
    run_dirs = []
    with finishing.deferred():
        for seed in (1, 2):
            _, run_dir = train(compose_config([*TINY, f"seed={seed}", f"paths.output_dir={tmp_path / 'sweep'}"]))
            run_dirs.append(run_dir)
    assert caplog.text.count("completed in the background") == 2 and "completed here" not in caplog.text
    assert caplog.text.count("MLflow model logged") == 3  # the worker's lines come back to this process
    _, inline_run, inline_artifacts = _record(tmp_path / "inline", inline_dir)
    for run_dir in run_dirs:
        assert (run_dir / "DONE").is_file() and not lock_is_held(run_dir / ".lock")
        client, run, artifacts = _record(tmp_path / "sweep", run_dir)
        assert run.info.status == "FINISHED" and artifacts == inline_artifacts
        assert run.data.tags["audioml.tested_checkpoint"] == inline_run.data.tags["audioml.tested_checkpoint"]
        assert len(run.outputs.model_outputs) == 1  # the MLflow model
        assert set(run.data.metrics) == set(inline_run.data.metrics)
    assert figures._worker.process.poll() is None


def _stopped_worker() -> int:
    assert figures.start(preload=[finishing.__name__])
    pid = figures._worker.process.pid
    os.kill(pid, signal.SIGSTOP)
    return pid


def test_the_run_directory_stays_locked_until_its_record_is_complete(tmp_path: Path, fresh_worker) -> None:
    pid = _stopped_worker()
    try:
        finishing.start_deferring()
        hold = contextlib.ExitStack()
        hold.enter_context(exclusive_lock(tmp_path / ".lock"))
        finishing.finish({"run_dir": str(tmp_path), "run_id": None, "done": {"test/acc": 0.5}, "wait_for": []})
        finishing.hold_until_finished(tmp_path, hold)
        assert lock_is_held(tmp_path / ".lock") and not (tmp_path / "DONE").exists()
    finally:
        os.kill(pid, signal.SIGCONT)
    assert finishing.stop_deferring() == []
    assert (tmp_path / "DONE").is_file() and not lock_is_held(tmp_path / ".lock")


def test_a_sweep_job_keeps_its_run_directory_locked_until_the_worker_writes_done(tmp_path: Path,
                                                                                   fresh_worker) -> None:
    """Through audioml-train's own path (the lock taken and handed over by the run layer)."""
    pid = _stopped_worker()
    try:
        with finishing.deferred():
            try:
                _, run_dir = train(compose_config([*TINY, f"paths.output_dir={tmp_path}"]))
                assert lock_is_held(run_dir / ".lock") and not (run_dir / "DONE").exists()
            finally:
                os.kill(pid, signal.SIGCONT)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert (run_dir / "DONE").is_file() and not lock_is_held(run_dir / ".lock")
    _, run, _ = _record(tmp_path, run_dir)
    assert run.info.status == "FINISHED"


def test_a_finish_the_worker_did_not_complete_is_completed_by_the_caller(tmp_path: Path, fresh_worker) -> None:
    pid = _stopped_worker()
    with finishing.deferred():
        finishing.finish({"run_dir": str(tmp_path), "run_id": None, "done": {"test/acc": 0.5}, "wait_for": []})
        hold = contextlib.ExitStack()
        hold.enter_context(exclusive_lock(tmp_path / ".lock"))
        finishing.hold_until_finished(tmp_path, hold)
        os.kill(pid, signal.SIGKILL)
        figures._worker.reader.join(timeout=30)
        assert lock_is_held(tmp_path / ".lock") and not (tmp_path / "DONE").exists()  # not released unfinished
    assert (tmp_path / "DONE").is_file() and not lock_is_held(tmp_path / ".lock")


def test_a_worker_that_does_not_answer_is_stopped_and_the_caller_completes_the_run(tmp_path: Path,
                                                                                    fresh_worker, caplog) -> None:
    _stopped_worker()
    finishing.start_deferring()
    finishing.finish({"run_dir": str(tmp_path), "run_id": None, "done": {"test/acc": 0.5}, "wait_for": []})
    assert finishing.wait_for(tmp_path, timeout=1) is None
    assert (tmp_path / "DONE").is_file() and "stopping it, the record is completed here" in caplog.text
    assert figures._worker.process.poll() is not None  # never two completions of one run at once
    assert finishing.stop_deferring() == []


def test_a_failed_finish_marks_the_run_failed_and_is_reported(tmp_path: Path, fresh_worker) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("finishing")).info.run_id
    spec = {"run_dir": str(tmp_path), "tracking_uri": uri, "run_id": run_id, "done": {"test/acc": 0.5},
            "wait_for": [], "model": {"checkpoint": str(tmp_path / "gone.ckpt"), "record": {}, "trusted": []}}
    (tmp_path / "learning_curves.csv").write_text("epoch,val/loss\n0,1.0\n")
    spec["artifacts"] = [str(tmp_path / "learning_curves.csv")]
    recorded = []
    finishing.start_deferring(on_failure=recorded.append)
    finishing.finish(spec)
    (failure,) = finishing.stop_deferring()
    assert recorded == [failure]  # told as it came (a sweep writes FAILED then)
    assert failure.run_dir == tmp_path and failure.error.startswith("FileNotFoundError")
    assert "gone.ckpt" in failure.traceback
    assert not (tmp_path / "DONE").exists()
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["audioml.error"].startswith("FileNotFoundError")
    assert {"traceback.txt", "learning_curves.csv"} <= {a.path for a in client.list_artifacts(run_id)}
    with pytest.raises(finishing.RunFinishError, match="gone.ckpt"), finishing.deferred():
        finishing.finish(spec)


def test_the_worker_lines_of_a_run_go_to_its_own_log_not_to_the_job_training_meanwhile(tmp_path: Path, caplog) -> None:
    """A run's record answered while the next job logs to its own train.log: the lines reach the
    console and the finished run's log, once, and not the next job's."""
    finished, training = tmp_path / "finished", tmp_path / "training"
    for folder in (finished, training):
        folder.mkdir()
    (finished / "train.log").write_text("[earlier lines of the finished run]\n")
    job_log = logging.FileHandler(training / "train.log", encoding="utf-8")
    root = logging.getLogger()
    root.addHandler(job_log)
    caplog.set_level(logging.INFO, logger="audioml")
    try:
        logging.getLogger("audioml.run.fit.training").info("a line of the job training now")
        answer = {"logs": [[logging.INFO, "audioml.run.use.serving", "MLflow model logged: runs:/abc/model"],
                           [logging.DEBUG, "audioml.run.use.serving", "a debug line, below the level"]]}
        finishing._log_answer(answer, {"run_dir": str(finished), "log_file": str(finished / "train.log")})
    finally:
        root.removeHandler(job_log)
        job_log.close()
    own = (finished / "train.log").read_text()
    assert own.count("MLflow model logged: runs:/abc/model") == 1 and "debug line" not in own
    assert own.startswith("[earlier lines of the finished run]")
    assert "MLflow model logged" not in (training / "train.log").read_text()
    assert "a line of the job training now" in (training / "train.log").read_text()
    assert caplog.text.count("MLflow model logged: runs:/abc/model") == 1  # the console has it
