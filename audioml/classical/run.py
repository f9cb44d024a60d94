"""``audioml-classical``: one grid of scikit-learn pipelines on one feature table, as a run.

``run_classical(cfg, run_dir)`` builds the rows from the configured data (the same DataModule
and decoder as training), computes or reads the cached feature table (``descriptors=``: one
source, or several side by side; standardised per group with ``normalise_per_group``), binds
the run directory to that table, runs the grid (``grid=``) with the dataset's protocol, logs an
MLflow parent run with one child per combination (``GridTracker``), prints the ranking and
writes it, the best pipeline and its reports into the run directory. Rerunning the command
continues: finished combinations of the same table are read back, the same MLflow runs are
continued; a changed table (relabelled, regrouped, other rows) runs in its own directory.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from audioml.classical.grid import Combination, GridResult, check_grid, combinations, run_grid
from audioml.classical.table import (
    FeatureTable,
    backbone_table,
    checkpoint_table,
    handcrafted_table,
    rows_of,
    settings_from_config,
)
from audioml.classical.transforms import fuse, standardise_per_group
from audioml.run.rundir import RunDir

log = logging.getLogger(__name__)

__all__ = ["run_classical", "feature_table", "GridTracker"]


class GridTracker:
    """The grid's MLflow parent run (continued across reruns through ``<run dir>/mlflow_run_id``)
    and a child run per combination: params = the pipeline's choices and settings, metrics =
    validation and test scores, artifact = the fitted pipeline (``.skops``)."""

    def __init__(self, cfg: DictConfig, run_dir: Path, title: str, tags: dict[str, str]) -> None:
        from audioml.run.record import tracking
        from audioml.run.record.store import Store
        from audioml.run.rundir import RunDir

        store = Store.of(cfg.logger.get("tracking_uri"), cfg.paths.mlflow_dir)
        tracking.check_reachable(store.uri)
        self.key = run_dir.name
        self.logger = tracking.open_run(cfg.logger.experiment_name, title, store, RunDir(run_dir),
                                        {**tags, "audioml.role": "sweep", "audioml.sweep_key": self.key,
                                         "audioml.kind": "classical"})
        self.client, self.parent = self.logger.experiment, self.logger.run_id
        self.experiment_id = self.logger.experiment_id
        self.tags = tags
        self.data = None  # the feature table as the runs' dataset input (audioml.run.record.presentation.table_input)

    def log_combination(self, combination: Combination, record: dict[str, Any], grid: DictConfig,
                        pipeline_file: Path) -> str:
        from audioml.run.record import presentation, tracking

        # a child logged just before the grid was stopped (its record not yet written) is reused
        existing = self.client.search_runs([self.experiment_id], filter_string=(
            f"tags.`mlflow.parentRunId` = '{self.parent}' and tags.`audioml.combination` = '{combination.name}'"))
        run = existing[0] if existing else self.client.create_run(
            self.experiment_id, run_name=combination.name, tags={
                **self.tags, "mlflow.parentRunId": self.parent, "audioml.sweep_key": self.key, "audioml.role": "job",
                "audioml.kind": "classical", "audioml.combination": combination.name})
        params = {"scaler": combination.scaler, "reducer": combination.reducer, "estimator": combination.estimator}
        for part, name in (("scalers", combination.scaler), ("reducers", combination.reducer),
                           ("estimators", combination.estimator)):
            node = grid[part][name] if grid.get(part) else None
            if node is not None:
                params.update(tracking.flatten_params(OmegaConf.to_container(node, resolve=True), f"{part[:-1]}."))
        tracking.log_params(self.client, run.info.run_id, params)
        tracking.set_tags(self.client, run.info.run_id, {
            "audioml.converged": str(bool(record.get("converged", True))).lower(),
            **({"audioml.convergence": "; ".join(record["convergence"])[:4000]} if record.get("convergence") else {})})
        if self.data is not None:
            presentation.log_data_input(self.client, run.info.run_id, self.data)
        self._log_metrics(run.info.run_id, record["metrics"])
        self.client.log_artifact(run.info.run_id, str(pipeline_file), "pipeline")
        self.client.set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id

    def _log_metrics(self, run_id: str, metrics: dict[str, float]) -> None:
        import math
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        values = [Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None and math.isfinite(float(v))]
        for begin in range(0, len(values), 500):
            self.client.log_batch(run_id, metrics=values[begin:begin + 500])

    def finish(self, result: GridResult, files: list[Path]) -> None:
        self._log_metrics(self.parent, result.metrics)
        self.client.set_tag(self.parent, "audioml.best", result.best)
        for path in files:
            if path.is_file():
                self.client.log_artifact(self.parent, str(path))
        self.client.log_artifact(self.parent, str(RunDir(result.run_dir).grid_best_dir / "pipeline.skops"),
                                 RunDir.GRID_BEST)
        self.client.set_terminated(self.parent, "FINISHED")


def _datamodule(cfg: DictConfig, sample_rate: int | None = None):
    """``cfg.data`` loaded, decoded at ``sample_rate`` when given (a fusion source's own)."""
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data, **({"sample_rate": int(sample_rate)} if sample_rate else {}))
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def feature_table(cfg: DictConfig) -> tuple[FeatureTable, str, dict[str, str]]:
    """The feature table of ``cfg.descriptors`` on the configured data, standardised per group
    when ``cfg.normalise_per_group``: ``(table, cache status, facts for the run's params)``."""
    table, status, facts = _source_table(cfg, cfg.descriptors, None)
    if cfg.get("normalise_per_group"):
        table = standardise_per_group(table)
        log.info("features standardised per group (%d groups, each with its own rows' statistics)",
                 table.rows["group"].nunique())
    return table, status, {**facts, "features.normalise_per_group": str(bool(cfg.get("normalise_per_group")))}


