"""The search presets and every sampler and pruner of ``hydra/sweeper=optuna`` compose and build;
a search configured so that it cannot work is refused before any trial, saying what to change."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from helpers.search import write_legacy_preset
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf

from audioml.config import CONFIG_DIR, CONFIG_MODULE, register_resolvers
from audioml.search.space import default_study_name
from audioml.search.sweeper import OptunaSearch, SearchConfigError

SWEEPER_DIR = Path(CONFIG_DIR) / "hydra" / "sweeper"


def _compose(*overrides: str):
    register_resolvers()
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):  # as the apps: users' folders too
        return compose("train", overrides=["paths.output_dir=/x", *overrides], return_hydra_config=True)


def test_the_optuna_preset_prunes_on_the_monitor_in_its_direction():
    config = _compose("hparams_search=optuna")
    sweeper = config.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.audioml_optuna.OptunaSweeper" and sweeper.direction == "maximize"
    assert sweeper.storage is None and sweeper.study_name is None  # a journal file per command line
    assert sweeper.pruner._target_ == "optuna.pruners.MedianPruner" and config.optimized_metric == "val/best_macro_f1"
    assert config.callbacks.optuna_pruning.monitor == "val/macro_f1"
    on_loss = _compose("hparams_search=optuna", "experiment=donateacry/panns_mlp")
    assert (on_loss.optimized_metric, on_loss.hydra.sweeper.direction) == ("val/best_loss", "minimize")
    assert on_loss.callbacks.optuna_pruning.monitor == "val/loss"


def test_the_pareto_preset_has_one_direction_per_objective():
    config = _compose("hparams_search=optuna_pareto")
    assert list(config.optimized_metric) == ["val/best_macro_f1", "model/parameters"]
    assert list(config.hydra.sweeper.direction) == ["maximize", "minimize"]
    assert config.hydra.sweeper.sampler._target_ == "optuna.samplers.NSGAIISampler"


@pytest.mark.parametrize("name", sorted(p.stem for p in (SWEEPER_DIR / "sampler").glob("*.yaml")))
def test_every_sampler_builds(name):
    sampler = _compose("hparams_search=optuna", f"hydra/sweeper/sampler={name}").hydra.sweeper.sampler
    extra = {"search_space": {"loss": ["ce", "weighted_ce"]}} if name == "grid" else {}
    assert isinstance(instantiate(sampler, seed=3, **extra), optuna.samplers.BaseSampler)


@pytest.mark.parametrize("name", sorted(p.stem for p in (SWEEPER_DIR / "pruner").glob("*.yaml")))
def test_every_pruner_builds(name):
    pruner = _compose("hparams_search=optuna", f"hydra/sweeper/pruner={name}").hydra.sweeper.pruner
    assert isinstance(instantiate(pruner), optuna.pruners.BasePruner)


def _search(**changes) -> OptunaSearch:
    arguments = dict(sampler=OmegaConf.create({"_target_": "optuna.samplers.TPESampler"}),
                     pruner=OmegaConf.create({"_target_": "optuna.pruners.MedianPruner"}), direction="maximize",
                     storage=None, study_name=None, n_trials=4, n_jobs=1, max_failure_rate=1.0, params=None,
                     heartbeat_interval=30, grace_period=300, poll_interval=10)
    return OptunaSearch(**{**arguments, **changes})


@pytest.mark.parametrize("changes, message", [
    ({"search_space": {"x": {"type": "float"}}}, "hydra.sweeper.params"),
    ({"n_trials": 0}, "at least 1"),
    ({"direction": "up"}, "maximize or minimize"),
    ({"max_failure_rate": 2.0}, r"\[0, 1\]"),
])
def test_unusable_settings_are_refused_with_what_to_write(changes, message):
    with pytest.raises(SearchConfigError, match=message):
        _search(**changes)


def test_a_pruner_against_the_monitor_direction_is_refused():
    search = _search(direction="minimize")
    search.config = _compose("hparams_search=optuna")  # monitor val/macro_f1, maximised
    with pytest.raises(SearchConfigError, match="hydra.sweeper.direction=maximize"):
        search._check_pruning_direction(["val/best_macro_f1"])
    search.pruner_config = OmegaConf.create({"_target_": "optuna.pruners.NopPruner"})
    search._check_pruning_direction(["val/best_macro_f1"])  # no pruner: any direction


def test_default_study_names_are_safe_in_overrides_and_file_names():
    assert default_study_name("my data", "donateacry/vggish", "abc123") == "my_data-donateacry_vggish-abc123"


def test_a_preset_written_for_hydra_optuna_sweeper_composes_to_this_sweeper(tmp_path, monkeypatch):
    write_legacy_preset(tmp_path)
    monkeypatch.setenv("AUDIOML_CONFIG_PATH", str(tmp_path))
    config = _compose("hparams_search=legacy")
    HydraConfig.instance().set_config(config)  # as the sweep callback does: ${hydra:...} resolves
    sweeper = instantiate(config.hydra.sweeper)  # as Hydra builds it, with the search behind it
    assert type(sweeper).__module__ == "hydra_plugins.audioml_optuna"
    assert sweeper.search.storage == "sqlite:////x/optuna/studies.db" and sweeper.search.directions == ["maximize"]
    assert sweeper.search.sampler_config.n_startup_trials == 5 and sweeper.search.study_name == "donateacry-cnn"
