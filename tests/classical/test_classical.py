"""Classical models (audioml.classical): descriptors, cached feature tables, grids of sklearn
pipelines with grouped protocols, MLflow parent/child runs, resume, deep features of a trained
checkpoint, and the study experiments end to end."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from helpers.datasets import make_muse_package
from helpers.runners import find_run_dirs, run_entry_point
from hydra.utils import instantiate
from omegaconf import OmegaConf

from audioml.classical import grid as grid_module
from audioml.classical.descriptors import DESCRIPTORS, DescriptorSettings, column_names, describe
from audioml.classical.grid import Combination, build_pipeline, load_pipeline, make_folds, run_grid
from audioml.classical.run import run_classical
from audioml.classical.table import FeatureTable, checkpoint_table, handcrafted_table, load_table, rows_of
from audioml.config import compose_config
from audioml.data.decoder import ClipDecoder
from audioml.stats import HonestScoring

EVERY = DescriptorSettings(tuple(DESCRIPTORS), ("mean", "std", "min", "max", "median"))
FAST_GRID = ["~grid.reducers.pca20", "~grid.estimators.random_forest", "~grid.estimators.gradient_boosting",
             "~grid.estimators.bagged_trees", "~grid.estimators.svm_cubic", "~grid.estimators.svm_rbf",
             "scoring.bootstrap_samples=100", "n_jobs=1", "progress=false"]


def _store(output):
    return mlflow.MlflowClient(f"sqlite:///{output / 'mlflow' / 'mlflow.db'}")


def _real_clips(shared_data):
    donateacry = sorted((shared_data / "donateacry-corpus").rglob("*.wav"))[:2]
    return [*donateacry, *sorted((shared_data / "emotify").rglob("*.mp3"))[:1],
            *sorted((shared_data / "ravdess").rglob("*.wav"))[:1]]


def test_every_descriptor_is_finite_and_named_on_real_clips(shared_data):
    decoder = ClipDecoder(22050, 5.0)
    names = column_names(EVERY)
    assert len(names) == len(set(names)) and {"mfcc_03_mean", "spectral_rolloff_std", "tempo", "chroma_11_max"} <= set(names)
    clips = _real_clips(shared_data)
    assert len(clips) >= 3
    rows = np.stack([describe(decoder(path), 22050, EVERY) for path in clips])
    assert rows.shape == (len(clips), len(names)) and np.isfinite(rows).all()
    assert (rows.std(axis=0) > 0).sum() > len(names) * 0.8  # the clips differ: the descriptors see them


def test_silence_a_short_clip_and_nan_samples():
    for waveform in (np.zeros(22050 * 2, np.float32), np.full(2205, 0.3, np.float32), np.zeros(10, np.float32)):
        row = describe(waveform, 22050, EVERY)  # silence, a 0.1 s clip, 10 samples
        assert row.shape == (len(column_names(EVERY)),) and np.isfinite(row).all()
    silent = dict(zip(column_names(EVERY), describe(np.zeros(22050, np.float32), 22050, EVERY)))
    assert silent["tempo"] == 0 and silent["spectral_centroid_mean"] == 0 and silent["brightness_mean"] == 0
    with pytest.raises(ValueError, match="non-finite"):
        describe(np.array([0.1, np.nan] * 2000, np.float32), 22050, EVERY)
    with pytest.raises(ValueError, match="unknown"):
        DescriptorSettings(("mfcc", "loudness"))


def _synthetic(tmp_path, *extra, fast: bool = True):
    cfg = compose_config(["data=synthetic", f"paths.output_dir={tmp_path / 'out'}", "data.num_workers=0",
                          *(FAST_GRID if fast else ["n_jobs=1", "progress=false"]), *extra], config_name="classical")
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return cfg, datamodule


def test_features_are_cached_and_a_setting_change_recomputes(tmp_path, monkeypatch):
    cfg, datamodule = _synthetic(tmp_path)
    rows = rows_of(datamodule)
    settings = DescriptorSettings(("rms", "mfcc", "tempo"))
    table, status = handcrafted_table(rows, settings, tmp_path / "cache", n_jobs=2, progress=False)
    assert status == "built" and table.values.shape == (72, len(column_names(settings)))
    assert set(table.rows["split"]) == {"train", "val", "test"} and table.rows["group"].nunique() == 12
    calls = []
    monkeypatch.setattr("audioml.classical.table._describe_chunk", lambda *a: calls.append(1))
    again, status = handcrafted_table(rows, settings, tmp_path / "cache", n_jobs=1, progress=False)
    assert status == "hit" and not calls and np.array_equal(again.values, table.values)
    assert again.columns == table.columns and np.array_equal(again.targets, table.targets)
    monkeypatch.undo()
    other, status = handcrafted_table(rows, DescriptorSettings(("rms", "mfcc", "tempo"), n_mfcc=8),
                                      tmp_path / "cache", n_jobs=1, progress=False)
    assert status == "built" and other.values.shape[1] == table.values.shape[1] - 5 * 2
    exported = load_table(table.save(tmp_path / "export"))  # what users take elsewhere
    assert np.array_equal(exported.values, table.values) and list(exported.rows["path"]) == list(table.rows["path"])


def test_a_clip_whose_descriptors_fail_is_listed_and_the_rest_kept(tmp_path):
    _, datamodule = _synthetic(tmp_path)
    rows = rows_of(datamodule)
    plain = rows.waveform
    rows.waveform = lambda i: np.full(100, np.nan, np.float32) if i == 5 else plain(i)
    table, _ = handcrafted_table(rows, DescriptorSettings(("rms", "zcr")), None, n_jobs=1, progress=False)
    assert len(table.values) == 71 and rows.manifest["path"].iloc[5] not in set(table.rows["path"])
    assert table.skipped["reason"].str.contains("non-finite").sum() == 1


def _table(n_groups=10, per_group=6, outlier_row=None, task="classification"):
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(n_groups), per_group).astype(str)
    targets = np.repeat(np.arange(n_groups) % 2, per_group)
    values = rng.normal(size=(len(groups), 4)) + targets[:, None]
    if outlier_row is not None:
        values[outlier_row] = 1e6
    rows = pd.DataFrame({"path": [f"clip{i}.wav" for i in range(len(groups))], "group": groups, "split": ""})
    return FeatureTable(values.astype(np.float32), [f"f{i}" for i in range(4)], rows, targets, task, ["a", "b"],
                        "key", pd.DataFrame(columns=["path", "reason"]))


def test_scalers_are_fitted_on_training_rows_only():
    table = _table(outlier_row=0)
    folds, final = make_folds(table, {"kind": "kfold", "k": 5, "val_fraction": 0.25}, seed=0)
    groups = table.rows["group"].to_numpy()
    for fold in folds:  # no group in two parts
        assert not set(groups[fold.train]) & set(groups[fold.test]) and not set(groups[fold.fit]) & set(groups[fold.val])
    assert sorted(np.concatenate([f.test for f in folds])) == list(range(len(groups)))
    (holding,) = [f for f in folds if 0 in f.test]
    grid = OmegaConf.create({"scalers": {"standard": {"_target_": "sklearn.preprocessing.StandardScaler"}},
                             "estimators": {"knn": {"_target_": "sklearn.neighbors.KNeighborsClassifier",
                                                    "n_neighbors": 3}}})
    combination = Combination("standard", "none", "knn")
    X, y = table.values.astype(np.float64), table.targets
    result = grid_module._fit_fold(X, y, OmegaConf.to_container(grid), combination, holding, table.task, 2)
    scaler = build_pipeline(grid, combination).fit(X[holding.train], y[holding.train])["scaler"]
    assert np.abs(scaler.mean_).max() < 10  # the planted test-row outlier (1e6) is not in the scaler
    leaky = build_pipeline(grid, combination).fit(X[np.r_[holding.train, holding.test]],
                                                  y[np.r_[holding.train, holding.test]])
    expected = build_pipeline(grid, combination).fit(X[holding.train], y[holding.train]).predict(X[holding.test])
    assert np.array_equal(result["test_prediction"], expected)
    assert np.abs(leaky["scaler"].mean_).min() > 1e4  # what a scaler fitted with the test rows would hold


def test_a_grid_logs_a_child_per_combination_ranks_them_and_resumes(tmp_path, monkeypatch, capsys):
    from audioml import compare

    cfg, _ = _synthetic(tmp_path, "descriptors.names=[rms,zcr,spectral_centroid,mfcc]")
    combinations = grid_module.combinations(cfg.grid)
    assert len(combinations) == 2 * 1 * 3  # scalers x reducers x estimators left in FAST_GRID
    fits, real_fit = [], grid_module._fit_fold
    monkeypatch.setattr(grid_module, "_fit_fold", lambda *a: (fits.append(a[3].name), real_fit(*a))[1])

    class Stop(Exception):
        pass

    from audioml.classical import run as run_module
    real_log = run_module.GridTracker.log_combination

    def stop_after_two(self, combination, *args):
        if len(list((tmp_path / "run" / "combinations").glob("*.json"))) == 2:
            raise Stop("interrupted")
        return real_log(self, combination, *args)

    monkeypatch.setattr(run_module.GridTracker, "log_combination", stop_after_two)
    with pytest.raises(Stop):
        run_classical(cfg, tmp_path / "run")
    client = _store(tmp_path / "out")
    (parent,) = [r for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
                 if r.data.tags.get("audioml.role") == "sweep"]
    assert parent.info.status == "FAILED"
    finished = {p.stem for p in (tmp_path / "run" / "combinations").glob("*.json")}
    assert len(finished) == 2

    monkeypatch.setattr(run_module.GridTracker, "log_combination", real_log)
    fits.clear()
    result = run_classical(cfg, tmp_path / "run")
    assert not set(fits) & finished and len(set(fits)) == len(combinations) - 2  # finished ones not refitted
    runs = client.search_runs([parent.info.experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 1 + len(combinations) and len(children) == len(combinations)
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    assert {c.data.tags["audioml.combination"] for c in children} == {c.name for c in combinations}
    # in the MLflow UI: the grid named after its data, descriptors and grid, the feature table as the
    # dataset input of the parent and of every combination
    assert client.get_run(parent.info.run_id).info.run_name == "synthetic mir classification grid"
    table = load_table(next((tmp_path / "out" / "cache" / "features").glob("handcrafted-*")))
    for run in (client.get_run(parent.info.run_id), *children):
        (data,) = run.inputs.dataset_inputs
        assert (data.dataset.name, data.dataset.digest) == ("synthetic mir features", table.key[:16])
        assert json.loads(data.dataset.profile)["rows"] == len(table.values)
    for child in children:
        assert child.info.status == "FINISHED" and {"scaler", "reducer", "estimator"} <= set(child.data.params)
        assert {"val/macro_f1", "test/macro_f1", "test/macro_f1_ci_low", "baseline/macro_f1"} <= set(child.data.metrics)
        assert [a.path for a in client.list_artifacts(child.info.run_id, "pipeline")][0].endswith(".skops")
    ranking = pd.read_csv(tmp_path / "run" / "ranking.csv")
    assert list(ranking["val/macro_f1"]) == sorted(ranking["val/macro_f1"], reverse=True)
    assert result.best == ranking["combination"].iloc[0]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test/macro_f1"] > metrics["baseline/macro_f1"] + 0.3  # the synthetic classes are learnable
    pipeline = load_pipeline(tmp_path / "run" / "best" / "pipeline.skops")
    assert pipeline.predict(table.values).shape == (len(table.values),)
    assert (tmp_path / "run" / "best" / "confusion_matrix.png").is_file()
    out = capsys.readouterr().out
    assert "best by validation" in out and max(len(line) for line in out.splitlines() if str(tmp_path) not in line) <= 120
    assert compare.main(["--sweep", tmp_path.joinpath("run").name, "--output-dir", str(tmp_path / "out")]) == 0
    assert result.best in capsys.readouterr().out


def test_a_regressor_grid_on_class_data_fails_at_once_naming_the_yaml(tmp_path):
    cfg, _ = _synthetic(tmp_path, "grid=regression", fast=False)
    with pytest.raises(ValueError, match=r"grid=regression \(audioml/conf/grid/regression.yaml\).*not a classifier"):
        run_classical(cfg, tmp_path / "run")


def test_a_saved_pipeline_naming_other_code_is_refused(tmp_path):
    import skops.io as sio
    from sklearn.preprocessing import FunctionTransformer

    path = tmp_path / "evil.skops"
    path.write_bytes(sio.dumps(FunctionTransformer(func=logging.getLogger)))
    with pytest.raises(ValueError, match="refusing"):
        load_pipeline(path)


def test_regression_grid_on_partitions_has_intervals_and_a_mean_baseline(tmp_path):
    table = _table(task="regression")
    table.targets = table.values[:, 0].astype(np.float64) * 0.5
    table.rows["split"] = np.where(table.rows["group"].astype(int) >= 8, "test", "train")
    grid = compose_config(["grid=regression"], config_name="classical").grid
    folds, _ = make_folds(table, {"kind": "partition", "val_fraction": 0.25}, 0)
    assert len(folds) == 1 and set(table.rows["split"].iloc[folds[0].test]) == {"test"}
    result = run_grid(table, grid, {"kind": "partition", "val_fraction": 0.25}, tmp_path, HonestScoring(200), n_jobs=2)
    assert len(result.ranking) == 60
    best = result.metrics
    assert best["test/ccc"] > 0.9 and best["test/ccc_ci_low"] <= best["test/ccc"] <= best["test/ccc_ci_high"]
    assert abs(best["baseline/ccc"]) < 1e-9 and best["baseline/mse"] > best["test/mse"]
    assert isinstance(result.ranking["mlflow_run_id"].iloc[0], str)


@pytest.mark.slow  # trains a CRNN in a subprocess, then a 60-pipeline grid: ~40-70 s
def test_deep_features_of_a_trained_crnn_equal_its_deep_features(tmp_path):
    from audioml.run.use.checkpoint import datamodule_from_record, model_from_record, read_record
    from audioml.run.use.inference import find_checkpoint

    make_muse_package(tmp_path / "data" / "muse" / "c3_muse_stress_2022", seconds=10.0)
    output = tmp_path / "out"
    run_entry_point("audioml.train", "data=muse", "model=crnn_attention", "loss=ccc", "monitor=val/ccc",
                    "optimized_metric=test/ccc", "data.sequence_length=8", "data.stride=4", "trainer.max_epochs=1",
                    "logger.log_model=false", "trainer.enable_progress_bar=false", f"paths.output_dir={output}",
                    env={"AUDIOML_DATA_DIR": str(tmp_path / "data")})
    (run_dir,) = find_run_dirs(output)
    record, state = read_record(find_checkpoint(run_dir))
    model = model_from_record(record, state)
    paths = compose_config([f"paths.output_dir={output}", f"paths.data_dir={tmp_path / 'data'}"]).paths
    datamodule = datamodule_from_record(record, paths)
    rows = rows_of(datamodule)
    table, status = checkpoint_table(rows, model, "model.ckpt", tmp_path / "cache", progress=False)
    assert status == "built" and table.values.shape[1] == 512 and table.task == "regression"
    assert set(table.rows["split"]) == {"train", "test"}  # devel is the test partition (no test labels)
    sequence = datamodule.dataset("all")[0][0]  # the first sequence: windows first_window ... + 7
    with torch.no_grad():
        expected = model.deep_features(sequence[None])[0].numpy()
    first = int(datamodule.manifest["first_window"].iloc[0])
    positions = [int(np.flatnonzero(table.rows["window"].to_numpy() == first + i)[0]) for i in range(8)]
    assert np.allclose(table.values[positions], expected, atol=1e-5)

    process = run_entry_point("audioml.classical", "experiment=muse/feature_grid", f"descriptors.source={run_dir}",
                              f"paths.output_dir={output}", "scoring.bootstrap_samples=100", "progress=false",
                              env={"AUDIOML_DATA_DIR": str(tmp_path / "data")})
    assert "best by validation" in process.stdout
    (grid_dir,) = (output / "classical").iterdir()
    assert len(pd.read_csv(grid_dir / "ranking.csv")) == 60
    assert {"test/ccc", "test/mse", "test/mae", "baseline/ccc"} <= set(json.loads((grid_dir / "metrics.json").read_text()))


def _emotify_sample_grid(experiment: str, shared_data: Path, tmp_path: Path, *overrides: str) -> pd.DataFrame:
    """``audioml-classical experiment=<experiment>`` on the 9 Emotify tracks here (3 grouped folds);
    the grid's ranking."""
    process = run_entry_point("audioml.classical", f"experiment={experiment}", "data.allow_missing=true",
                              "data.min_tracks_per_class=1", "protocol.k=3", "scoring.bootstrap_samples=100",
                              *overrides, f"paths.data_dir={shared_data}", f"paths.output_dir={tmp_path}",
                              "progress=false")
    assert "best by validation" in process.stdout
    (grid_dir,) = (tmp_path / "classical").iterdir()
    return pd.read_csv(grid_dir / "ranking.csv")


