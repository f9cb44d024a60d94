"""End to end: grouped k-fold with nested MLflow runs, honest numbers, and the permutation test on
generated data with learnable and with random labels (real Hydra, Trainer and MLflow store)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from helpers.runners import find_run_dirs, read_metrics, run_entry_point

#: A generated dataset with enough groups for grouped resampling, and settings that learn it fast.
SYNTHETIC = ("data=synthetic", "model=cnn", "data.num_groups=60", "data.clips_per_class=30", "data.seconds=0.5",
             "data.batch_size=4", "data.test_fraction=0.3", "model.optimizer.lr=2e-3",
             "model.backbone.batch_norm=true",
             "evaluation.bootstrap_samples=300", "evaluation.permutations=500", "trainer.enable_progress_bar=false")


def search_runs(output_dir, experiment: str) -> pd.DataFrame:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{output_dir / 'mlflow' / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=[experiment])


def test_kfold_parent_run_holds_fold_children_summary_and_out_of_fold_predictions(tmp_path):
    run_entry_point("audioml.train", *SYNTHETIC, "evaluation=kfold", "evaluation.k=3", "trainer.max_epochs=4",
                    "optimizer=adamw", "scheduler=plateau", "callbacks=early_stopping",
                    f"paths.output_dir={tmp_path}")
    (parent_dir,) = find_run_dirs(tmp_path)
    metrics = read_metrics(parent_dir)
    for name in ("test/macro_f1", "test/acc", "test/balanced_acc"):
        assert {f"{name}_mean", f"{name}_std", name, f"{name}_ci_low", f"{name}_ci_high"} <= set(metrics)
        assert metrics[f"{name}_ci_low"] <= metrics[name] <= metrics[f"{name}_ci_high"]
    assert "baseline/macro_f1" in metrics and "baseline/macro_f1_mean" in metrics
    # Learnable tones: the pooled out-of-fold predictions beat chance, and the baseline.
    assert metrics["permutation/macro_f1_better_than_chance"] == 1.0
    assert metrics["test/macro_f1"] > metrics["baseline/macro_f1"]

    # Out-of-fold predictions: every clip exactly once, folds disjoint by group.
    oof = pd.read_csv(parent_dir / "oof_predictions.csv")
    manifest = pd.read_csv(tmp_path / "cache" / "synthetic-3c-30-True-0" / "manifest.csv")
    assert len(oof) == len(manifest) == 90 and oof["path"].is_unique
    assert sorted(oof["fold"].unique()) == [0, 1, 2]
    groups_per_fold = [set(oof.loc[oof["fold"] == f, "group"].astype(str)) for f in range(3)]
    assert all(not groups_per_fold[i] & groups_per_fold[j] for i in range(3) for j in range(i + 1, 3))
    fold_table = pd.read_csv(parent_dir / "fold_metrics.csv")
    assert fold_table["test/macro_f1"].mean() == pytest.approx(metrics["test/macro_f1_mean"])
    assert fold_table["test/macro_f1"].std(ddof=1) == pytest.approx(metrics["test/macro_f1_std"])
    for fold in range(3):
        fold_config = (parent_dir / f"fold_{fold}" / "config.yaml").read_text()
        assert f"fold: {fold}" in fold_config and "num_folds: 3" in fold_config
        assert (parent_dir / f"fold_{fold}" / "checkpoints" / "last.ckpt").is_file()
        assert (parent_dir / f"fold_{fold}" / "learning_curves.png").is_file()

    # MLflow: one parent with the summary and artifacts, k children pointing at it.
    runs = search_runs(tmp_path, "synthetic")
    parents = runs[runs["tags.audioml.protocol"] == "KFold"]
    assert len(parents) == 1
    parent = parents.iloc[0]
    children = runs[runs["tags.mlflow.parentRunId"] == parent["run_id"]]
    assert len(children) == 3 and (children["status"] == "FINISHED").all()
    assert parent["metrics.test/macro_f1_mean"] == pytest.approx(metrics["test/macro_f1_mean"])
    assert parent["metrics.test/macro_f1_std"] == pytest.approx(metrics["test/macro_f1_std"])
    assert children["metrics.test/macro_f1_ci_low"].notna().all()
    import mlflow

    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent["run_id"])}
    assert {"oof_predictions.csv", "metrics.json", "fold_metrics.csv", "confusion_matrix.png"} <= artifacts
    child_artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(children.iloc[0]["run_id"])}
    assert {"learning_curves.png", "embeddings_pca.png", "test_predictions.csv"} <= child_artifacts


@pytest.mark.slow  # kept out of the default run for its time (15-30 s); `pytest -m slow` runs it
def test_random_labels_are_reported_no_better_than_chance(tmp_path):
    """Labels shuffled independently of the audio: the test metric must not beat chance. The
    run also exercises the mixup recipe and the holdout protocol."""
    run_entry_point("audioml.train", *SYNTHETIC, "data.learnable=false", "trainer.max_epochs=3",
                    "augmentation=mixup", "logger=none", f"paths.output_dir={tmp_path}")
    (run_dir,) = find_run_dirs(tmp_path)
    metrics = read_metrics(run_dir)
    assert metrics["permutation/macro_f1_better_than_chance"] == 0.0
    assert metrics["permutation/macro_f1_p_value"] >= 0.05
    assert metrics["test/macro_f1_ci_low"] <= metrics["test/macro_f1"] <= metrics["test/macro_f1_ci_high"]
    assert "no better than chance" in (run_dir / "train.log").read_text()


@pytest.mark.slow
def test_donateacry_kfold_with_augmentation_and_weighted_loss(tmp_path, shared_data):
    """The issue's acceptance command on the real corpus (5 folds x 2 epochs)."""
    run_entry_point("audioml.train", "data=donateacry", "model=cnn", "augmentation=cry", "loss=weighted_ce",
                    "evaluation=kfold", "evaluation.k=5", "trainer.max_epochs=2", "evaluation.permutations=1000",
                    f"paths.data_dir={shared_data}", f"paths.output_dir={tmp_path}", timeout=3600)
    (parent_dir,) = find_run_dirs(tmp_path)
    metrics = read_metrics(parent_dir)
    for name in ("macro_f1", "binary_macro_f1", "binary_balanced_acc"):
        assert {f"test/{name}_mean", f"test/{name}_std", f"test/{name}", f"test/{name}_ci_low",
                f"test/{name}_ci_high", f"baseline/{name}"} <= set(metrics), name
    oof = pd.read_csv(parent_dir / "oof_predictions.csv")
    assert oof["path"].is_unique and sorted(oof["fold"].unique()) == [0, 1, 2, 3, 4]
    groups_per_fold = [set(oof.loc[oof["fold"] == f, "group"]) for f in range(5)]
    assert sum(len(g) for g in groups_per_fold) == len(set().union(*groups_per_fold))
    assert json.loads((parent_dir / "fold_0" / "class_collapse.json").read_text())["hungry"] == ["hungry"]
    runs = search_runs(tmp_path, "donateacry")
    parent_id = runs.loc[runs["tags.audioml.protocol"] == "KFold", "run_id"].item()
    assert (runs["tags.mlflow.parentRunId"] == parent_id).sum() == 5
    assert np.isfinite(runs.loc[runs["run_id"] == parent_id, "metrics.test/binary_macro_f1_ci_high"].item())
