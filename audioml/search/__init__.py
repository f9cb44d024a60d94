"""Hyperparameter search on Optuna: audioml's Hydra sweeper (``hydra/sweeper=optuna``), the
trial a search job reports to, the pruning callback and the study's bookkeeping (resume after a
crash, many workers on one storage). The guide: ``docs/guide/hyperparameter-search.md``."""
