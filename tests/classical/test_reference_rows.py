"""audioml's own reference rows (``audioml-reproduce``): eGeMAPS + SVMs on RAVDESS and eGeMAPS +
linear SVR on MuSe partitions, end to end through ``audioml-classical``: on the RAVDESS actors
1-2 in ../shared (per file: two actors cannot be split by actor) and on a generated MuSe package
(functionals and LLDs per 0.5 s window)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from helpers.datasets import make_muse_package
from helpers.runners import run_entry_point

from audioml.classical.table import load_table

pytest.importorskip("opensmile", reason="the opensmile extra (pip install -e '.[opensmile]')")


@pytest.mark.slow  # eGeMAPS of 120 real clips and an 8-pipeline grid in a subprocess: 30-90 s
def test_ravdess_egemaps_svm_on_the_real_actors(shared_data, tmp_path):
    process = run_entry_point("audioml.classical", "experiment=ravdess/egemaps_svm", "data.split=random",
                              "protocol.grouped=false", f"paths.data_dir={shared_data}", f"paths.output_dir={tmp_path}",
                              "progress=false", "scoring.bootstrap_samples=200")
    assert "best by validation" in process.stdout
    (grid_dir,) = (tmp_path / "classical").iterdir()
    ranking = pd.read_csv(grid_dir / "ranking.csv")
    assert len(ranking) == 2 * 4 and ranking["converged"].all()
    metrics = json.loads((grid_dir / "metrics.json").read_text())
    assert metrics["test/acc"] > metrics["baseline/acc"] + 0.2  # eGeMAPS carries emotion, even on two actors
    table = load_table(next((tmp_path / "cache" / "features").glob("opensmile-*")))
    assert table.values.shape == (120, 88) and table.rows["group"].nunique() == 2


@pytest.mark.slow  # two grids on a generated MuSe package in subprocesses: 40-90 s
def test_muse_egemaps_svr_on_generated_partitions(tmp_path):
    make_muse_package(tmp_path / "data" / "muse" / "c3_muse_stress_2022", seconds=20.0)
    for level, width in (("functionals", 88), ("lld", 50)):
        output = tmp_path / level
        process = run_entry_point("audioml.classical", "experiment=muse/egemaps_svr", f"descriptors.level={level}",
                                  f"paths.data_dir={tmp_path / 'data'}", f"paths.output_dir={output}",
                                  "progress=false", "scoring.bootstrap_samples=100")
        assert "best by validation" in process.stdout
        (grid_dir,) = (output / "classical").iterdir()
        metrics = json.loads((grid_dir / "metrics.json").read_text())
        assert np.isfinite(metrics["test/ccc"]) and metrics["test/ccc"] > 0.3  # loudness follows valence here
        table = load_table(next((output / "cache" / "features").glob("opensmile-*")))
        assert table.values.shape[1] == width and set(table.rows["split"]) == {"train", "test"}
