"""Every experiment and every data config composes and resolves (STYLE: the config directory is
the registry, so it is tested as a whole)."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from audioml.api import compose_config
from audioml.config import CONFIG_DIR

ALL_EXPERIMENTS = sorted((Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
#: Experiments of audioml-classical (they choose a grid=), composed with its config.
CLASSICAL = sorted(p.stem for p in ALL_EXPERIMENTS if "override /grid" in p.read_text())
EXPERIMENTS = sorted(p.stem for p in ALL_EXPERIMENTS if p.stem not in CLASSICAL)
DATASETS = sorted(p.stem for p in (Path(CONFIG_DIR) / "data").glob("*.yaml"))


#: The users' own data configs need the one value only the user knows.
USER_DATA = {"folder": ["data.root=/tmp/data/my_sounds"], "csv": ["data.csv=/tmp/data/my_clips.csv"]}


def _resolved(overrides):
    cfg = compose_config([*overrides, "paths.output_dir=/tmp/audioml-compose", "paths.data_dir=/tmp/data"])
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_resolves(name):
    config = _resolved([f"experiment={name}"])
    assert config["data"]["_target_"].startswith("audioml.data.")
    assert config["model"]["_target_"].startswith("audioml.models.")
    assert config["data"]["sample_rate"] == config["model"]["sample_rate"]
    assert config["callbacks"]["model_checkpoint"]["monitor"] == config["monitor"]


@pytest.mark.parametrize("name", CLASSICAL)
def test_classical_experiment_composes_and_resolves(name):
    cfg = compose_config([f"experiment={name}", "paths.output_dir=/tmp/audioml-compose", "paths.data_dir=/tmp/data"],
                         config_name="classical")
    config = OmegaConf.to_container(cfg, resolve=True)
    assert config["data"]["_target_"].startswith("audioml.data.") and config["descriptors"]["kind"]
    assert config["grid"]["estimators"] and config["protocol"]["kind"] in ("kfold", "partition")


@pytest.mark.parametrize("name", DATASETS)
def test_every_dataset_composes_with_the_default_model(name):
    model = "crnn_attention" if name == "muse" else "cnn"
    config = _resolved([f"data={name}", f"model={model}", *USER_DATA.get(name, [])])
    where = config["data"]["csv"] if name == "csv" else config["data"]["root"]
    if name == "synthetic":  # generated under paths.cache_dir when no root is given
        assert where is None and Path(config["data"]["cache_dir"]).is_absolute()
        return
    assert Path(where).is_absolute() or where.startswith("/tmp")


def test_there_is_an_experiment_per_study():
    studies = {name.split("_")[0] for name in EXPERIMENTS}
    assert {"emotify_handcrafted", "emotify_deep_features", "muse_feature_grid"} <= set(CLASSICAL)
    assert {"donateacry", "ravdess", "emotify", "muse"} <= studies
