"""Grids of scikit-learn pipelines on a feature table, evaluated with the dataset's protocol.

A grid config (``audioml/conf/grid/*.yaml``) names scalers, reducers and estimators by
``_target_``; every combination is one ``Pipeline``, scored per fold (grouped k-fold or the
dataset's partition) on an inner grouped validation split, which alone ranks and selects; test
rows only report. Each combination is written to ``<run dir>/combinations/`` (metrics,
predictions, a ``.skops`` pipeline: ``load_pipeline``) as its folds end, so an interrupted grid
resumes; fits are bounded by iterations and a fit that stops at its bound is marked not converged."""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from audioml.classical.table import FeatureTable
from audioml.data.splits import assign_groups, group_kfold
from audioml.files import atomic_write_bytes
from audioml.run.rundir import RunDir

log = logging.getLogger(__name__)

__all__ = ["Combination", "Fold", "combinations", "build_pipeline", "check_grid", "make_folds", "run_grid",
           "load_pipeline", "GridResult", "TRUSTED_PIPELINE_TYPES", "unbounded_steps"]

#: What a grid's pipelines hold beyond the types skops trusts by default (scikit-learn's estimators,
#: NumPy arrays and scalars, plain containers): the fitted trees, neighbour indexes and distance
#: metrics, and the score functions the regression grid's feature selection names. Exact names,
#: never module prefixes: a prefix trusts every function of a package (``builtins.eval``,
#: ``numpy.savetxt``).
TRUSTED_PIPELINE_TYPES = frozenset({
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.neighbors._ball_tree.BallTree",
    "sklearn.metrics._dist_metrics.EuclideanDistance64",
    "sklearn.utils._bunch.Bunch",
    "sklearn.feature_selection._univariate_selection.f_regression",
    "sklearn.feature_selection._univariate_selection.f_classif",
    "sklearn.feature_selection._mutual_info.mutual_info_regression",
    "sklearn.feature_selection._mutual_info.mutual_info_classif",
})


@dataclass(frozen=True)
class Combination:
    scaler: str
    reducer: str
    estimator: str

    @property
    def name(self) -> str:
        return f"{self.scaler}+{self.reducer}+{self.estimator}"


@dataclass
class Fold:
    """Row indices: ``fit`` (inner training), ``val`` (selection), ``train`` = fit + val (the
    pipeline that predicts ``test``); ``test`` is empty for the final fit on every training row."""

    fit: np.ndarray
    val: np.ndarray
    train: np.ndarray
    test: np.ndarray


def _steps(grid: DictConfig, part: str) -> dict[str, Any]:
    node = grid.get(part)
    if not node:
        return {"none": None}
    return {str(k): v for k, v in node.items()}


def combinations(grid: DictConfig) -> list[Combination]:
    """Every ``scaler x reducer x estimator`` of the grid, in config order."""
    return [Combination(s, r, e) for s, r, e in itertools.product(_steps(grid, "scalers"), _steps(grid, "reducers"),
                                                                  _steps(grid, "estimators"))]


def _instantiate(node: Any) -> Any:
    from hydra.utils import instantiate

    return "passthrough" if node is None else instantiate(node, _convert_="all")


def build_pipeline(grid: DictConfig | Mapping, combination: Combination, n_features: int | None = None,
                   n_rows: int | None = None):
    """The ``Pipeline`` (scaler, reducer, estimator) of ``combination``. A reducer asking for more
    components / features than the data has (``k``, ``n_components``) is capped to what exists."""
    from sklearn.pipeline import Pipeline

    grid = OmegaConf.create(grid) if not isinstance(grid, DictConfig) else grid
    scaler = _instantiate(_steps(grid, "scalers")[combination.scaler])
    reducer = _instantiate(_steps(grid, "reducers")[combination.reducer])
    estimator = _instantiate(_steps(grid, "estimators")[combination.estimator])
    if reducer != "passthrough" and n_features:
        limit = n_features if n_rows is None else min(n_features, n_rows)
        for name in ("k", "n_components"):
            value = getattr(reducer, name, None)
            if isinstance(value, int) and value > limit:
                reducer.set_params(**{name: limit})
    return Pipeline([("scaler", scaler), ("reducer", reducer), ("estimator", estimator)])


