"""``audioml-train``: compose data x model x features x augmentation x loss x trainer, train,
validate, test, and record everything in the run directory and MLflow.

A thin Hydra entry point: the run layer (``audioml.run``) is imported only once Hydra has
composed a job, so ``audioml-train --help`` starts without torch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from audioml.config import CONFIG_PATH
from audioml.entry import hydra_task, run_hydra_app


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
@hydra_task("audioml-train")
def _app(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from audioml import distributed
    from audioml.run.training import run_evaluation

    hydra_config = HydraConfig.get()
    run_dir = Path(hydra_config.runtime.output_dir)
    multirun_job = list(hydra_config.overrides.task) if hydra_config.mode == RunMode.MULTIRUN else None
    with distributed.ddp_job(multirun_job):  # DDP ranks started by this job re-run this job alone
        metrics = run_evaluation(cfg, run_dir)
    metric_name = cfg.get("optimized_metric")
    return metrics.get(metric_name) if metric_name else None


def main() -> None:
    """Console script (``audioml.entry.run_hydra_app``): the command line to Hydra; a multirun
    that raised ends its parent MLflow run."""
    try:
        run_hydra_app("audioml-train", _app)
    except BaseException as error:
        # a multirun that raised (a job failed, the launcher refused, Ctrl-C) ends its parent MLflow run
        # and prints its summary; the sweep module is loaded only by a multirun's callback
        sweep = sys.modules.get("audioml.run.sweep")
        if sweep is not None:
            sweep.end_running_sweep(error)
        raise
    sweep = sys.modules.get("audioml.run.sweep")
    if sweep is not None and sweep.sweep_had_failures():  # a sweeper that went on past failed jobs (Optuna)
        sys.exit(1)


if __name__ == "__main__":
    main()