def _source_table(cfg: DictConfig, node: DictConfig, source: str | None) -> tuple[FeatureTable, str, dict[str, str]]:
    """The table of one ``descriptors`` node (``source``: its name inside a fusion, decoded at
    its own ``sample_rate``; ``None``: the command's own ``descriptors``)."""
    kind = node.kind
    cache_dir = cfg.paths.get("cache_dir")
    progress = bool(cfg.get("progress", True))
    prefix = f"features.{source}." if source else "features."
    if kind == "fusion":
        if source is not None:
            raise ValueError(f"descriptors.sources.{source}: a fusion source cannot be a fusion itself")
        sources = node.get("sources") or {}
        parts = {str(name): _source_table(cfg, sub, str(name)) for name, sub in sources.items() if sub is not None}
        table = fuse({name: part[0] for name, part in parts.items()})
        facts = {"features.kind": kind, "features.sources": ",".join(parts)}
        for part in parts.values():
            facts.update(part[2])
        return table, ", ".join(f"{name} {part[1]}" for name, part in parts.items()), facts
    if kind in ("handcrafted", "opensmile"):
        settings = settings_from_config(node)
        rows = rows_of(_datamodule(cfg, node.get("sample_rate") if source else None))
        table, status = handcrafted_table(rows, settings, cache_dir, int(cfg.get("n_jobs", -1)), progress=progress)
        return table, status, {f"{prefix}kind": kind, **({f"{prefix}feature_set": str(node.feature_set)}
                                                         if kind == "opensmile" else {})}
    device = _device(node.get("device", "auto"))
    if kind == "backbone":
        from omegaconf import open_dict

        from audioml.config import compose_config
        from audioml.run.fit.compose import build_datamodule, build_model

        choices = _choices()
        overrides = [f"model={node.model}", f"data={choices.get('data', 'synthetic')}",
                     *[str(o) for o in node.get("overrides") or []]]
        from hydra.core.global_hydra import GlobalHydra

        if GlobalHydra.instance().is_initialized():  # inside the audioml-classical app: the same config root
            from hydra import compose

            train_cfg = compose(config_name="train", overrides=overrides)
        else:
            train_cfg = compose_config(overrides)
        with open_dict(train_cfg):  # this command's data and paths, at the backbone's sample rate
            train_cfg.paths = cfg.paths
            for key, value in OmegaConf.to_container(cfg.data, resolve=True).items():
                if key != "sample_rate":
                    train_cfg.data[key] = value
        datamodule = build_datamodule(train_cfg)
        model = build_model(train_cfg, list(datamodule.class_names))
        table, status = backbone_table(rows_of(datamodule), model, cache_dir, int(node.get("batch_size", 32)),
                                       device, progress, name=str(node.model))
        return table, status, {f"{prefix}kind": kind, f"{prefix}model": str(node.model)}
    if kind == "checkpoint":
        from audioml.run.use.checkpoint import datamodule_from_record, model_from_record, read_record
        from audioml.run.use.inference import find_checkpoint

        where = f"descriptors.sources.{source}" if source else "descriptors"
        if not node.get("source"):
            raise ValueError(f"{where}=checkpoint needs {where}.source=<run dir | .ckpt | runs:/<id>/model>")
        checkpoint = find_checkpoint(node.source, cfg.logger.get("tracking_uri"),
                                     Path(cfg.paths.output_dir) / "downloads")
        record, state = read_record(checkpoint, list(cfg.get("trusted_modules") or []))
        model = model_from_record(record, state)
        data = node.get("data")
        data_overrides = OmegaConf.to_container(data, resolve=True) if data is not None else {}
        datamodule = datamodule_from_record(record, cfg.paths, data_overrides or None)
        table, status = checkpoint_table(rows_of(datamodule), model, checkpoint, cache_dir,
                                         int(node.get("batch_size", 32)), device, progress)
        return table, status, {f"{prefix}kind": kind, f"{prefix}checkpoint": str(checkpoint)}
    raise ValueError(f"descriptors.kind={kind!r}: use handcrafted, opensmile, backbone, checkpoint or fusion")


