"""Hydra multirun sweeps with real processes and a real MLflow store: a 2x2 grid interrupted by
SIGKILL and rerun (finished jobs skipped, the rest trained) ends as one parent run with four
children; jobs in parallel processes against one embedded store; an Optuna study continued."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from audioml import compare

REPO = Path(__file__).resolve().parents[3]
TINY = ["data=synthetic", "data.clips_per_class=12", "trainer.max_epochs=2", "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false", "evaluation.bootstrap_samples=0", "data.batch_size=8"]
GRID = ["model.backbone.dense=32,64", "loss=ce,weighted_ce"]


def _command(output: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "audioml.train", "-m", *TINY, *overrides, f"paths.output_dir={output}"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="1")
    return env


def _run(command: list[str], timeout: float = 900) -> str:
    process = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert process.returncode == 0, f"{process.stdout[-3000:]}\n{process.stderr[-5000:]}"
    return process.stdout + process.stderr


def _store(output: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{output / 'mlflow' / 'mlflow.db'}")


def _done_markers(output: Path) -> dict[str, tuple[int, int]]:
    return {p.parent.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (output / "runs").glob("*/DONE")}


@pytest.fixture(scope="module")
def interrupted_grid(tmp_path_factory):
    """A 2x2 sweep SIGKILLed once two jobs are finished, then rerun with the same command."""
    output = tmp_path_factory.mktemp("grid")
    first = subprocess.Popen(_command(output, *GRID), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while len(_done_markers(output)) < 2:
        assert first.poll() is None and time.monotonic() < deadline, "the sweep ended before two jobs finished"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    finished_before = _done_markers(output)
    assert len(finished_before) == 2, "too late: the sweep finished more jobs before the kill"
    client = _store(output)
    (parent_before,) = [r.info.run_id for r in client.search_runs([client.get_experiment_by_name("synthetic").experiment_id])
                        if r.data.tags.get("audioml.role") == "sweep"]
    log = _run(_command(output, *GRID))
    return output, finished_before, parent_before, log


def _runs(client: MlflowClient):
    experiment = client.get_experiment_by_name("synthetic").experiment_id
    runs = client.search_runs([experiment])
    parents = [r for r in runs if r.data.tags.get("audioml.role") == "sweep"]
    return parents, [r for r in runs if r.data.tags.get("audioml.role") != "sweep"]


def _run_dir_of(output: Path, run_id: str) -> Path:
    """The run directory whose ``mlflow_run_id`` is ``run_id`` (run names are titles now)."""
    (run_dir,) = [p.parent for p in (output / "runs").glob("*/mlflow_run_id") if p.read_text().strip() == run_id]
    return run_dir


def test_grid_sweep_is_one_parent_run_with_a_child_per_job(interrupted_grid):
    output, _, parent_before, _ = interrupted_grid
    client = _store(output)
    parents, children = _runs(client)
    assert [p.info.run_id for p in parents] == [parent_before]  # the rerun continued the same parent
    assert parents[0].info.status == "FINISHED"
    assert len(children) == 4
    grid = set()
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent_before and child.info.status == "FINISHED"
        run_dir = _run_dir_of(output, child.info.run_id)
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        dense, loss = child.data.params["model.backbone.dense"], child.data.tags["audioml.choice.loss"]
        assert dense == str(config["model"]["backbone"]["dense"]) and (run_dir / "mlflow_run_id").read_text() == child.info.run_id
        grid.add((dense, loss))
        for key in ("val/loss", "val/macro_f1", "train/loss"):  # per epoch, once each
            assert len({m.step for m in client.get_metric_history(child.info.run_id, key)}) == 2, key
            assert len(client.get_metric_history(child.info.run_id, key)) == 2, key
        metrics = json.loads((run_dir / "metrics.json").read_text())
        for key in ("test/acc", "test/macro_f1", "test/loss", "val/best_macro_f1"):
            assert child.data.metrics[key] == pytest.approx(metrics[key]), key
        assert {"host", "device", "git.commit", "data.fingerprint"} <= set(child.data.tags)
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"config.yaml", "metrics.json", "checkpoints"} <= artifacts
        assert [a.path for a in client.list_artifacts(child.info.run_id, "checkpoints")][0].endswith(".ckpt")
        # its record was completed in the background while the next job trained: the worker's lines
        # are in this run's own log, and no other run's are
        lines = (run_dir / "train.log").read_text()
        assert f"MLflow model logged: runs:/{child.info.run_id}/model" in lines
        assert lines.count("MLflow model logged") == 1, lines[-3000:]
    assert grid == {(d, l) for d in ("32", "64") for l in ("ce", "weighted_ce")}
    assert len({c.data.tags["data.fingerprint"] for c in children}) == 1  # same data in every job


def test_rerun_of_an_interrupted_sweep_trains_only_the_unfinished_jobs(interrupted_grid):
    output, finished_before, _, log = interrupted_grid
    after = _done_markers(output)
    assert len(after) == 4
    for name, marker in finished_before.items():
        assert after[name] == marker, f"{name} finished before the kill but was trained again"
        assert f"{name} finished before" in log
    assert log.count("finished before") == 2  # the two others were trained (or resumed) in the rerun


def test_compare_lists_the_sweep_sorted(interrupted_grid, tmp_path, capsys):
    output, _, parent, _ = interrupted_grid
    csv = tmp_path / "sweep.csv"
    assert compare.main(["--sweep", parent, "--sort", "val/best_macro_f1", "--csv", str(csv), "--output-dir", str(output)]) == 0
    import pandas as pd

    table = pd.read_csv(csv)
    assert len(table) == 4 and {"loss", "model.backbone.dense", "test/macro_f1"} <= set(table)
    assert table["val/best_macro_f1"].is_monotonic_decreasing


def test_launcher_and_search_configs_compose():
    from hydra import compose, initialize_config_dir

    from audioml.config import CONFIG_DIR

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        parallel = compose("train", overrides=["hydra/launcher=parallel", "hydra.launcher.n_jobs=4"],
                           return_hydra_config=True)
        slurm = compose("train", overrides=["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4",
                                            "trainer.num_nodes=2"], return_hydra_config=True)
        optuna = compose("train", overrides=["hparams_search=optuna", "paths.output_dir=/x"],
                         return_hydra_config=True)
        on_loss = compose("train", overrides=["hparams_search=optuna", "paths.output_dir=/x",
                                              "experiment=donateacry/panns_mlp"], return_hydra_config=True)
    assert parallel.hydra.launcher._target_.endswith("JoblibLauncher") and parallel.hydra.launcher.n_jobs == 4
    launcher = slurm.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.max_num_timeout > 0
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 2)  # one task per GPU
    assert slurm.trainer.strategy == "ddp"
    sweeper = optuna.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert sweeper.storage is None and optuna.optimized_metric == "val/best_macro_f1"  # a journal in the sweep dir
    # a preset that checkpoints on the validation loss is searched on it, downwards
    assert (on_loss.optimized_metric, on_loss.hydra.sweeper.direction) == ("val/best_loss", "minimize")


@pytest.mark.slow  # four training processes at once (about 1.5 CPU-minutes)
def test_four_parallel_jobs_on_one_embedded_store_lose_nothing(tmp_path):
    log = _run(_command(tmp_path, "hydra/launcher=parallel", "hydra.launcher.n_jobs=4", "seed=1,2,3,4"))
    assert "joblib" in log.lower() or "Joblib" in log
    client = _store(tmp_path)
    parents, children = _runs(client)
    assert len(parents) == 1 and len(children) == 4
    assert sorted(c.data.params["seed"] for c in children) == ["1", "2", "3", "4"]
    reference_keys = None
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        keys = set(child.data.metrics)
        reference_keys = reference_keys or keys
        assert keys == reference_keys and len(child.data.params) > 50
        for key in ("val/loss", "val/macro_f1", "train/loss"):  # every epoch's point arrived, once
            assert sorted(m.step for m in client.get_metric_history(child.info.run_id, key)) == sorted(
                {m.step for m in client.get_metric_history(child.info.run_id, key)}), key
            assert len(client.get_metric_history(child.info.run_id, key)) == 2, key
        run_dir = _run_dir_of(tmp_path, child.info.run_id)
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert all(child.data.metrics[k] == pytest.approx(v) for k, v in metrics.items()), child.info.run_name


@pytest.mark.slow  # two sweeps of two Optuna trials
def test_optuna_study_is_stored_and_continued(tmp_path):
    search = ["hparams_search=optuna", "hydra/sweeper/pruner=none", "trainer.max_epochs=1"]
    _run(_command(tmp_path, *search, "hydra.sweeper.n_trials=2"))
    log = _run(_command(tmp_path, *search, "hydra.sweeper.n_trials=4"))  # n_trials: the study's total
    assert "2 of 4 trials asked before" in log
    import optuna

    from audioml.search.storage import open_storage

    (journal,) = (tmp_path / "runs" / ".optuna").glob("synthetic-cnn-*.journal")
    study = optuna.load_study(study_name=journal.stem, storage=open_storage(str(journal)))
    assert len(study.trials) == 4 and all(t.state.name == "COMPLETE" for t in study.trials)
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 4  # the second run proposed new ones
    results = yaml.safe_load((tmp_path / "runs" / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(study.best_value)
    _, children = _runs(_store(tmp_path))
    assert len(children) == 4
    for trial in study.trials:  # each trial's value is its run's best validation macro-F1
        assert any(c.data.metrics["val/best_macro_f1"] == pytest.approx(trial.value) for c in children)
