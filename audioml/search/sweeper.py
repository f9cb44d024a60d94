"""audioml's Hydra sweeper on Optuna (``hydra/sweeper=optuna``, the plugin class
``hydra_plugins.audioml_optuna.OptunaSweeper``) and the job's side of it (:func:`job_trial`): the
Hydra boundary of the search, where its config is read and its samplers and pruners built.

The sweeper asks the study for trials and launches each through the configured launcher with its
sampled overrides plus the Hydra overrides naming the trial; each job opens the storage itself
(``audioml.search.job``), so no trial object crosses a process boundary. ``n_trials`` is the
study's total across reruns and workers. Design: docs/design/resume-and-finishing.md#a-searchs-trials."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState

from audioml.search import trials
from audioml.search.job import JobTrial, TrialRef
from audioml.search.space import (
    GRID_SAMPLER,
    SearchSpace,
    SearchSpaceError,
    default_study_name,
    grid_values,
    parse_space,
)
from audioml.search.storage import default_storage, open_storage, shown_storage

log = logging.getLogger(__name__)

__all__ = ["OptunaSearch", "SearchConfigError", "SearchStopped", "job_trial", "RESULTS_FILE"]

#: Written into the sweep directory when the search ends (as hydra-optuna-sweeper did).
RESULTS_FILE = "optimization_results.yaml"


class SearchConfigError(CompactHydraException):
    """The search cannot start as configured (Hydra prints the message alone, exit status 1)."""


class SearchStopped(CompactHydraException):
    """More of the search's trials failed than ``max_failure_rate`` allows."""


def _directions(direction: Any) -> list[str]:
    values = list(direction) if isinstance(direction, (list, tuple, ListConfig)) else [direction]
    directions = [str(getattr(d, "name", d)).lower() for d in values]
    for value in directions:
        if value not in ("minimize", "maximize"):
            raise SearchConfigError(f"hydra.sweeper.direction={value}: use maximize or minimize (a list of them for "
                                    "several objectives)")
    return directions


def _objectives(config: DictConfig) -> list[str]:
    metric = OmegaConf.select(config, "optimized_metric")
    return [str(m) for m in metric] if isinstance(metric, ListConfig) else [str(metric)] if metric else []


