"""A sweep that cannot run ends its MLflow parent run FAILED with the reason: ``hydra/launcher=slurm``
where SLURM's tools are not on PATH (refused before submitting, one message, no traceback), and a
sweep whose job raises. A sweep survives a failing job: the others finish, the failed one is
FAILED in MLflow with its traceback, the sweep ends with a summary and exit status 1, and a rerun
retries only the failed job. Real processes, a real embedded MLflow store."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from audioml import compare
from audioml.run.record.sweep import LauncherUnavailableError, check_slurm_tools

REPO = Path(__file__).resolve().parents[3]
TINY = ["data=synthetic", "data.clips_per_class=4", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]


def _sweep(output: Path, *overrides: str, path: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR")}
    env.update(PYTHONUNBUFFERED="1", **({"PATH": path} if path else {}))
    return subprocess.run([sys.executable, "-m", "audioml.train", "-m", *TINY, *overrides,
                           f"paths.output_dir={output}"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def _runs(output: Path):
    client = MlflowClient(f"sqlite:///{output / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("synthetic").experiment_id
    runs = client.search_runs([experiment])
    return ([r for r in runs if r.data.tags.get("audioml.role") == "sweep"],
            [r for r in runs if r.data.tags.get("audioml.role") != "sweep"])


def test_slurm_tools_are_named_when_missing():
    check_slurm_tools(lambda tool: f"/usr/bin/{tool}")  # both there: nothing to say
    with pytest.raises(LauncherUnavailableError, match=r"and srun is not on PATH here: .*local launcher"):
        check_slurm_tools(lambda tool: "/usr/bin/sbatch" if tool == "sbatch" else None)


@pytest.mark.slow  # a sweep refused by its launcher (about 15 s)
def test_slurm_sweep_without_slurm_ends_its_parent_failed_saying_why(tmp_path):
    path = os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"])
    if any(shutil.which(tool, path=path) for tool in ("sbatch", "srun")):
        pytest.skip("SLURM's tools are installed here")
    process = _sweep(tmp_path, "hydra/launcher=slurm", "seed=1,2", path=path)
    assert process.returncode == 2, process.stderr[-3000:]  # a launcher this machine lacks: the user's mistake
    assert "Traceback" not in process.stderr, process.stderr[-3000:]
    assert "sbatch and srun are not on PATH here" in process.stderr and "local launcher" in process.stderr
    (parent,), children = _runs(tmp_path)
    assert parent.info.status == "FAILED" and not children
    assert parent.data.tags["audioml.error"].startswith("LauncherUnavailableError: hydra/launcher=slurm")
    assert "not on PATH" in parent.data.tags["audioml.error"]
    assert not (tmp_path / "runs" / ".submitit").exists()  # nothing was submitted


@pytest.mark.slow  # a sweep of refused jobs (the failing-sweep fixture covers a failed job by default)
@pytest.mark.skipif(torch.cuda.is_available(), reason="trainer=ddp must fail here: no GPU")
def test_a_sweep_whose_job_fails_ends_its_parent_failed(tmp_path):
    process = _sweep(tmp_path, "trainer=ddp", "seed=1,2")
    assert process.returncode == 1
    (parent,), children = _runs(tmp_path)
    assert parent.info.status == "FAILED", parent.data.tags
    error = parent.data.tags["audioml.error"]
    assert error.startswith("ValueError: ") and "ddp_cpu" in error
    assert all(child.info.status == "FAILED" for child in children)


#: The middle job's optimiser refuses its learning rate once training starts (its MLflow run is open).
FAILING_MIDDLE = ["model.optimizer.lr=0.001,nan,0.002", "evaluation.bootstrap_samples=0", "logger.log_model=false",
                  "logger.log_checkpoint=false"]


@pytest.fixture(scope="module")
def failing_sweep(tmp_path_factory):
    """A 3-job sweep whose middle job raises, run twice with the same command."""
    output = tmp_path_factory.mktemp("failing")
    first = _sweep(output, *FAILING_MIDDLE)
    done = {p.parent.name: p.stat().st_mtime_ns for p in (output / "runs").glob("*/DONE")}
    (failed_dir,) = [p.parent for p in (output / "runs").glob("*/FAILED")]
    traceback_before = (failed_dir / "traceback.txt").stat().st_mtime_ns
    second = _sweep(output, *FAILING_MIDDLE)
    return output, first, second, done, failed_dir, traceback_before


def test_a_failing_job_is_recorded_and_the_sweep_goes_on(failing_sweep):
    output, first, _, done, failed_dir, _ = failing_sweep
    assert first.returncode == 1, first.stderr[-3000:]
    assert len(done) == 2  # the jobs before and after the failing one finished
    log = first.stdout + first.stderr
    assert "sweep " in log and "3 jobs, 2 finished, 1 failed" in log
    assert "failed job 1 model.optimizer.lr=nan: ValueError: Invalid learning rate: nan" in log
    assert f"traceback: {failed_dir / 'traceback.txt'}" in log
    assert json.loads((failed_dir / "FAILED").read_text())["error"] == "ValueError: Invalid learning rate: nan"
    (parent,), children = _runs(output)
    assert parent.info.status == "FAILED"
    assert {a.path for a in MlflowClient(f"sqlite:///{output / 'mlflow' / 'mlflow.db'}").list_artifacts(
        parent.info.run_id)} >= {"sweep_status.csv", "sweep_summary.txt"}
    by_lr = {c.data.params["model.optimizer.lr"]: c for c in children}
    assert sorted(by_lr) == ["0.001", "0.002", "nan"] and len(children) == 3
    failed = by_lr["nan"]
    assert failed.info.status == "FAILED"
    assert failed.data.tags["audioml.error"] == "ValueError: Invalid learning rate: nan"
    assert "model.optimizer.lr=nan" in json.loads(failed.data.tags["audioml.overrides"])
    client = MlflowClient(f"sqlite:///{output / 'mlflow' / 'mlflow.db'}")
    local = client.download_artifacts(failed.info.run_id, "traceback.txt", str(output))
    text = Path(local).read_text()
    assert "Traceback (most recent call last)" in text and "ValueError: Invalid learning rate: nan" in text
    for lr in ("0.001", "0.002"):
        assert by_lr[lr].info.status == "FINISHED"
        # system metrics in every run: at least one sample even for a run shorter than the interval
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(
            by_lr[lr].data.metrics), sorted(by_lr[lr].data.metrics)


def test_rerun_retries_only_the_failed_job(failing_sweep):
    output, _, second, done, failed_dir, traceback_before = failing_sweep
    assert second.returncode == 1
    log = second.stdout + second.stderr
    assert {p.parent.name: p.stat().st_mtime_ns for p in (output / "runs").glob("*/DONE")} == done
    assert all(f"{name} finished before" in log for name in done) and log.count("finished before") == 2
    failed_run = (failed_dir / "mlflow_run_id").read_text().strip()
    assert log.count("continuing MLflow run") == 1 and f"continuing MLflow run {failed_run}" in log
    assert (failed_dir / "traceback.txt").stat().st_mtime_ns > traceback_before  # it ran (and failed) again
    (parent,), children = _runs(output)
    assert len(children) == 3 and parent.data.tags["audioml.sweep_key"]


def test_status_of_the_failed_sweep(failing_sweep, capsys):
    output = failing_sweep[0]
    (parent,), _ = _runs(output)
    assert compare.main(["--status", parent.info.run_id, "--output-dir", str(output)]) == 0
    first_block = capsys.readouterr().out.split("\n\n")[0]  # further columns may follow in another block
    header, *lines = first_block.splitlines()[1:]
    assert header.split()[:4] == ["job", "lr", "state", "epochs"]  # one column per varied override
    rows = {line.split()[1]: line for line in lines}
    assert rows["0.001"].split()[2:4] == ["finished", "1/1"]
    assert rows["nan"].split()[2:4] == ["failed", "0/1"]


@pytest.mark.slow  # kept out of the default run for its time (15-30 s); `pytest -m slow` runs it
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one CPU: no report worker, records completed inline")
def test_jobs_whose_record_fails_after_training_are_failed_jobs(tmp_path, monkeypatch):
    """The MLflow model is logged by the report worker while the next job trains
    (audioml.run.record.finishing): a registration MLflow refuses fails those jobs, recorded as any other
    failure (each one when the worker answers)."""
    monkeypatch.setenv("AUDIOML_FIGURE_WORKER", "1")
    process = _sweep(tmp_path, "seed=1,2", "logger.register_model='bad:name'", "evaluation.bootstrap_samples=0")
    log = process.stdout + process.stderr
    assert process.returncode == 1, log[-3000:]
    assert log.count("completed in the background") == 2 and "2 jobs, 2 failed" in log
    assert "could not log the sweep's status" not in log  # no seed aggregate without a finished job
    failed_dirs = [p.parent for p in (tmp_path / "runs").glob("*/FAILED")]
    assert len(failed_dirs) == 2
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    for failed_dir in failed_dirs:
        assert "Invalid model name 'bad:name'" in json.loads((failed_dir / "FAILED").read_text())["error"]
        assert not (failed_dir / "DONE").exists() and "Traceback" in (failed_dir / "traceback.txt").read_text()
        run = client.get_run((failed_dir / "mlflow_run_id").read_text().strip())
        assert run.info.status == "FAILED" and "Invalid model name" in run.data.tags["audioml.error"]
        assert "traceback.txt" in [a.path for a in client.list_artifacts(run.info.run_id)]
    (parent,), _ = _runs(tmp_path)
    assert parent.info.status == "FAILED"
