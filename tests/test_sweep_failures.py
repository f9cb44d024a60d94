"""A sweep that cannot run ends its MLflow parent run FAILED with the reason: ``hydra/launcher=slurm``
where SLURM's tools are not on PATH (refused before submitting, one message, no traceback), and a
sweep whose job raises. Real processes, a real embedded MLflow store."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from audioml.run.sweep import LauncherUnavailableError, check_slurm_tools

REPO = Path(__file__).resolve().parents[1]
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


def test_slurm_sweep_without_slurm_ends_its_parent_failed_saying_why(tmp_path):
    path = os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"])
    if any(shutil.which(tool, path=path) for tool in ("sbatch", "srun")):
        pytest.skip("SLURM's tools are installed here")
    process = _sweep(tmp_path, "hydra/launcher=slurm", "seed=1,2", path=path)
    assert process.returncode == 1, process.stderr[-3000:]
    assert "Traceback" not in process.stderr, process.stderr[-3000:]
    assert "sbatch and srun are not on PATH here" in process.stderr and "local launcher" in process.stderr
    (parent,), children = _runs(tmp_path)
    assert parent.info.status == "FAILED" and not children
    assert parent.data.tags["audioml.error"].startswith("LauncherUnavailableError: hydra/launcher=slurm")
    assert "not on PATH" in parent.data.tags["audioml.error"]
    assert not (tmp_path / "runs" / ".submitit").exists()  # nothing was submitted


@pytest.mark.skipif(torch.cuda.is_available(), reason="trainer=ddp must fail here: no GPU")
def test_a_sweep_whose_job_fails_ends_its_parent_failed(tmp_path):
    process = _sweep(tmp_path, "trainer=ddp", "seed=1,2")
    assert process.returncode == 1
    (parent,), children = _runs(tmp_path)
    assert parent.info.status == "FAILED", parent.data.tags
    error = parent.data.tags["audioml.error"]
    assert error.startswith("ValueError: ") and "ddp_cpu" in error
    assert all(child.info.status == "FAILED" for child in children)