@pytest.mark.slow  # kept out of the default run for its time (15-30 s); `pytest -m slow` runs it
def test_emotify_handcrafted_runs_on_the_real_sample(shared_data, tmp_path):
    ranking = _emotify_sample_grid("emotify/handcrafted", shared_data, tmp_path)
    assert len(ranking) == 2 * 2 * 8 and ranking["test/acc"].between(0, 1).all()
    table = load_table(next((tmp_path / "cache" / "features").glob("handcrafted-*")))
    assert np.isfinite(table.values).all() and "mfcc_03_mean" in table.columns
    assert table.rows["group"].nunique() == len({p for p in table.rows["path"]})  # one group per track


@pytest.mark.slow  # deep features of real EfficientAT weights (about 15 s)
def test_backbone_features_of_a_pretrained_model(shared_weights, tmp_path):
    process = run_entry_point("audioml.classical", "descriptors=backbone", "descriptors.model=efficientat_mn04",
                              f"paths.output_dir={tmp_path}", *FAST_GRID, "data.num_workers=0",
                              env={"AUDIOML_WEIGHTS_DIR": str(shared_weights / "efficientat-mn04")})
    assert "best by validation" in process.stdout
    table = load_table(next((tmp_path / "cache" / "features").glob("backbone-*")))
    assert table.values.shape == (72, 384) and table.columns[0] == "efficientat_mn04_0000"
    metrics = json.loads(next((tmp_path / "classical").glob("*/metrics.json")).read_text())
    assert metrics["test/macro_f1"] > metrics["baseline/macro_f1"]


@pytest.mark.slow  # kept out of the default run for its time (15-30 s); `pytest -m slow` runs it
def test_emotify_deep_features_runs_on_the_real_sample(shared_data, tmp_path):
    """The study's Inception-v3 features + SVMs, end to end on the 9 Emotify tracks here, with the
    network's random initialisation (its ImageNet weights are not on this machine): the
    experiment's front end, input size and normalisation, the 2048-d pooled features, the grid."""
    own = compose_config(["experiment=emotify/deep_features"], config_name="classical").descriptors.overrides
    overrides = [*own, "model.pretrained=false"]
    ranking = _emotify_sample_grid("emotify/deep_features", shared_data, tmp_path,
                                   "descriptors.overrides=[" + ",".join(f"'{o}'" for o in overrides) + "]")
    assert len(ranking) == 2 * 1 * 4 and ranking["test/acc"].between(0, 1).all()  # grid=svm
    table = load_table(next((tmp_path / "cache" / "features").glob("backbone-*")))
    assert table.values.shape == (len(table.rows), 2048) and np.isfinite(table.values).all()
    assert table.rows["group"].nunique() == len(set(table.rows["path"]))  # one group per track