def unbounded_steps(grid: DictConfig | Mapping) -> list[str]:
    """``<part>.<name>: <parameter>`` for every step of the grid (nested estimators included)
    whose iteration bound is unlimited: ``max_iter=-1``, libsvm's default (SVC, SVR, NuSVC...;
    scikit-learn's other ``max_iter=None`` mean a solver's own finite default)."""
    grid = OmegaConf.create(grid) if not isinstance(grid, DictConfig) else grid
    found = []
    for part in ("scalers", "reducers", "estimators"):
        for name, node in _steps(grid, part).items():
            step = _instantiate(node)
            if step == "passthrough" or not hasattr(step, "get_params"):
                continue
            found += [f"{part}.{name}: {key}={value}" for key, value in step.get_params(deep=True).items()
                      if key.split("__")[-1] == "max_iter" and isinstance(value, int) and value < 0]
    return found


def check_grid(grid: DictConfig, task: str, source: str) -> None:
    """Fail at once when an estimator of the grid does not fit the task (a regressor on classes),
    naming the grid's YAML and the estimator; warn about steps without an iteration bound."""
    from sklearn.base import is_classifier, is_regressor

    expected, check = ("a classifier", is_classifier) if task == "classification" else ("a regressor", is_regressor)
    wrong = [name for name, node in _steps(grid, "estimators").items() if node is None or not check(_instantiate(node))]
    if wrong:
        raise ValueError(f"{source}: estimators {wrong} are not {expected}, but the data is a {task} task: use a "
                         f"{'classification' if task == 'classification' else 'regression'} grid "
                         f"(grid=classification or grid=regression) or remove them")
    if not _steps(grid, "estimators"):
        raise ValueError(f"{source}: the grid has no estimators")
    if unbounded := unbounded_steps(grid):
        log.warning("%s: %s without an iteration bound: such a fit can run for hours (an SVC on unscaled features); "
                    "set max_iter (e.g. 1000000) to have it stop and be marked not converged", source,
                    "; ".join(unbounded))


def _stratify(table: FeatureTable) -> np.ndarray:
    return np.asarray(table.targets) if table.task == "classification" else np.zeros(len(table.targets), dtype=int)


def _inner(labels: np.ndarray, groups: np.ndarray, train: np.ndarray, val_fraction: float,
           seed: int) -> tuple[np.ndarray, np.ndarray]:
    if len(np.unique(groups[train])) < 2:
        raise ValueError("the training part holds a single group: no validation split for selecting a pipeline")
    parts = assign_groups(labels[train], groups[train], [1 - val_fraction, val_fraction], seed)
    return train[parts == 0], train[parts == 1]


def make_folds(table: FeatureTable, protocol: Mapping, seed: int) -> tuple[list[Fold], Fold]:
    """``(test folds, final fold)`` of the protocol (module docstring); the final fold fits on
    every training row (k-fold: all rows) for the saved pipeline."""
    labels, groups = _stratify(table), table.rows["group"].astype(str).to_numpy()
    if not protocol.get("grouped", True):  # per row: groups shared between parts (module docstring)
        groups = np.arange(len(groups)).astype(str)
    val_fraction = float(protocol.get("val_fraction", 0.2))
    kind = protocol.get("kind", "kfold")
    if kind == "kfold":
        outer = group_kfold(labels, groups, int(protocol.get("k", 5)), seed)
        everything = np.arange(len(labels))
    elif kind == "partition":
        split = table.rows["split"].astype(str).to_numpy()
        test = np.flatnonzero(split == "test")
        everything = np.flatnonzero(split != "test")
        if len(test) == 0 or len(everything) == 0:
            raise ValueError(f"protocol.kind=partition: the data has {len(test)} test rows and {len(everything)} "
                             "others; use protocol.kind=kfold for data without a fixed test partition")
        outer = [(everything, test)]
    else:
        raise ValueError(f"protocol.kind={kind!r}: use kfold or partition")
    folds = []
    for number, (train, test) in enumerate(outer):
        fit, val = _inner(labels, groups, train, val_fraction, seed + 1 + number)
        folds.append(Fold(fit, val, train, test))
    fit, val = _inner(labels, groups, everything, val_fraction, seed + 1000)
    return folds, Fold(fit, val, everything, np.array([], dtype=int))


# ---------------------------------------------------------------------------------- scoring
def _point(task: str, predicted: np.ndarray, truth: np.ndarray, num_classes: int) -> dict[str, float]:
    if task == "classification":
        from audioml.stats import confusion_matrices, metrics_from_confusion

        names = [str(i) for i in range(num_classes)]
        values = metrics_from_confusion(confusion_matrices(truth, predicted, num_classes), names)
        return {k: float(values[k]) for k in ("acc", "balanced_acc", "macro_f1")}
    from audioml.stats import regression_point

    return regression_point(predicted, truth)


