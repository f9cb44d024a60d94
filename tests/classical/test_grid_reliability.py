"""A classical grid cannot hang and cannot report another table's results (issue 35, items 2
and 3h): every fit is bounded by iterations and a fit stopped at its bound is recorded and ranked
after the converged ones; every grid config bounds its iterative estimators; progress is shown
per combination x fold; a relabelled table (same files, other labels) gets fresh scores in its
own run directory, and the original table finds its own again."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from helpers.datasets import tone
from omegaconf import OmegaConf

from audioml.classical import grid as grid_module
from audioml.classical.grid import run_grid, unbounded_steps
from audioml.classical.run import run_classical
from audioml.classical.table import FeatureTable
from audioml.config import CONFIG_DIR, compose_config
from audioml.stats import HonestScoring

GRIDS = sorted(p.stem for p in (Path(CONFIG_DIR) / "grid").glob("*.yaml"))


def _unscaled_table(rows: int = 120) -> FeatureTable:
    """Two informative columns on wildly different scales (Hz beside 0.01), grouped by track."""
    rng = np.random.default_rng(0)
    targets = np.arange(rows) % 3
    values = np.c_[2000 + 400 * targets + rng.normal(0, 300, rows), 0.01 * targets + rng.normal(0, 0.01, rows),
                   rng.normal(0, 1, (rows, 3))]
    frame = pd.DataFrame({"path": [f"t{i // 4}.mp3" for i in range(rows)],
                          "offset": [15.0 * (i % 4) for i in range(rows)],
                          "group": [str(i // 4) for i in range(rows)], "split": ""})
    return FeatureTable(values.astype(np.float32), [f"f{i}" for i in range(5)], frame, targets, "classification",
                        ["a", "b", "c"], "unscaled", pd.DataFrame(columns=["path", "reason"]))


@pytest.mark.parametrize("name", GRIDS)
def test_every_grid_bounds_its_iterative_estimators(name):
    grid = compose_config([f"grid={name}"], config_name="classical").grid
    assert unbounded_steps(grid) == []


def test_an_unbounded_estimator_is_named():
    grid = OmegaConf.create({"estimators": {"svm": {"_target_": "sklearn.svm.SVC"},
                                            "vote": {"_target_": "sklearn.ensemble.VotingRegressor", "estimators": [
                                                ["svr", {"_target_": "sklearn.svm.SVR"}]]},
                                            "knn": {"_target_": "sklearn.neighbors.KNeighborsClassifier"}}})
    assert unbounded_steps(grid) == ["estimators.svm: max_iter=-1", "estimators.vote: svr__max_iter=-1"]


def test_a_fit_stopped_at_its_bound_is_recorded_and_ranked_after_converged_ones(tmp_path, capsys):
    grid = OmegaConf.create({"select_by": "acc", "scalers": {"none": None},
                             "estimators": {
                                 "svm_bounded": {"_target_": "sklearn.svm.SVC", "kernel": "linear", "max_iter": 20},
                                 "knn": {"_target_": "sklearn.neighbors.KNeighborsClassifier", "n_neighbors": 3}}})
    protocol = {"kind": "kfold", "k": 3, "val_fraction": 0.25}
    result = run_grid(_unscaled_table(), grid, protocol, tmp_path, HonestScoring(50), n_jobs=1, progress=True)
    ranking = result.ranking.set_index("combination")
    stopped = ranking.loc["none+none+svm_bounded"]
    assert not stopped["converged"] and stopped["fits_not_converged"] == 7  # 2 per fold (selection, test) + final
    assert ranking.loc["none+none+knn", "converged"] and ranking.loc["none+none+knn", "fits_not_converged"] == 0
    assert list(result.ranking["combination"]) == ["none+none+knn", "none+none+svm_bounded"]  # converged first
    assert result.best == "none+none+knn"
    record = json.loads((tmp_path / "combinations" / "none+none+svm_bounded.json").read_text())
    assert record["convergence"] == ["Solver terminated early (max_iter=20)"]
    assert "not converged" in (tmp_path / "ranking.txt").read_text()
    assert "grid (combination x fold)" in capsys.readouterr().err  # the progress bar, 2 x (3 + 1) fits
    assert set(grid_module.__all__) >= {"unbounded_steps"}


def _write_csv(folder: Path, labels: list[str]) -> Path:
    """12 one-second clips of 6 speakers: low tones for ``labels`` 'low', high for 'high'."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(12):
        path = folder / f"clip{i:02d}.wav"
        if not path.exists():
            sf.write(path, tone(1.0, 16000, 300.0 if i % 2 == 0 else 3000.0, seed=i), 16000)
    csv = folder / "clips.csv"
    pd.DataFrame({"path": [f"clip{i:02d}.wav" for i in range(12)], "label": labels,
                  "group": [f"speaker{i // 2}" for i in range(12)]}).to_csv(csv, index=False)
    return csv


def test_a_relabelled_table_gets_fresh_scores_in_its_own_directory(tmp_path, monkeypatch):
    truth = ["low" if i % 2 == 0 else "high" for i in range(12)]
    csv = _write_csv(tmp_path / "clips", truth)
    output = tmp_path / "out"
    cfg = compose_config(["data=csv", f"data.csv={csv}", "data.clip_seconds=1.0", "data.num_workers=0",
                          "descriptors.names=[spectral_centroid,rms]", "grid=svm", "~grid.estimators.svm_quadratic",
                          "~grid.estimators.svm_cubic", "~grid.estimators.svm_rbf",
                          "protocol.k=2", "scoring.bootstrap_samples=50", "n_jobs=1", "progress=false",
                          f"paths.output_dir={output}"], config_name="classical")
    run_dir = tmp_path / "run"
    first = run_classical(cfg, run_dir)
    assert first.metrics["test/acc"] == 1.0  # the tone's pitch gives the label away

    fits, real_fit = [], grid_module._fit_fold
    monkeypatch.setattr(grid_module, "_fit_fold", lambda *a: (fits.append(a[3].name), real_fit(*a))[1])
    _write_csv(tmp_path / "clips", [truth[i] if i < 6 else ("high" if truth[i] == "low" else "low")
                                    for i in range(12)])  # the same files, half of them relabelled
    second = run_classical(cfg, run_dir)
    assert fits, "the relabelled table reused the finished grid"
    assert second.run_dir != run_dir and second.run_dir.name.startswith(f"{run_dir.name}-data-")
    assert second.metrics["test/acc"] < 0.9  # scored fresh on the new labels
    assert json.loads((run_dir / "metrics.json").read_text())["test/acc"] == 1.0  # the first run is left as it was

    fits.clear()
    _write_csv(tmp_path / "clips", truth)  # back to the first labels: the first directory, nothing refitted
    third = run_classical(cfg, run_dir)
    assert third.run_dir == run_dir and not fits and third.metrics["test/acc"] == 1.0
    client = mlflow.MlflowClient(f"sqlite:///{output / 'mlflow' / 'mlflow.db'}")
    parents = [r for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
               if r.data.tags.get("audioml.role") == "sweep"]
    assert len(parents) == 2 and len({p.data.params["features.content_key"] for p in parents}) == 2