def _device(value: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if value == "auto" else str(value)


def _choices() -> dict[str, str]:
    from hydra.core.hydra_config import HydraConfig

    return {k: str(v) for k, v in HydraConfig.get().runtime.choices.items()} if HydraConfig.initialized() else {}


def _title(cfg: DictConfig) -> str:
    from audioml.run.record.presentation import grid_run_name

    choices = _choices()  # outside a Hydra app (none): the experiment, named after the data by default
    return grid_run_name(choices.get("data") or cfg.logger.get("experiment_name"), choices.get("descriptors"),
                         choices.get("grid"))


def _table_record(cfg: DictConfig, table: FeatureTable) -> dict[str, str]:
    """What a grid's run directory is bound to (``RunDir.bind_data``'s fields)."""
    data = cfg.get("data") or {}
    return {"fingerprint": table.content_key(), "clips": str(len(table.values)),
            "root": str(data.get("root") or data.get("csv") or "?")}


def bound_run_dir(cfg: DictConfig, run_dir: Path, table: FeatureTable) -> Path:
    """The run directory of this grid on this table: ``run_dir`` when it is new or was bound to
    the same table (``FeatureTable.content_key``: values' key, targets, rows), else the
    directory of this table beside it (``RunDir.for_other_data``), with a warning naming both.
    So a relabelled table (same files, other labels) never reuses another table's finished
    combinations; a directory from before grids were bound is treated as another table's."""
    current = _table_record(cfg, table)
    other = RunDir(run_dir).for_other_data(current["fingerprint"])
    for directory in (RunDir(run_dir), other):
        bound = directory.bound_data()
        started = any(directory.combinations_dir.glob("*.json"))
        if bound is None and not started:
            directory.bind_data(current)
            return directory.path
        if bound is not None and bound["fingerprint"] == current["fingerprint"]:
            return directory.path
        if directory.path == run_dir:
            log.warning("%s holds a grid of another table (%s rows under %s, fingerprint %s); this table (%s rows "
                        "under %s, fingerprint %s: other labels, groups or rows) gets its own run directory, %s. "
                        "Neither reuses the other's combinations.", run_dir, bound["clips"] if bound else "?",
                        bound["root"] if bound else "?", bound["fingerprint"] if bound else "not recorded",
                        current["clips"], current["root"], current["fingerprint"], other)
    raise RuntimeError(f"{run_dir} and {other} are both bound to "
                       "other tables: move them away to run this grid")


def run_classical(cfg: DictConfig, run_dir: str | Path) -> GridResult:
    """Features, grid, MLflow and reports of one ``audioml-classical`` command (module docstring).

    The feature table comes first: the run directory is bound to it (``bound_run_dir``) before
    the MLflow run is opened or continued there."""
    from audioml.run.outcome import ending
    from audioml.run.record import facts, presentation, tracking
    from audioml.run.record.store import Store, check_reachable
    from audioml.stats import HonestScoring

    if cfg.logger.get("enabled", True):  # an unreachable server fails now, not after the features
        check_reachable(Store.of(cfg.logger.get("tracking_uri"), cfg.paths.mlflow_dir).uri)
    table, status, feature_facts = feature_table(cfg)
    log.info("features: %d rows x %d columns (%s cache: %s)", *table.values.shape, feature_facts["features.kind"],
             status)
    run_dir = bound_run_dir(cfg, Path(run_dir), table)
    run = RunDir(run_dir)
    run.write_config(OmegaConf.to_yaml(cfg, resolve=True))
    choices = _choices()
    grid_source = f"grid={choices.get('grid', '?')} (audioml/conf/grid/{choices.get('grid', '?')}.yaml)"
    tags = {"host": socket.gethostname(), **facts.git_state(),
            **{f"audioml.choice.{k}": v for k, v in choices.items() if not k.startswith("hydra") and v != "None"}}
    tracker = GridTracker(cfg, run_dir, _title(cfg), tags) if cfg.logger.get("enabled", True) else None
    log.info("audioml-classical: run directory %s%s", run_dir,
             f", MLflow run {tracker.parent}" if tracker else "")
    with ending(tracker.logger if tracker else None):
        if cfg.get("export"):
            folder = table.save(Path(cfg.export))
            log.info("feature table exported to %s (features.npy, targets.npy, columns.json, rows.csv)", folder)
        table.skipped.to_csv(run.skipped_file, index=False)
        check_grid(cfg.grid, table.task, grid_source)
        if tracker is not None:
            tracker.data = presentation.table_input(choices.get("data") or cfg.logger.get("experiment_name"),
                                                    choices.get("descriptors"), table)
            presentation.log_data_input(tracker.client, tracker.parent, tracker.data)
            tracking.log_params(tracker.client, tracker.parent, {
                **feature_facts, "features.rows": str(len(table.values)), "features.columns": str(table.values.shape[1]),
                "features.key": table.key, "features.content_key": table.content_key(), **tracking.flatten_params(
                    OmegaConf.to_container(cfg.protocol, resolve=True), "protocol."),
                "grid.combinations": str(len(combinations(cfg.grid)))})
        scoring = HonestScoring(**OmegaConf.to_container(cfg.scoring, resolve=True))
        result = run_grid(table, cfg.grid, cfg.protocol, run_dir, scoring, int(cfg.seed), int(cfg.get("n_jobs", -1)),
                          tracker, grid_source, progress=bool(cfg.get("progress", True)))
        if tracker is not None:
            tracker.finish(result, [run.ranking_file, run.ranking_text_file, run.metrics_file,
                                    run.config_file, run.skipped_file] +
                           [run.grid_best_dir / name for name in (RunDir.CONFUSION, "predictions.csv")])
    print(run.ranking_text_file.read_text(), end="")
    metric = str(cfg.grid.get("select_by") or ("macro_f1" if table.task == "classification" else "ccc"))
    best = result.metrics
    print(f"best by validation: {result.best}: test/{metric} {best[f'test/{metric}']:.3f}"
          + (f" [{best[f'test/{metric}_ci_low']:.3f}-{best[f'test/{metric}_ci_high']:.3f}]"
             if f"test/{metric}_ci_low" in best else "")
          + f", baseline {best.get(f'baseline/{metric}', float('nan')):.3f}")
    print(f"run directory: {run_dir}")
    if tracker:
        print(f"MLflow run: {tracker.parent} (experiment {cfg.logger.experiment_name})")
        presentation.show_run_in_view(tracker.client, tracker.experiment_id, f"val/{metric}", best, choices,
                                      ["scaler", "reducer", "estimator"])
    return result