def _bounded_fit(pipeline, X: np.ndarray, y: np.ndarray):
    """``(fitted pipeline, message)``: the message of a fit that stopped at its iteration bound
    (scikit-learn's ``ConvergenceWarning``, first sentence), else ``None``."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("ignore")  # other chatter of many fits; the scores say what matters
        warnings.simplefilter("always", ConvergenceWarning)  # a fit stopped at its bound: recorded
        pipeline.fit(X, y)
    stopped = [str(w.message).split(". ")[0] for w in caught if issubclass(w.category, ConvergenceWarning)]
    return pipeline, (stopped[0] if stopped else None)


def _fit_fold(X: np.ndarray, y: np.ndarray, grid: dict, combination: Combination, fold: Fold, task: str,
              num_classes: int) -> dict[str, Any]:
    """Worker: fit on ``fold.fit`` and score ``fold.val``; fit on ``fold.train`` and predict
    ``fold.test`` (the final fold returns the fitted pipeline instead). ``not_converged``: the
    messages of its fits that stopped at their iteration bound (one per such fit)."""
    started = time.perf_counter()
    val, not_converged = None, []
    if len(fold.test):  # the final fit on every training row has nothing to select
        selector, stopped = _bounded_fit(build_pipeline(grid, combination, X.shape[1], len(fold.fit)), X[fold.fit],
                                         y[fold.fit])
        val = _point(task, selector.predict(X[fold.val]), y[fold.val], num_classes)
        not_converged += [stopped] if stopped else []
    model, stopped = _bounded_fit(build_pipeline(grid, combination, X.shape[1], len(fold.train)), X[fold.train],
                                  y[fold.train])
    not_converged += [stopped] if stopped else []
    test = model.predict(X[fold.test]) if len(fold.test) else None
    out = {"val": val, "test_prediction": test, "seconds": time.perf_counter() - started,
           "not_converged": not_converged}
    if not len(fold.test):
        out["pipeline"] = model
    return out


def _task(index: int, *args) -> tuple[int, dict[str, Any]]:
    """``(index, _fit_fold(*args))``: results come back in the order they finish."""
    return index, _fit_fold(*args)


@dataclass
class GridResult:
    ranking: pd.DataFrame
    best: str
    metrics: dict[str, float]
    run_dir: Path


def _score_test(table: FeatureTable, folds: list[Fold], prediction: np.ndarray, scoring, seed: int) -> tuple[
        dict[str, float], str]:
    """The honest scores of the pooled test predictions (each fold's rows by its own pipeline)."""
    rows = np.concatenate([f.test for f in folds])
    truth, groups = np.asarray(table.targets)[rows], table.rows["group"].astype(str).to_numpy()[rows]
    predicted = prediction[rows]
    if table.task == "classification":
        num_classes = len(table.class_names)
        majority = np.concatenate([np.full(len(f.test), np.bincount(np.asarray(table.targets)[f.train],
                                                                    minlength=num_classes).argmax()) for f in folds])
        scores = scoring.score(np.eye(num_classes)[predicted.astype(int)], truth, groups, table.class_names,
                               majority)
        return scores.metrics, scores.summary
    from audioml.stats import regression_scores

    means = np.concatenate([np.full(len(f.test), float(np.mean(np.asarray(table.targets)[f.train]))) for f in folds])
    return regression_scores(predicted, truth, groups, means, scoring.bootstrap_samples, scoring.confidence, seed)


def _table_line(row: Mapping, metric: str) -> str:
    test = f"{row[f'test/{metric}']:.3f}"
    if f"test/{metric}_ci_low" in row and not pd.isna(row.get(f"test/{metric}_ci_low")):
        test += f" [{row[f'test/{metric}_ci_low']:.3f}-{row[f'test/{metric}_ci_high']:.3f}]"
    return (f"{int(row['rank']):>3}  {row['combination'][:44]:<44}  {row[f'val/{metric}']:.3f}"
            f"±{row[f'val/{metric}_std']:.3f}  {test:<22} {row['seconds']:7.1f}s"
            + ("" if row.get("converged", True) else "  not converged"))


def load_pipeline(path: str | Path):
    """A pipeline saved by a grid (skops format), loaded only when every type it names is one
    skops trusts by default or one of ``TRUSTED_PIPELINE_TYPES``: a file from elsewhere cannot
    make this process run its code. Raises ``ValueError`` naming the refused types."""
    import skops.io as sio

    path = Path(path)
    untrusted = sio.get_untrusted_types(file=path)
    refused = sorted(name for name in untrusted if name not in TRUSTED_PIPELINE_TYPES)
    if refused:
        raise ValueError(f"{path}: refusing to load a pipeline that names {refused}: only scikit-learn's estimators, "
                         "NumPy arrays and the fitted structures audioml's grids produce are loaded")
    return sio.load(path, trusted=list(untrusted))


def run_grid(table: FeatureTable, grid: DictConfig, protocol: Mapping, run_dir: str | Path, scoring,
             seed: int = 0, n_jobs: int = -1, tracker=None, grid_source: str = "grid",
             progress: bool = False) -> GridResult:
    """Evaluate every combination of ``grid`` on ``table`` (module docstring), resuming from the
    combinations already in ``run_dir``; ``tracker`` (``audioml.classical.run.GridTracker``)
    logs a child run per combination as soon as its folds end; ``progress`` shows a bar over
    combination x fold. Returns the ranking (converged first, then validation score)."""
    import skops.io as sio
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    check_grid(grid, table.task, grid_source)
    run_dir = Path(run_dir)
    store = RunDir(run_dir).combinations_dir
    store.mkdir(parents=True, exist_ok=True)
    metric = str(grid.get("select_by") or ("macro_f1" if table.task == "classification" else "ccc"))
    folds, final = make_folds(table, protocol, seed)
    all_combinations = combinations(grid)
    done = {c.name: json.loads((store / f"{c.name}.json").read_text()) for c in all_combinations
            if (store / f"{c.name}.json").is_file()}
    pending = [c for c in all_combinations if c.name not in done]
    if done:
        log.info("grid: %d of %d combinations already finished in %s; computing the other %d", len(done),
                 len(all_combinations), store, len(pending))
    X = np.ascontiguousarray(table.values, dtype=np.float64)
    y = np.asarray(table.targets)
    plain_grid = OmegaConf.to_container(grid, resolve=True)
    num_classes = len(table.class_names)
    parts_per_combination = len(folds) + 1
    tasks = [(c, number, f) for c in pending for number, f in enumerate([*folds, final])]
    results = Parallel(n_jobs=n_jobs, return_as="generator_unordered")(
        delayed(_task)(index, X, y, plain_grid, c, f, table.task, num_classes) for index, (c, _, f) in enumerate(tasks))
    per_combination: dict[str, dict[int, dict]] = {}
    bar = tqdm(total=len(tasks), desc="grid (combination x fold)", unit="fit", disable=not progress)
    for index, result in results:
        combination, number, _ = tasks[index]
        bar.update(1)
        bar.set_postfix_str(combination.name, refresh=False)
        parts = per_combination.setdefault(combination.name, {})
        parts[number] = result
        if len(parts) < parts_per_combination:
            continue
        record = _finish_combination(table, folds, combination, [parts[i] for i in range(parts_per_combination)],
                                     scoring, seed, metric, store, sio)
        if tracker is not None:
            record["mlflow_run_id"] = tracker.log_combination(combination, record, grid,
                                                              store / f"{combination.name}.skops")
        atomic_write_bytes(store / f"{combination.name}.json", json.dumps(record, indent=1).encode())
        done[combination.name] = record
        del per_combination[combination.name]
        log.info("grid: %s val/%s %.3f, test/%s %.3f%s (%d/%d)", combination.name, metric,
                 record["metrics"][f"val/{metric}"], metric, record["metrics"][f"test/{metric}"],
                 "" if record["converged"] else f", not converged ({record['fits_not_converged']} fits at their bound)",
                 len(done), len(all_combinations))
    bar.close()
    if tracker is not None:  # finished earlier without their child run (stopped in between)
        for combination in all_combinations:
            record = done[combination.name]
            if not record.get("mlflow_run_id"):
                record["mlflow_run_id"] = tracker.log_combination(combination, record, grid,
                                                                  store / f"{combination.name}.skops")
                atomic_write_bytes(store / f"{combination.name}.json", json.dumps(record, indent=1).encode())
    return _rank(table, all_combinations, done, metric, run_dir, folds)


def _finish_combination(table: FeatureTable, folds: list[Fold], combination: Combination, parts: list[dict],
                        scoring, seed: int, metric: str, store: Path, sio) -> dict[str, Any]:
    prediction = np.zeros(len(table.targets), dtype=np.float64)
    for fold, part in zip(folds, parts):
        prediction[fold.test] = part["test_prediction"]
    metrics, summary = _score_test(table, folds, prediction, scoring, seed)
    val = pd.DataFrame([p["val"] for p in parts[:-1]])
    for name in val.columns:
        metrics[f"val/{name}"] = float(val[name].mean())
        metrics[f"val/{name}_std"] = float(val[name].std(ddof=1)) if len(val) > 1 else 0.0
    per_fold = [_point(table.task, prediction[f.test], np.asarray(table.targets)[f.test], len(table.class_names))
                for f in folds]
    if len(folds) > 1:
        for name in per_fold[0]:
            values = np.array([p[name] for p in per_fold])
            metrics[f"test/{name}_fold_mean"] = float(values.mean())
            metrics[f"test/{name}_fold_std"] = float(values.std(ddof=1))
    rows = np.concatenate([f.test for f in folds])
    np.save(store / f"{combination.name}.predictions.npy", np.stack([rows, prediction[rows]], axis=1),
            allow_pickle=False)
    atomic_write_bytes(store / f"{combination.name}.skops", sio.dumps(parts[-1]["pipeline"]))
    stopped = [message for p in parts for message in p.get("not_converged", [])]
    metrics["fits_not_converged"] = float(len(stopped))
    return {"combination": combination.name, "scaler": combination.scaler, "reducer": combination.reducer,
            "estimator": combination.estimator, "metrics": metrics, "summary": summary,
            "seconds": float(sum(p["seconds"] for p in parts)), "converged": not stopped,
            "fits_not_converged": len(stopped), "convergence": sorted(set(stopped))}


def _rank(table: FeatureTable, all_combinations: Sequence[Combination], done: Mapping[str, dict], metric: str,
          run_dir: Path, folds: list[Fold]) -> GridResult:
    rows = []
    for combination in all_combinations:
        record = done[combination.name]
        rows.append({"combination": combination.name, "scaler": combination.scaler, "reducer": combination.reducer,
                     "estimator": combination.estimator, "seconds": record["seconds"],
                     "converged": bool(record.get("converged", True)),
                     "mlflow_run_id": record.get("mlflow_run_id", ""), **record["metrics"]})
    lower_is_better = metric in ("mse", "mae")
    # a fit stopped at its iteration bound is not a finished fit: after every converged one
    ranking = pd.DataFrame(rows).sort_values(["converged", f"val/{metric}", "combination"],
                                             ascending=[False, lower_is_better, True],
                                             kind="stable").reset_index(drop=True)
    ranking.insert(0, "rank", np.arange(1, len(ranking) + 1))
    run = RunDir(run_dir)
    ranking.to_csv(run.ranking_file, index=False)
    best = str(ranking["combination"].iloc[0])
    record = done[best]
    if not record.get("converged", True):
        log.warning("grid: no combination converged within its iteration bound; the best by validation, %s, is "
                    "reported, marked not converged: scale the features (a scaler step) or raise max_iter", best)
    metrics = {**record["metrics"], "best/rank_by_val": 1.0}
    run.write_metrics(metrics)
    best_dir = run.grid_best_dir
    best_dir.mkdir(exist_ok=True)
    (best_dir / "pipeline.skops").write_bytes((run.combinations_dir / f"{best}.skops").read_bytes())
    (best_dir / "combination.json").write_text(json.dumps({k: record[k] for k in ("combination", "scaler",
                                                                                  "reducer", "estimator")}))
    _best_reports(table, best_dir, run.combinations_dir / f"{best}.predictions.npy")
    header = f"{'':>3}  {'combination (scaler+reducer+estimator)':<44}  val/{metric:<8}  test/{metric} [CI]"
    lines = [header, *(_table_line(r, metric) for r in ranking.head(20).to_dict("records"))]
    if len(ranking) > 20:
        lines.append(f"... {len(ranking) - 20} more in {run.ranking_file}")
    run.ranking_text_file.write_text("\n".join(lines) + "\n")
    return GridResult(ranking, best, metrics, run_dir)


def _best_reports(table: FeatureTable, folder: Path, predictions_file: Path) -> None:
    """The best pipeline's out-of-fold predictions (with the rows) and, for classes, its
    confusion matrix as a table and a plot."""
    pairs = np.load(predictions_file, allow_pickle=False)
    rows, predicted = pairs[:, 0].astype(int), pairs[:, 1]
    frame = table.rows.iloc[rows].reset_index(drop=True)
    truth = np.asarray(table.targets)[rows]
    if table.task == "classification":
        from audioml.run.figures.callbacks import plot_confusion_matrix
        from audioml.stats import confusion_matrices

        names = list(table.class_names)
        frame["target"] = [names[int(t)] for t in truth]
        frame["predicted"] = [names[int(p)] for p in predicted]
        matrix = confusion_matrices(truth.astype(int), predicted.astype(int), len(names))
        pd.DataFrame(matrix, index=names, columns=names).to_csv(folder / "confusion_matrix.csv")
        plot_confusion_matrix(matrix, names, folder / RunDir.CONFUSION)
    else:
        frame["target"], frame["predicted"] = truth, predicted
    frame.to_csv(folder / "predictions.csv", index=False)

