"""Python entry point for notebooks and scripts: the same composition as ``audioml-train``.

    from audioml.api import compose_config, train
    cfg = compose_config(["data=synthetic", "model=cnn", "trainer.max_epochs=2"])
    metrics, run_dir = train(cfg)
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from audioml.config import compose_config

__all__ = ["compose_config", "train"]


def train(cfg: DictConfig) -> tuple[dict[str, float], Path]:
    """Train/validate/test ``cfg`` (from ``compose_config``) under its evaluation protocol
    (holdout or k-fold); returns ``(test metrics, run_dir)``: the run directory the config
    names, or the one of this data beside it when that one holds a run on other data."""
    from hydra.core.hydra_config import HydraConfig

    from audioml.run.training import run_evaluation_in

    return run_evaluation_in(cfg, Path(HydraConfig.get().runtime.output_dir))