class OptunaSearch:
    """The sweep of ``hydra/sweeper=optuna`` (``audioml/conf/hydra/sweeper/optuna.yaml`` documents
    every argument). ``sampler`` and ``pruner``: their configs (built here, per trial)."""

    def __init__(self, *, sampler: DictConfig, pruner: DictConfig, direction: Any, storage: str | None,
                 study_name: str | None, n_trials: int, n_jobs: int, max_failure_rate: float,
                 params: DictConfig | None, heartbeat_interval: float, grace_period: float, poll_interval: float,
                 search_space: Any = None, custom_search_space: Any = None) -> None:
        if search_space is not None or custom_search_space is not None:
            raise SearchConfigError("hydra.sweeper.search_space and custom_search_space are not supported by audioml's "
                                    "Optuna sweeper: write the search space as hydra.sweeper.params "
                                    "(e.g. model.optimizer.lr: tag(log, interval(1e-4, 1e-2)))")
        if n_trials < 1 or n_jobs < 1:
            raise SearchConfigError(f"hydra.sweeper.n_trials={n_trials}, n_jobs={n_jobs}: both must be at least 1")
        if not 0.0 <= max_failure_rate <= 1.0:
            raise SearchConfigError(f"hydra.sweeper.max_failure_rate={max_failure_rate}: a fraction in [0, 1]")
        self.sampler_config, self.pruner_config = sampler, pruner
        self.directions = _directions(direction)
        self.storage, self.study_name = storage, study_name
        self.n_trials, self.n_jobs, self.max_failure_rate = int(n_trials), int(n_jobs), float(max_failure_rate)
        self.params = params
        self.heartbeat_interval, self.grace_period = float(heartbeat_interval), float(grace_period)
        self.poll_interval = float(poll_interval)
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(config=config, hydra_context=hydra_context,
                                                                task_function=task_function)

    # ----------------------------------------------------------------------------- the sweep
    def sweep(self, arguments: list[str]) -> None:
        from audioml.run.record.sweep import sweep_key

        config = self.config
        try:
            space = parse_space([f"{k}={v}" for k, v in (self.params or {}).items()] + list(arguments))
        except SearchSpaceError as error:
            raise SearchConfigError(f"hydra.sweeper.params: {error}") from None
        objectives = _objectives(config)
        if len(objectives) != len(self.directions):
            raise SearchConfigError(f"optimized_metric names {len(objectives)} metric(s) ({', '.join(objectives)}) and "
                                    f"hydra.sweeper.direction {len(self.directions)}: give one direction per metric")
        self._check_pruning_direction(objectives)
        key = sweep_key(list(config.hydra.overrides.task), config.hydra.job.get("config_name"))
        choices = config.hydra.runtime.choices
        self.defaulted_name = not self.study_name
        study_name = self.study_name or default_study_name(choices.get("data"), choices.get("model"), key)
        location = self.storage or default_storage(config.hydra.sweep.dir, study_name)
        n_trials, grid = self.n_trials, None
        if OmegaConf.select(self.sampler_config, "_target_") == GRID_SAMPLER:
            try:
                grid = grid_values(space)
            except SearchSpaceError as error:
                raise SearchConfigError(f"hydra/sweeper/sampler=grid: {error}") from None
            size = 1
            for values in grid.values():
                size *= len(values)
            if size < n_trials:
                log.info("the grid has %d points: n_trials %d -> %d", size, n_trials, size)
                n_trials = size

        storage, study, pruner = self._open_study(location, study_name, grid)
        study_id = storage.get_study_id_from_name(study_name)
        before = trials.tally(study.get_trials(deepcopy=False))
        log.info("Optuna study %s in %s: %d of %d trials asked before (%d complete, %d pruned, %d failed); sampler %s, "
                 "pruner %s, %s %s. Watch it: optuna-dashboard %s", study_name, shown_storage(location),
                 before.finished + before.running + before.waiting, n_trials, before.complete, before.pruned,
                 before.failed, self.sampler_config.get("_target_", "?").rsplit(".", 1)[-1], type(pruner).__name__,
                 "/".join(self.directions), ", ".join(objectives), shown_storage(location))
        self._complete_records(study, space, study_name)
        heartbeat = trials.Heartbeat(storage, self.heartbeat_interval)
        try:
            self._run_trials(study, storage, study_id, space, grid, n_trials, study_name, heartbeat)
        finally:
            heartbeat.stop()
        self._write_results(study, objectives, Path(config.hydra.sweep.dir))

    def _open_study(self, location: str, study_name: str, grid: dict[str, list] | None):
        """``(storage, study, pruner)``: the study created or loaded, checked against ``direction``."""
        try:
            storage = open_storage(location)
        except Exception as error:  # noqa: BLE001 - a database that refuses or is not there: said in one line
            raise SearchConfigError(f"hydra.sweeper.storage={shown_storage(location)} cannot be opened: "
                                    f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from error
        pruner = instantiate(self.pruner_config)
        study = optuna.create_study(storage=storage, study_name=study_name, directions=self.directions,
                                    load_if_exists=True, sampler=self._sampler(None, grid), pruner=pruner)
        if [d.name.lower() for d in study.directions] != self.directions:
            raise SearchConfigError(f"study {study_name} in {shown_storage(location)} was created with direction "
                                    f"{[d.name.lower() for d in study.directions]}, not {self.directions}: name another "
                                    "study (hydra.sweeper.study_name=...) or storage")
        return storage, study, pruner

    def _run_trials(self, study: optuna.Study, storage, study_id: int, space: SearchSpace, grid, n_trials: int,
                    study_name: str, heartbeat: trials.Heartbeat) -> None:
        """Ask, launch and tell until the study holds ``n_trials`` counted trials and none runs
        (stale trials retried first; while other workers run the last ones, wait for them)."""
        job_number, failures, launched = 0, 0, 0
        while True:
            trials.recover_stale(study, storage, study_id, self.grace_period)
            now = trials.tally(study.get_trials(deepcopy=False))
            askable = now.askable(n_trials)
            if askable == 0:
                if now.running == 0:
                    return
                time.sleep(self.poll_interval)  # other workers run the last trials; theirs may need a retry
                continue
            batch = [t for t in (self._ask(study, storage, study_id, space, grid, n_trials, heartbeat)
                                 for _ in range(min(self.n_jobs, askable))) if t is not None]
            if not batch:
                continue
            numbers = [t.number for t in batch]  # a job's number is its trial's when they run on
            first = numbers[0] if numbers == list(range(numbers[0], numbers[0] + len(numbers))) else job_number
            returns = self.launcher.launch([self._job_overrides(space, t, study_name) for t in batch],
                                           initial_job_idx=first)
            job_number, launched = max(job_number, first + len(returns)), launched + len(returns)
            for trial, job_return in zip(batch, returns):
                heartbeat.drop(trials.trial_id(storage, study_id, trial.number))
                failures += self._tell_failure(study, storage, study_id, trial.number, job_return)
            if failures and failures / launched > self.max_failure_rate:
                raise SearchStopped(f"{failures} of the {launched} trials launched here failed, more than "
                                    f"hydra.sweeper.max_failure_rate={self.max_failure_rate}: the search stops "
                                    "(their tracebacks are in their run directories)")

    def _complete_records(self, study: optuna.Study, space: SearchSpace, study_name: str) -> None:
        """Launch again the trials whose outcome was told but whose run's record (MLflow, ``DONE``)
        a killed sweep left incomplete (it is completed while the next job trains): each job
        completes its run without training or telling again. Run directories of other machines
        (not here) and those a process holds are left alone."""
        from audioml.run.rundir import RunDir

        todo = []
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            run = RunDir(str(trial.user_attrs.get("run_dir", "")))
            run_dir = run.path
            if (not trial.user_attrs.get("run_dir") or not run_dir.is_dir() or run.finished() is not None
                    or run.locked()):
                continue
            if set(trial.params) != set(space.distributions):
                log.warning("trial %d: its run %s is incomplete, and its parameters are not this search space's: "
                            "not completed (rerun its own command)", trial.number, run_dir)
                continue
            todo.append(trial)
        if not todo:
            return
        log.info("trial(s) %s: told, but the record of their run was left incomplete: completing it",
                 ", ".join(str(t.number) for t in todo))
        for trial in todo:  # one at a time: each job's number is its trial's
            self.launcher.launch([self._job_overrides(space, trial, study_name)], initial_job_idx=trial.number)

    def _check_pruning_direction(self, objectives: Sequence[str]) -> None:
        """A pruner stops trials on the monitored validation value: the study must optimise it in
        the monitor's direction (``monitor_mode``)."""
        pruning = OmegaConf.select(self.config, "callbacks.optuna_pruning")
        target = str(OmegaConf.select(self.pruner_config, "_target_") or "")
        if not pruning or target.endswith("NopPruner") or len(self.directions) > 1:
            return
        mode = str(OmegaConf.select(self.config, "monitor_mode") or "max")
        if self.directions[0] != f"{mode}imize":
            raise SearchConfigError(f"the pruner watches {OmegaConf.select(self.config, 'monitor')} ({mode}imised: "
                                    f"monitor_mode={mode}) while the study {self.directions[0]}s {objectives[0]}: set "
                                    f"hydra.sweeper.direction={mode}imize, or hydra/sweeper/pruner=none")

    def _sampler(self, number: int | None, grid: dict[str, list] | None) -> optuna.samplers.BaseSampler:
        """The configured sampler; its ``seed`` offset by the trial ``number`` (each trial draws
        from its own stream: a continued study or a second worker does not repeat the first
        trials' draws, and one trial's draws do not depend on which process asks it). Not the
        grid sampler's: its seed orders the grid, which every trial and worker must share."""
        kwargs: dict[str, Any] = {}
        seed = OmegaConf.select(self.sampler_config, "seed")
        if grid is not None:
            kwargs["search_space"] = grid
        elif seed is not None and number is not None:
            kwargs["seed"] = int(seed) + number
        return instantiate(self.sampler_config, **kwargs)

    def _ask(self, study: optuna.Study, storage, study_id: int, space: SearchSpace, grid, n_trials: int,
             heartbeat: trials.Heartbeat) -> optuna.trial.Trial | None:
        """A trial to launch (a WAITING retry first, else a new one) with its parameters drawn,
        or ``None`` when another worker asked the last one at the same moment."""
        trial = study.ask()
        identifier = trials.trial_id(storage, study_id, trial.number)
        frozen = storage.get_trial(identifier)
        fresh = not ({"failed_trial", "fixed_params"} & set(frozen.system_attrs))
        if fresh and trials.asked_beyond(study.get_trials(deepcopy=False), trial.number, n_trials):
            trials.mark_surplus(storage, identifier)
            return None
        trials.claim(storage, identifier)
        heartbeat.add(identifier)
        if grid is None:
            study.sampler = self._sampler(trial.number, grid)
        for name, distribution in space.distributions.items():
            if isinstance(distribution, CategoricalDistribution):
                trial.suggest_categorical(name, distribution.choices)
            elif isinstance(distribution, IntDistribution):
                trial.suggest_int(name, distribution.low, distribution.high, step=distribution.step,
                                  log=distribution.log)
            else:
                trial.suggest_float(name, distribution.low, distribution.high, step=distribution.step,
                                    log=distribution.log)
        retry = frozen.system_attrs.get("failed_trial")
        log.info("trial %d%s: %s", trial.number, f" (retry of trial {retry})" if retry is not None else "",
                 " ".join(space.overrides(trial.params)[:len(space.distributions)]) or "(no parameter)")
        return trial

    def _job_overrides(self, space: SearchSpace, trial: optuna.trial.Trial, study_name: str) -> list[str]:
        """The job's overrides: the trial's values, the fixed ones, and which trial it is."""
        which = [f"+hydra.sweeper.trial={trial.number}"]
        if self.defaulted_name:  # the jobs cannot derive it (it names the command line of the sweep)
            which.append(f"hydra.sweeper.study_name={study_name}")
        return space.overrides(trial.params) + which

    def _tell_failure(self, study: optuna.Study, storage, study_id: int, number: int, job_return: JobReturn) -> int:
        """Tell the study of a job that failed (``FAIL``, its error as the user attribute
        ``error``); a job that returned tells its own outcome. Returns 1 for a failure."""
        identifier = trials.trial_id(storage, study_id, number)
        if job_return.status != JobStatus.FAILED:
            if storage.get_trial(identifier).state == TrialState.RUNNING:  # it returned without telling
                log.warning("trial %d: its job returned without telling its outcome (%r)", number,
                            job_return._return_value)
            return 0
        error = job_return._return_value
        text = f"{type(error).__name__}: {error}".splitlines()[0][:500]
        if storage.get_trial(identifier).state == TrialState.RUNNING:
            storage.set_trial_user_attr(identifier, "error", text)
            study.tell(number, state=TrialState.FAIL)
        log.warning("trial %d failed: %s", number, text)
        return 1

    def _write_results(self, study: optuna.Study, objectives: Sequence[str], sweep_dir: Path) -> None:
        """Log the best trial(s) and write them to ``<sweep dir>/optimization_results.yaml``."""
        done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        if not done:
            log.warning("study %s has no COMPLETE trial: no best value", study.study_name)
            return
        if len(self.directions) == 1:
            best = study.best_trial
            results = {"name": "optuna", "study_name": study.study_name, "best_trial": best.number,
                       "best_params": best.params, "best_value": best.value, "metric": objectives[0]}
            log.info("best of study %s: trial %d, %s=%.6g, %s", study.study_name, best.number, objectives[0],
                     best.value, best.params)
        else:
            front = study.best_trials
            results = {"name": "optuna", "study_name": study.study_name, "metrics": list(objectives),
                       "solutions": [{"trial": t.number, "params": t.params, "values": t.values} for t in front]}
            log.info("study %s: %d Pareto-optimal trial(s) on %s: %s", study.study_name, len(front),
                     ", ".join(objectives), ", ".join(str(t.number) for t in front))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), sweep_dir / RESULTS_FILE)


# ------------------------------------------------------------------------------- the job side
def job_trial(hydra_config: DictConfig) -> JobTrial | None:
    """The trial the current Hydra job runs for (its ``hydra.sweeper.trial``, set by
    :class:`OptunaSearch`), opened with the study's pruner; ``None`` for other jobs."""
    sweeper = hydra_config.sweeper
    number = OmegaConf.select(sweeper, "trial")
    if number is None or not str(sweeper.get("_target_", "")).endswith("audioml_optuna.OptunaSweeper"):
        return None
    study_name = str(sweeper.study_name)
    location = sweeper.get("storage") or default_storage(hydra_config.sweep.dir, study_name)
    ref = TrialRef(storage=str(location), study_name=study_name, number=int(number))
    return JobTrial(ref, instantiate(sweeper.pruner), heartbeat_interval=float(sweeper.heartbeat_interval))
