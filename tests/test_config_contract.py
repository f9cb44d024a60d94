"""Every experiment and every data config composes and resolves (STYLE: the config directory is
the registry, so it is tested as a whole); one experiment layout, and the earlier names are
deprecated aliases that run the same config in the same run directory."""

import logging
from pathlib import Path

import pytest
from helpers.experiments import EXPERIMENT_DIR, deprecated_aliases, is_classical, recipes
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from audioml.api import compose_config
from audioml.config import CONFIG_DIR, CONFIG_MODULE, DEPRECATED_ALIAS_KEY, register_resolvers, run_key
from audioml.entry import hydra_task

#: Experiments of audioml-classical (they choose a grid=), composed with its config.
CLASSICAL = [name for name in recipes() if is_classical(name)]
EXPERIMENTS = [name for name in recipes() if name not in CLASSICAL]
ALIASES = deprecated_aliases()
DATASETS = sorted(p.stem for p in (Path(CONFIG_DIR) / "data").glob("*.yaml"))
PATHS = ["paths.output_dir=/tmp/audioml-compose", "paths.data_dir=/tmp/data"]


#: The users' own data configs need the one value only the user knows.
USER_DATA = {"folder": ["data.root=/tmp/data/my_sounds"], "csv": ["data.csv=/tmp/data/my_clips.csv"]}


def _resolved(overrides, config_name="train"):
    cfg = compose_config([*overrides, *PATHS], config_name=config_name)
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
    config = _resolved([f"experiment={name}"], "classical")
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
    studies = {name.split("/")[0] for name in EXPERIMENTS}
    assert {"emotify/handcrafted", "emotify/deep_features", "muse/feature_grid"} <= set(CLASSICAL)
    assert {"donateacry", "ravdess", "emotify", "muse"} <= studies


def test_one_experiment_layout():
    """Every recipe is ``<dataset>/<recipe>`` (``quickstart`` aside), the dataset a ``data=``
    option; an earlier name leads straight to a recipe."""
    datasets = set(DATASETS)
    for name in recipes():
        assert name == "quickstart" or (name.count("/") == 1 and name.split("/")[0] in datasets), name
    for old, new in ALIASES.items():
        assert new in recipes(), (old, new)
        text = (EXPERIMENT_DIR / f"{old}.yaml").read_text()
        assert f"  - {new}\n" in text and f"{DEPRECATED_ALIAS_KEY}: {new}" in text


def _hydra_config(overrides, config_name):
    """The config as ``@hydra.main`` hands it over (with the ``hydra`` node, before the task)."""
    register_resolvers()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return compose(config_name=config_name, overrides=[*overrides, *PATHS], return_hydra_config=True)


@pytest.mark.parametrize("old", sorted(ALIASES))
def test_an_earlier_name_warns_and_is_the_same_run(old, caplog):
    """``experiment=<old>``: one warning line naming the new name, the same resolved config and
    the same run directory (the marker is not part of the run key)."""
    new = ALIASES[old]
    config_name = "classical" if is_classical(new) else "train"
    with caplog.at_level(logging.WARNING, logger="audioml"):
        aliased = _resolved([f"experiment={old}"], config_name)
    warnings = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert warnings == [f"experiment={old} is deprecated: use experiment={new}"]
    caplog.clear()
    assert aliased == _resolved([f"experiment={new}"], config_name)
    assert not [r for r in caplog.records if "deprecated" in r.getMessage()]
    before, after = _hydra_config([f"experiment={old}"], config_name), _hydra_config([f"experiment={new}"], config_name)
    assert before[DEPRECATED_ALIAS_KEY] == new and DEPRECATED_ALIAS_KEY not in after
    assert run_key(before) == run_key(after)


def test_an_entry_point_drops_the_marker_before_the_task(caplog):
    """The task function of every entry point (``hydra_task``) gets the config without the
    marker, after one warning line."""
    cfg = _hydra_config(["experiment=donateacry_vggish"], "train")
    HydraConfig.instance().set_config(cfg)
    seen = []
    with open_dict(cfg):
        del cfg["hydra"]
    with caplog.at_level(logging.WARNING, logger="audioml"):
        hydra_task("audioml-train")(lambda job: seen.append(OmegaConf.to_container(job)))(cfg)
    assert DEPRECATED_ALIAS_KEY not in seen[0] and seen[0]["model"]["optimizer"]["lr"] == 1.0e-4
    assert [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()] == \
        ["experiment=donateacry_vggish is deprecated: use experiment=donateacry/vggish"]


def test_how_a_run_is_shown_is_not_part_of_its_run_key():
    """The notebook (no progress bar, no workers) and the command line train the same run; a
    setting that changes the result (the seed) is another run."""
    plain = _hydra_config(["data=synthetic", "model=cnn"], "train")
    shown = _hydra_config(["data=synthetic", "model=cnn", "trainer.enable_progress_bar=false", "data.num_workers=0"],
                          "train")
    assert run_key(plain) == run_key(shown)
    assert run_key(_hydra_config(["data=synthetic", "model=cnn", "seed=7"], "train")) != run_key(plain)
