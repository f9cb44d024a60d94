"""A hyperparameter-search preset as users wrote them for hydra-optuna-sweeper (SQLite storage,
a study named after data and model, TPE's keys), for the tests that it still works."""

from __future__ import annotations

from pathlib import Path

LEGACY_PRESET = """\
# @package _global_
defaults:
  - override /hydra/sweeper: optuna
  - override /hydra/sweeper/sampler: tpe
optimized_metric: val/best_macro_f1
hydra:
  sweeper:
    direction: maximize
    study_name: ${hydra:runtime.choices.data}-${hydra:runtime.choices.model}
    storage: sqlite:///${paths.output_dir}/optuna/studies.db
    n_trials: 2
    n_jobs: 1
    sampler:
      seed: ${seed}
      n_startup_trials: 5
    params:
      model.optimizer.lr: tag(log, interval(1e-4, 1e-2))
      loss: choice(ce, weighted_ce)
"""


def write_legacy_preset(config_dir: Path) -> Path:
    """``<config_dir>/hparams_search/legacy.yaml`` (``AUDIOML_CONFIG_PATH=<config_dir>``, ``hparams_search=legacy``)."""
    path = Path(config_dir) / "hparams_search" / "legacy.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(LEGACY_PRESET)
    return path
