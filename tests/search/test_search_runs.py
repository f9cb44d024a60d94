"""Optuna searches end to end, with real processes, a real study storage and a real MLflow store:
a search that prunes (PRUNED in the study, in MLflow, in the summary and the status table); a
search SIGKILLed mid-trial and rerun (exactly n_trials trials, the killed one retried from its
checkpoint into its own MLflow run, none twice); two workers sharing one storage; a search preset
written for hydra-optuna-sweeper (SQLite storage) still composing and running."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from helpers.runners import REPO
from helpers.search import write_legacy_preset
from mlflow import MlflowClient
from optuna.trial import TrialState

from audioml import compare
from audioml.run.record import status
from audioml.run.rundir import RunDir
from audioml.search import trials as search_trials
from audioml.search.storage import open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)
TINY = ["data=synthetic", "data.clips_per_class=12", "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
        "evaluation.bootstrap_samples=0", "data.batch_size=8", "logger.log_model=false"]


def _command(output: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "audioml.train", "-m", *TINY, "hparams_search=optuna", *overrides,
            f"paths.output_dir={output}"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "AUDIOML_CONFIG_PATH")}
    env.update(PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="1", OMP_NUM_THREADS="1", **extra)
    return env


def _run(command: list[str], **env: str) -> str:
    process = subprocess.run(command, cwd=REPO, env=_env(**env), capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, f"{process.stdout[-3000:]}\n{process.stderr[-5000:]}"
    return process.stdout + process.stderr


def _study(output: Path) -> optuna.Study:
    (journal,) = (output / "runs" / ".optuna").glob("*.journal")
    return optuna.load_study(study_name=journal.stem, storage=open_storage(str(journal)))


def _mlflow(output: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{output / 'mlflow' / 'mlflow.db'}")


def _trial_runs(client: MlflowClient):
    experiment = client.get_experiment_by_name("synthetic").experiment_id
    return [r for r in client.search_runs([experiment]) if r.data.tags.get("audioml.role") != "sweep"]


def test_a_pruned_search_records_its_pruned_trials_as_such(tmp_path, capsys):
    log = _run(_command(tmp_path, "trainer.max_epochs=2", "hydra.sweeper.n_trials=4",
                        "hydra.sweeper.pruner.n_startup_trials=1", "hydra.sweeper.pruner.n_warmup_steps=0"))
    study = _study(tmp_path)
    states = [t.state for t in study.trials]
    assert len(states) == 4 and TrialState.PRUNED in states and TrialState.COMPLETE in states, states
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    # in the summary: pruned, not failed (exit status 0 above)
    summary = re.search(r"sweep (\w+): 4 jobs, (.*)", log)
    assert f"{len(pruned)} pruned" in summary.group(2) and "failed" not in summary.group(2)
    client = _mlflow(tmp_path)
    runs = {r.info.run_id: r for r in _trial_runs(client)}
    assert len(runs) == 4
    for trial in study.trials:
        run = runs[trial.user_attrs["mlflow_run_id"]]
        run_dir = Path(trial.user_attrs["run_dir"])
        assert run.data.tags["audioml.optuna.trial"] == str(trial.number) and RunDir(run_dir).finished() is not None
        epochs = len(client.get_metric_history(run.info.run_id, "val/macro_f1"))
        if trial.state == TrialState.PRUNED:  # stopped after its first epoch, recorded so
            assert run.info.status == "KILLED" and run.data.tags["audioml.pruned"] == "after epoch 1"
            assert RunDir(run_dir).pruned()["epoch"] == 1 and epochs == 1
            assert trial.intermediate_values == pytest.approx({1: run.data.metrics["val/macro_f1"]})
        else:
            assert run.info.status == "FINISHED" and "audioml.pruned" not in run.data.tags and epochs == 2
            assert trial.value == pytest.approx(run.data.metrics["val/best_macro_f1"])
    # the status table: one row per trial, pruned ones as such
    record = status.find_record([tmp_path / "runs"], summary.group(1))
    jobs = {job.run_dir.name: job.state for job in status.sweep_jobs(record)}
    assert sorted(jobs.values()) == sorted("pruned" if t.state == TrialState.PRUNED else "finished" for t in study.trials)
    assert compare.main(["--status", summary.group(1), "--output-dir", str(tmp_path)]) == 0
    assert f"{len(pruned)} pruned" in capsys.readouterr().out
    results = yaml.safe_load((tmp_path / "runs" / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(study.best_value) and results["metric"] == "val/best_macro_f1"


@pytest.mark.slow  # a search killed and rerun (about 80 s); the pruned search keeps the default run's coverage
def test_a_search_killed_mid_trial_and_rerun_completes_n_trials_once_each(tmp_path):
    command = _command(tmp_path, "trainer.max_epochs=3", "hydra.sweeper.n_trials=3", "hydra/sweeper/pruner=none",
                       "callbacks.resume_checkpoint.every_n_train_steps=1")
    first = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, killed = time.monotonic() + 600, None
    while killed is None:  # the second trial has reported its first epoch: kill the sweep in its second
        assert first.poll() is None and time.monotonic() < deadline, "the search ended before its second trial"
        journals = list((tmp_path / "runs" / ".optuna").glob("*.journal"))
        if journals:
            running = [t for t in _study(tmp_path).get_trials(states=(TrialState.RUNNING,)) if t.intermediate_values]
            killed = running[0] if running and running[0].number == 1 else None
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = time.time()
    log = _run(command)

    study = _study(tmp_path)
    counted = [t for t in study.trials if search_trials.counts(t)]
    assert len(counted) == 3 and all(t.state == TrialState.COMPLETE for t in counted)
    given_up = study.trials[killed.number]
    assert given_up.state == TrialState.FAIL and given_up.system_attrs[search_trials.INTERRUPTED_ATTR]
    (retry,) = [t for t in counted if t.system_attrs.get("failed_trial") == killed.number]
    assert retry.params == killed.params and retry.intermediate_values[1] == pytest.approx(killed.intermediate_values[1])
    assert len({tuple(sorted(t.params.items())) for t in counted}) == 3  # no trial trained twice
    assert len({t.user_attrs["run_dir"] for t in counted}) == 3
    # the retry continued the killed trial's run: its checkpoint, its MLflow run
    assert f"Restoring states from the checkpoint path at {retry.user_attrs['run_dir']}/checkpoints/last.ckpt" in log
    client = _mlflow(tmp_path)
    runs = {r.info.run_id: r for r in _trial_runs(client)}
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs.values())
    continued = runs[retry.user_attrs["mlflow_run_id"]]  # opened before the kill, tagged with the trial it counts as
    assert continued.info.start_time / 1000 < killed_at and continued.data.tags["audioml.optuna.trial"] == str(retry.number)
    assert sorted(m.step for m in client.get_metric_history(continued.info.run_id, "val/macro_f1")) == [0, 1, 2]
    assert all(RunDir(t.user_attrs["run_dir"]).finished() is not None for t in counted)
    assert re.search(r"sweep \w+: 3 jobs, 3 finished\n", log)


@pytest.mark.slow  # two searches at once (about 75 s on 2 loaded cores)
def test_two_workers_on_one_storage_share_n_trials_each_trained_once(tmp_path):
    shared = ["hydra.sweeper.storage=" + str(tmp_path / "shared" / "search.journal"), "hydra.sweeper.study_name=shared",
              "hydra.sweeper.n_trials=4", "hydra.sweeper.poll_interval=1", "trainer.max_epochs=1",
              "hydra/sweeper/pruner=none"]
    workers = [subprocess.Popen(_command(tmp_path / name, *shared), cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for name in ("machine_a", "machine_b")]
    logs = [worker.communicate(timeout=600)[0] for worker in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(log[-3000:] for log in logs)
    study = optuna.load_study(study_name="shared", storage=open_storage(str(tmp_path / "shared" / "search.journal")))
    counted = [t for t in study.trials if search_trials.counts(t)]
    assert len(counted) == 4 and all(t.state == TrialState.COMPLETE for t in counted)
    trained = sorted(p.parent for name in ("machine_a", "machine_b") for p in (tmp_path / name / "runs").glob("*/DONE"))
    assert sorted(Path(t.user_attrs["run_dir"]) for t in counted) == trained  # each trial trained once, somewhere
    assert {t.system_attrs[search_trials.JOB_ATTR]["pid"] for t in counted} == {w.pid for w in workers}  # both worked


@pytest.mark.slow  # the default run composes it (tests/search/test_sweeper_config.py)
def test_a_preset_written_for_hydra_optuna_sweeper_still_runs(tmp_path):
    write_legacy_preset(tmp_path / "configs")
    command = [sys.executable, "-m", "audioml.train", "-m", *TINY, "hparams_search=legacy", "trainer.max_epochs=1",
               f"paths.output_dir={tmp_path / 'out'}"]
    _run(command, AUDIOML_CONFIG_PATH=str(tmp_path / "configs"))
    study = optuna.load_study(study_name="synthetic-cnn", storage=f"sqlite:///{tmp_path / 'out' / 'optuna' / 'studies.db'}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert {"model.optimizer.lr", "loss"} == set(study.trials[0].params)
    assert len(_trial_runs(_mlflow(tmp_path / "out"))) == 2


@pytest.mark.slow  # four trials of one epoch
def test_a_grid_search_over_seeds_is_aggregated_as_a_grid_is(tmp_path, capsys):
    log = _run(_command(tmp_path, "hydra/sweeper/sampler=grid", "hydra/sweeper/pruner=none", "trainer.max_epochs=1",
                        "hydra.sweeper.params=null", "seed=choice(1,2)", "model.backbone.dense=choice(16,32)",
                        "hydra.sweeper.n_trials=10"))
    assert "the grid has 4 points: n_trials 10 -> 4" in log
    study = _study(tmp_path)
    assert sorted((t.params["seed"], t.params["model.backbone.dense"]) for t in study.trials) == [
        (1, 16), (1, 32), (2, 16), (2, 32)]
    client = _mlflow(tmp_path)
    (parent,) = [r for r in client.search_runs([client.get_experiment_by_name("synthetic").experiment_id])
                 if r.data.tags.get("audioml.role") == "sweep"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"aggregate_seed.csv", "sweep_status.csv", "sweep_summary.txt"} <= artifacts
    assert compare.main(["--sweep", parent.info.run_id, "--aggregate", "seed", "--output-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "model.backbone.dense=16 2 1,2" in printed and "model.backbone.dense=32 2 1,2" in printed
