"""A saved ``.skops`` pipeline is trusted by its types, one by one (issue 35, 3c): every pipeline a
grid fits loads, and a file naming a function (``builtins.eval``, ``numpy.savetxt``) is refused
before anything of it is built."""

from __future__ import annotations

import builtins
import glob

import numpy as np
import pytest
import skops.io as sio
from hydra.utils import instantiate
from omegaconf import OmegaConf
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from audioml.classical.grid import load_pipeline
from audioml.config import CONFIG_DIR


@pytest.mark.parametrize("function", [builtins.eval, builtins.exec, np.savetxt, np.load])
def test_a_pipeline_naming_a_function_is_refused(tmp_path, function):
    path = tmp_path / "crafted.skops"
    path.write_bytes(sio.dumps(Pipeline([("scale", StandardScaler()), ("f", FunctionTransformer(func=function))])))
    with pytest.raises(ValueError, match=f"refusing to load a pipeline that names .*{function.__name__}"):
        load_pipeline(path)


def test_every_pipeline_the_grids_fit_loads_and_predicts_the_same(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(60, 12))
    labels, values = np.arange(60) % 3, rng.normal(size=60)
    checked = 0
    for grid_file in sorted(glob.glob(f"{CONFIG_DIR}/grid/*.yaml")):
        grid = OmegaConf.load(grid_file)
        targets = values if "regression" in grid_file else labels
        for name, node in grid.estimators.items():
            steps = [(part, instantiate(next(iter(grid[part].values()), None) or {"_target_": "sklearn.preprocessing.StandardScaler"}))
                     for part in ("scalers",) if grid.get(part)]
            pipeline = Pipeline([*steps, ("estimator", instantiate(node, _convert_="all"))]).fit(features, targets)
            path = tmp_path / f"{name}.skops"
            path.write_bytes(sio.dumps(pipeline))
            loaded = load_pipeline(path)
            assert np.allclose(loaded.predict(features), pipeline.predict(features)), name
            checked += 1
    assert checked >= 10
