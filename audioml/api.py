"""Python entry point for notebooks and scripts: the same composition as ``audioml-train``.

    from audioml.api import compose_config, train
    cfg = compose_config(["data=synthetic", "model=cnn", "trainer.max_epochs=2"])
    metrics, run_dir = train(cfg)
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from audioml.config import compose_config

__all__ = ["compose_config", "train"]


def train(cfg: DictConfig) -> tuple[dict[str, float], Path]:
    """Train/validate/test ``cfg`` (from ``compose_config``) under its evaluation protocol
    (holdout or k-fold); returns ``(test metrics, run_dir)``: the run directory the config
    names, or the one of this data beside it when that one holds a run on other data.

    A config whose run finished before is not trained again: its results are returned with a
    ``UserWarning`` saying so (shown in a notebook). audioml's log lines go to the console when
    nothing else has configured logging."""
    import warnings

    from hydra.core.hydra_config import HydraConfig

    from audioml.logs import quiet_third_party
    from audioml.run.fit.training import run_evaluation_in
    from audioml.run.rundir import RunDir

    if not logging.getLogger().handlers:
        logging.basicConfig(format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s", level=logging.WARNING)
        logging.getLogger("audioml").setLevel(logging.INFO)
    quiet_third_party()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    finished_before = RunDir(run_dir).finished() is not None
    metrics, run_dir = run_evaluation_in(cfg, run_dir)
    if finished_before:
        warnings.warn(f"{run_dir} finished before: these are its results, nothing was trained. Change the config "
                      "(e.g. seed=...) or delete the folder to train again", UserWarning, stacklevel=2)
    return metrics, run_dir
