"""``audioml-train``: compose data x model x features x augmentation x loss x trainer, train,
validate, test, and record everything in the run directory and MLflow.

A thin Hydra entry point: the run layer (``audioml.run``) is imported only once Hydra has
composed a job, so ``audioml-train --help`` starts without torch.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, ListConfig

from audioml.config import CONFIG_PATH
from audioml.entry import hydra_task, run_hydra_app


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
@hydra_task("audioml-train")
def _app(cfg: DictConfig) -> float | list[float | None] | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from audioml.run.fit import distributed
    from audioml.run.fit.training import run_evaluation_in

    hydra_config = HydraConfig.get()
    run_dir = Path(hydra_config.runtime.output_dir)
    multirun_job = list(hydra_config.overrides.task) if hydra_config.mode == RunMode.MULTIRUN else None
    trial = _search_trial(hydra_config) if multirun_job is not None else None
    if trial is not None and trial.given_up():
        logging.getLogger(__name__).warning("%s was given up meanwhile (a retry trains its run): not trained here",
                                            trial)
        return None
    # DDP ranks started by this job re-run this job alone; a search trial reports while it trains (a trial
    # told before, whose run's record a killed sweep left incomplete, only completes it)
    reporting = trial.running() if trial is not None and trial.is_running() else contextlib.nullcontext()
    with distributed.ddp_job(multirun_job), reporting:
        metrics, run_dir = run_evaluation_in(cfg, run_dir)
    metric_name = cfg.get("optimized_metric")
    names = [str(m) for m in metric_name] if isinstance(metric_name, ListConfig) else [metric_name] if metric_name else []
    if trial is not None:  # tells the study the outcome (COMPLETE or PRUNED)
        values = trial.finish(metrics, run_dir, names)
        return values if len(values) > 1 else values[0]
    values = [metrics.get(name) for name in names]
    return (values if len(values) > 1 else values[0]) if values else None


def _search_trial(hydra_config):
    """The Optuna trial this multirun job trains for (``audioml.search``), or ``None``: another
    sweeper's job, or a DDP rank other than zero (rank zero alone reports)."""
    from audioml.run.fit import distributed

    sweeper = hydra_config.sweeper
    if sweeper.get("trial") is None or not distributed.is_global_zero_process():
        return None
    from audioml.search.sweeper import job_trial

    return job_trial(hydra_config)


def main() -> None:
    """Console script (``audioml.entry.run_hydra_app``): the command line to Hydra; a multirun
    that raised ends its parent MLflow run."""
    try:
        run_hydra_app("audioml-train", _app)
    except BaseException as error:
        # a multirun that raised (a job failed, the launcher refused, Ctrl-C) ends its parent MLflow run
        # and prints its summary; the sweep module is loaded only by a multirun's callback
        sweep = sys.modules.get("audioml.run.record.sweep")
        if sweep is not None:
            sweep.end_running_sweep(error)
        raise
    sweep = sys.modules.get("audioml.run.record.sweep")
    if sweep is not None and sweep.sweep_had_failures():  # a sweeper that went on past failed jobs (Optuna)
        sys.exit(1)


if __name__ == "__main__":
    main()
