"""Feature fusion (``descriptors=fusion``: sources side by side, columns ``<source>__<column>``)
and per-group standardisation (``normalise_per_group``): pure table transforms checked against
scikit-learn, a grid on a fused table, and (``-m slow``) ``audioml-classical`` end to end on a
fused, standardised table of openSMILE and librosa features."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from sklearn.preprocessing import StandardScaler

from audioml.classical.grid import load_pipeline, run_grid
from audioml.classical.run import run_classical
from audioml.classical.table import FeatureTable, load_table
from audioml.classical.transforms import fuse, standardise_per_group
from audioml.config import compose_config
from audioml.stats import HonestScoring

FAST_GRID = ["~grid.reducers.pca20", "~grid.estimators.random_forest", "~grid.estimators.gradient_boosting",
             "~grid.estimators.bagged_trees", "~grid.estimators.svm_cubic", "~grid.estimators.svm_rbf",
             "scoring.bootstrap_samples=100", "n_jobs=1", "progress=false", "data.num_workers=0"]


def _table(columns: list[str], rows: list[int], seed: int = 0, groups: int = 4) -> FeatureTable:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"path": [f"clip{i}.wav" for i in rows], "offset": [0.0] * len(rows),
                          "group": [f"speaker{i % groups}" for i in rows], "split": ""})
    return FeatureTable(rng.normal(size=(len(rows), len(columns))).astype(np.float32), columns, frame,
                        np.array([i % 2 for i in rows]), "classification", ["a", "b"], f"key{seed}",
                        pd.DataFrame(columns=["path", "reason"]))


def test_fusion_prefixes_columns_by_source_and_keeps_rows_every_source_has():
    egemaps = _table(["F0_amean", "loudness_amean"], list(range(10)), seed=1)
    mir = _table(["rms_mean", "mfcc_00_mean", "tempo"], [9, 8, 7, 6, 5, 4, 3, 2, 0], seed=2)  # no clip1, reordered
    mir.skipped = pd.DataFrame({"path": ["clip1.wav"], "reason": ["descriptors failed: silent"]})
    fused = fuse({"egemaps": egemaps, "mir": mir})
    assert fused.columns == ["egemaps__F0_amean", "egemaps__loudness_amean", "mir__rms_mean", "mir__mfcc_00_mean",
                             "mir__tempo"]
    assert list(fused.rows["path"]) == [f"clip{i}.wav" for i in (0, *range(2, 10))]  # the first source's order
    row = list(fused.rows["path"]).index("clip7.wav")
    np.testing.assert_array_equal(fused.values[row], np.r_[egemaps.values[7], mir.values[2]])
    assert list(fused.targets) == [i % 2 for i in (0, *range(2, 10))]
    assert set(zip(fused.skipped["path"], fused.skipped["reason"])) == {
        ("clip1.wav", "mir: descriptors failed: silent"), ("clip1.wav", "no mir features")}
    assert fused.key != fuse({"egemaps": egemaps, "mir": _table(mir.columns, list(range(10)), seed=3)}).key


def test_fusion_refuses_tables_of_different_data():
    first = _table(["a"], list(range(6)))
    relabelled = _table(["b"], list(range(6)), seed=1)
    relabelled.targets = 1 - relabelled.targets
    with pytest.raises(ValueError, match="different data"):
        fuse({"one": first, "two": relabelled})
    with pytest.raises(ValueError, match="at least two sources"):
        fuse({"one": first})
    with pytest.raises(ValueError, match="names"):
        fuse({"one": first, "t__wo": _table(["b"], list(range(6)))})


def test_group_standardisation_uses_only_each_groups_own_rows():
    table = _table(["f0", "f1", "f2"], list(range(40)), groups=4)
    outlier = table.rows["group"] == "speaker3"
    table.values[outlier.to_numpy()] = table.values[outlier.to_numpy()] * 1e4 + 1e6  # a planted outlier group
    standardised = standardise_per_group(table)
    groups = table.rows["group"].to_numpy()
    for group in np.unique(groups):  # each group equals scikit-learn's scaler fitted on that group alone
        index = groups == group
        expected = StandardScaler().fit_transform(table.values[index].astype(np.float64))
        np.testing.assert_allclose(standardised.values[index], expected, rtol=1e-5, atol=1e-5)
    without = _table(["f0", "f1", "f2"], list(range(40)), groups=4)
    without.values[outlier.to_numpy()] = 0.0  # the same table with the outlier group harmless
    others = ~outlier.to_numpy()
    np.testing.assert_array_equal(standardise_per_group(without).values[others], standardised.values[others])
    relabelled = _table(["f0", "f1", "f2"], list(range(40)), groups=4)
    relabelled.values, relabelled.targets = table.values, 1 - table.targets  # labels are never read
    np.testing.assert_array_equal(standardise_per_group(relabelled).values, standardised.values)
    assert standardised.key != table.key


def test_a_grid_runs_on_a_fused_table(tmp_path):
    rows = list(range(48))
    egemaps, mir = _table(["F0_amean", "loudness_amean"], rows, seed=1, groups=8), _table(["rms_mean"], rows, seed=2,
                                                                                          groups=8)
    for table in (egemaps, mir):  # speakers of both classes
        table.rows["group"] = [f"speaker{i // 6}" for i in rows]
    egemaps.values[:, 0] += 2.0 * egemaps.targets  # one source carries the class
    fused = standardise_per_group(fuse({"egemaps": egemaps, "mir": mir}))
    grid = compose_config(["grid=svm", "~grid.estimators.svm_quadratic", "~grid.estimators.svm_cubic"],
                          config_name="classical").grid
    result = run_grid(fused, grid, {"kind": "kfold", "k": 4, "val_fraction": 0.25}, tmp_path, HonestScoring(50),
                      n_jobs=1)
    assert len(result.ranking) == 2 * 2 and result.ranking["converged"].all()
    assert result.metrics["test/acc"] > result.metrics["baseline/acc"]
    assert load_pipeline(tmp_path / "best" / "pipeline.skops").predict(fused.values).shape == (48,)


@pytest.mark.slow  # openSMILE and librosa on generated clips, then a grid with MLflow: 30-100 s
def test_audioml_classical_on_a_fused_group_standardised_table(tmp_path):
    pytest.importorskip("opensmile")
    output = tmp_path / "out"
    cfg = compose_config(["data=synthetic", "data.clips_per_class=8", "descriptors=fusion",
                          "descriptors.sources.mir.names=[rms,spectral_centroid,mfcc]", "normalise_per_group=true",
                          f"paths.output_dir={output}", f"export={tmp_path / 'table'}", *FAST_GRID],
                         config_name="classical")
    result = run_classical(cfg, tmp_path / "run")
    assert load_table(next((output / "cache" / "features").glob("opensmile-*"))).values.shape[1] == 88
    fused = load_table(tmp_path / "table")  # what the grid ran on
    assert fused.columns[0] == "egemaps__F0semitoneFrom27.5Hz_sma3nz_amean" and fused.columns[-1] == "mir__mfcc_12_std"
    assert all(c.startswith(("egemaps__", "mir__")) for c in fused.columns)
    per_group = pd.DataFrame(fused.values.astype(np.float64)).groupby(fused.rows["group"].to_numpy()).mean()
    assert np.abs(per_group.to_numpy()).max() < 1e-4  # every group centred on its own mean
    ranking = pd.read_csv(tmp_path / "run" / "ranking.csv")
    assert len(ranking) == 2 * 3 and result.best == ranking["combination"].iloc[0]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test/macro_f1"] > metrics["baseline/macro_f1"]  # the synthetic classes are learnable
    client = mlflow.MlflowClient(f"sqlite:///{output / 'mlflow' / 'mlflow.db'}")
    (parent,) = [r for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
                 if r.data.tags.get("audioml.role") == "sweep"]
    params = parent.data.params
    assert params["features.sources"] == "egemaps,mir" and params["features.columns"] == str(88 + (1 + 1 + 13) * 2)
    assert params["features.normalise_per_group"] == "True" and params["features.egemaps.feature_set"] == "eGeMAPSv02"
