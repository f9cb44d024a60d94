"""Hydra sweeper plugin: hyperparameter search on Optuna (``hydra/sweeper=optuna``, configured by
``audioml/conf/hydra/sweeper/``). A thin shell: Hydra discovers it here, where plugins must
live; the search is ``audioml.search.sweeper.OptunaSearch``, imported when a sweep starts (not
at plugin discovery, which every Hydra command does)."""

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class OptunaSweeper(Sweeper):
    """Hydra's face of ``audioml.search.sweeper.OptunaSearch`` (same keyword arguments)."""

    def __init__(self, **config: Any) -> None:
        from audioml.search.sweeper import OptunaSearch

        self.search = OptunaSearch(**config)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.search.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self.search.sweep(arguments)
