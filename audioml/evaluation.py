"""Honest evaluation: protocols (holdout, grouped k-fold) and the numbers reported beside every
test metric.

For every run, from its test predictions:

- **bootstrap confidence intervals** resampling whole groups (babies, actors, tracks) with
  replacement, percentile method: ``test/<m>_ci_low``, ``test/<m>_ci_high``;
- the **majority-class baseline** (always predict the training split's most frequent class):
  ``baseline/<m>``;
- optionally a **label-permutation test** of the fixed predictions: ``permutation/<m>_p_value``
  and ``permutation/<m>_better_than_chance`` (1 or 0);
- for DataModules that declare ``collapse`` (donateacry: hungry vs not_hungry) the same for the
  collapsed task, ``test/binary_<m>`` etc. By default the multiclass prediction is mapped to
  its coarse class (``collapse_by="argmax"``: the same predictions, scored coarsely); with
  ``collapse_by="probability"`` the coarse class with the largest summed member probability
  wins (for two coarse classes: hungry when P(hungry) > 0.5).

The k-fold protocol trains once per fold (each fold a child MLflow run of one parent run) and
reports on the parent ``test/<m>_mean`` / ``_std`` across folds plus every number above computed
on the pooled out-of-fold predictions (each clip scored once, by the model that did not see it).

Metric definitions equal torchmetrics' (macro averages skip classes absent from both targets and
predictions). ``test/loss`` has no interval: it is not a function of the predicted classes.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

log = logging.getLogger(__name__)

__all__ = ["confusion_matrices", "metrics_from_confusion", "group_bootstrap_confusions",
           "permutation_test", "collapse_probabilities", "aggregate_folds", "Scores",
           "EvaluationProtocol", "Holdout", "KFold", "collect_embeddings", "SUMMARY_METRICS"]

#: Metrics computed from a confusion matrix for a task (per-class ones are added per class).
SUMMARY_METRICS = ("acc", "balanced_acc", "macro_f1")

#: Written next to test_predictions.csv when the DataModule declares a collapse.
COLLAPSE_FILE = "class_collapse.json"

#: ``train_fold(fold or None, run_dir, parent_run_id or None) -> test metrics``.
TrainFold = Callable[[int | None, Path, str | None], dict[str, float]]


# ------------------------------------------------------------------------------ metric algebra
def confusion_matrices(targets: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion matrices (rows true) of label arrays ``(..., n)`` -> ``(..., C, C)`` int64."""
    targets = np.asarray(targets, dtype=np.int64)
    predictions = np.broadcast_to(np.asarray(predictions, dtype=np.int64), targets.shape)
    lead = targets.shape[:-1]
    rows = int(np.prod(lead)) if lead else 1
    cell = (targets * num_classes + predictions).reshape(rows, -1)
    offset = (np.arange(rows) * num_classes * num_classes)[:, None]
    counts = np.bincount((cell + offset).ravel(), minlength=rows * num_classes * num_classes)
    return counts.reshape(*lead, num_classes, num_classes)


def metrics_from_confusion(matrix: np.ndarray, class_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy (macro recall), macro F1 and per-class precision / recall / F1
    of confusion matrices ``(..., C, C)`` (rows true); each value has shape ``(...)``.

    As torchmetrics: a class with no true, predicted or missed clip is left out of the macro
    averages; a zero division gives 0 for that class.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    tp = np.diagonal(matrix, axis1=-2, axis2=-1)
    support = matrix.sum(axis=-1)
    predicted = matrix.sum(axis=-2)
    fp, fn = predicted - tp, support - tp
    total = matrix.sum(axis=(-2, -1))

    def ratio(num, den):
        return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > 0)

    precision, recall = ratio(tp, predicted), ratio(tp, support)
    f1 = ratio(2 * tp, 2 * tp + fp + fn)
    present = (tp + fp + fn) > 0
    n_present = present.sum(axis=-1)
    out = {"acc": ratio(tp.sum(axis=-1), total),
           "balanced_acc": ratio((recall * present).sum(axis=-1), n_present),
           "macro_f1": ratio((f1 * present).sum(axis=-1), n_present)}
    for index, name in enumerate(class_names):
        out[f"precision_{name}"] = precision[..., index]
        out[f"recall_{name}"] = recall[..., index]
        out[f"f1_{name}"] = f1[..., index]
    return out


def group_bootstrap_confusions(targets: np.ndarray, predictions: np.ndarray, groups: Sequence,
                               num_classes: int, n_boot: int, seed: int) -> np.ndarray:
    """Confusion matrices of ``n_boot`` cluster-bootstrap resamples ``(n_boot, C, C)``.

    Each resample draws as many groups as there are, uniformly with replacement, and takes every
    clip of each drawn group (clips of one baby are not independent, so they are resampled as a
    block).
    """
    _, group_index = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    per_group = _group_confusions(targets, predictions, group_index, num_classes)
    n_groups = per_group.shape[0]
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot)
    return np.einsum("bg,gij->bij", draws, per_group)


def _group_confusions(targets: np.ndarray, predictions: np.ndarray, group_index: np.ndarray,
                      num_classes: int) -> np.ndarray:
    n_groups = int(group_index.max()) + 1
    cell = group_index * num_classes * num_classes + np.asarray(targets) * num_classes + np.asarray(predictions)
    counts = np.bincount(cell, minlength=n_groups * num_classes * num_classes)
    return counts.reshape(n_groups, num_classes, num_classes)


def _permuted_targets(targets: np.ndarray, groups: np.ndarray | None, n_permutations: int,
                      rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """``(n_permutations, n)`` permuted label arrays and log10 of an upper bound on the number
    of distinct arrangements the scheme can produce."""
    n = targets.shape[0]
    if groups is None:
        order = np.argsort(rng.random((n_permutations, n)), axis=1)
        return targets[order], math.lgamma(n + 1) / math.log(10)
    _, group_index = np.unique(groups.astype(str), return_inverse=True)
    members = [np.flatnonzero(group_index == g) for g in range(group_index.max() + 1)]
    by_size: dict[int, list[np.ndarray]] = {}
    for positions in members:
        by_size.setdefault(len(positions), []).append(positions)
    out = np.repeat(targets[None], n_permutations, axis=0)
    log_arrangements = 0.0
    for same_size in by_size.values():
        if len(same_size) < 2:
            continue
        log_arrangements += math.lgamma(len(same_size) + 1) / math.log(10)
        stacked = np.stack(same_size)  # (groups of this size, size)
        source_labels = targets[stacked]
        for row in range(n_permutations):
            out[row][stacked] = source_labels[rng.permutation(len(same_size))]
    return out, log_arrangements


def permutation_test(targets: np.ndarray, predictions: np.ndarray, class_names: Sequence[str],
                     metric: str = "macro_f1", groups: Sequence | None = None,
                     n_permutations: int = 1000, seed: int = 0) -> tuple[float, float, np.ndarray]:
    """Is the association between fixed predictions and true labels stronger than chance?

    H0: the predictions carry no information about the labels. The statistic is ``metric`` of
    the predictions; its null distribution comes from re-pairing the predictions with permuted
    labels. With ``groups``, whole groups of equal size exchange their label sequences (clips of a
    group keep their labels together, preserving within-group dependence; groups of a unique size
    keep their own), which stays valid when clips of one baby are correlated; without ``groups``
    single labels are shuffled. The model is not retrained: this tests the predictions of this
    model on this test set, not the training procedure.

    Returns ``(observed, p_value, null values)``, ``p = (1 + #{null >= observed}) / (1 + n)``.
    """
    targets = np.asarray(targets, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    num_classes = len(class_names)
    observed = float(metrics_from_confusion(confusion_matrices(targets, predictions, num_classes),
                                            class_names)[metric])
    rng = np.random.default_rng(seed)
    group_array = None if groups is None else np.asarray(groups)
    permuted, log_arrangements = _permuted_targets(targets, group_array, n_permutations, rng)
    if log_arrangements < 2:  # fewer than 100 distinct arrangements
        log.warning("permutation test: the %s scheme allows only ~%.0f distinct label arrangements; "
                    "the p-value cannot go below about %.3f", "grouped" if groups is not None else "plain",
                    10 ** log_arrangements, 10 ** -log_arrangements)
    null = metrics_from_confusion(confusion_matrices(permuted, predictions, num_classes), class_names)[metric]
    p_value = (1 + int(np.sum(null >= observed - 1e-12))) / (1 + n_permutations)
    return observed, float(p_value), null


def collapse_probabilities(probabilities: np.ndarray, class_names: Sequence[str],
                           collapse: Mapping[str, Sequence[str]]) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Sum class probabilities ``(n, C)`` into coarse classes.

    Returns ``(coarse probabilities (n, K), coarse names, fine -> coarse index (C,))``.
    Raises ``ValueError`` unless every class belongs to exactly one coarse class.
    """
    names = list(collapse)
    mapping = np.full(len(class_names), -1)
    for coarse, members in enumerate(collapse.values()):
        for member in members:
            if member not in class_names:
                raise ValueError(f"collapse names unknown class {member!r}; classes are {list(class_names)}")
            if mapping[class_names.index(member)] >= 0:
                raise ValueError(f"collapse puts class {member!r} in two coarse classes")
            mapping[class_names.index(member)] = coarse
    if (mapping < 0).any():
        missing = [class_names[i] for i in np.flatnonzero(mapping < 0)]
        raise ValueError(f"collapse leaves classes {missing} without a coarse class")
    coarse = np.zeros((probabilities.shape[0], len(names)))
    np.add.at(coarse.T, mapping, np.asarray(probabilities, dtype=np.float64).T)
    return coarse, names, mapping


def aggregate_folds(fold_metrics: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """``<m>_mean`` and ``<m>_std`` (sample standard deviation, ddof=1) across folds of every
    metric all folds report, except confidence bounds, p-values and the baseline's class id."""
    skip = ("_ci_low", "_ci_high", "_p_value", "_better_than_chance")
    common = set.intersection(*(set(m) for m in fold_metrics)) if fold_metrics else set()
    out: dict[str, float] = {}
    for name in sorted(common):
        if name.endswith(skip) or name == "baseline/majority_class":
            continue
        values = np.array([m[name] for m in fold_metrics], dtype=float)
        out[f"{name}_mean"] = float(values.mean())
        out[f"{name}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return out


# ----------------------------------------------------------------------------------- scoring
@dataclass
class Scores:
    """Result of ``EvaluationProtocol.score``: flat metrics, a one-line summary, and the
    collapsed confusion matrix (``None`` without a collapse)."""

    metrics: dict[str, float]
    summary: str
    collapsed_matrix: np.ndarray | None
    collapsed_names: list[str] | None


class EvaluationProtocol:
    """Settings of the numbers reported beside every test metric (see the module docstring).

    Args:
        bootstrap_samples: group-bootstrap resamples for the intervals (0 disables them).
        confidence: two-sided coverage of the intervals (0.95 = 2.5th to 97.5th percentile).
        permutations: label permutations for the permutation test (0 disables it).
        permutation_metric: the statistic of the permutation test (a summary metric).
        grouped_permutation: permute whole groups (see ``permutation_test``).
        alpha: significance level of the "better than chance" verdict.
        collapse_by: how a collapsed prediction is made: ``"argmax"`` maps the multiclass
            prediction to its coarse class (the same predictions, scored coarsely);
            ``"probability"`` takes the coarse class with the largest summed probability, which
            depends on calibration (class-weighted losses shift probability towards rare classes).
        seed: seeds the bootstrap and the permutations.
    """

    #: Folds to train; ``None`` means a single run on the DataModule's own holdout split.
    num_folds: int | None = None

    def __init__(self, bootstrap_samples: int = 1000, confidence: float = 0.95, permutations: int = 0,
                 permutation_metric: str = "macro_f1", grouped_permutation: bool = True,
                 alpha: float = 0.05, collapse_by: str = "argmax", seed: int = 0) -> None:
        if not 0 < confidence < 1:
            raise ValueError(f"evaluation.confidence={confidence} must be in (0, 1)")
        if bootstrap_samples < 0 or permutations < 0:
            raise ValueError("evaluation.bootstrap_samples and evaluation.permutations must be >= 0")
        if permutation_metric not in SUMMARY_METRICS:
            raise ValueError(f"evaluation.permutation_metric={permutation_metric!r}: use one of {SUMMARY_METRICS}")
        self.bootstrap_samples = int(bootstrap_samples)
        self.confidence = float(confidence)
        self.permutations = int(permutations)
        self.permutation_metric = permutation_metric
        self.grouped_permutation = bool(grouped_permutation)
        if collapse_by not in ("argmax", "probability"):
            raise ValueError(f"evaluation.collapse_by={collapse_by!r}: use 'argmax' or 'probability'")
        self.alpha = float(alpha)
        self.collapse_by = collapse_by
        self.seed = int(seed)

    def score(self, probabilities: np.ndarray, targets: np.ndarray, groups: Sequence,
              class_names: Sequence[str], majority_class: int | np.ndarray,
              collapse: Mapping[str, Sequence[str]] | None = None) -> Scores:
        """Point estimates, intervals, baseline and permutation test of one set of predictions.

        Args:
            probabilities: ``(n, C)`` class probabilities; the prediction is their argmax.
            targets: ``(n,)`` true class ids.
            groups: ``(n,)`` group of each clip (the bootstrap / permutation unit).
            majority_class: the training split's most frequent class (or one per clip, for
                pooled out-of-fold predictions whose folds had different training splits).
            collapse: ``{coarse: [classes]}`` to score the collapsed task as ``binary_*`` too.
        """
        class_names = list(class_names)
        probabilities = np.asarray(probabilities, dtype=np.float64)
        targets = np.asarray(targets, dtype=np.int64)
        groups = np.asarray(groups).astype(str)
        baseline = np.broadcast_to(np.asarray(majority_class, dtype=np.int64), targets.shape)
        tasks = [("", probabilities.argmax(axis=1), targets, baseline, class_names)]
        collapsed_matrix = collapsed_names = None
        if collapse:
            coarse, collapsed_names, mapping = collapse_probabilities(probabilities, class_names, collapse)
            coarse_prediction = (mapping[probabilities.argmax(axis=1)] if self.collapse_by == "argmax"
                                 else coarse.argmax(axis=1))
            tasks.append(("binary_" if len(collapsed_names) == 2 else "collapsed_", coarse_prediction,
                          mapping[targets], mapping[baseline], collapsed_names))
        metrics: dict[str, float] = {"baseline/majority_class": float(np.bincount(baseline).argmax())}
        parts = []
        for prefix, predicted, truth, base, names in tasks:
            matrix = confusion_matrices(truth, predicted, len(names))
            if prefix:
                collapsed_matrix = matrix
            point = metrics_from_confusion(matrix, names)
            metrics.update({f"test/{prefix}{k}": float(v) for k, v in point.items()})
            base_point = metrics_from_confusion(confusion_matrices(truth, base, len(names)), names)
            metrics.update({f"baseline/{prefix}{k}": float(base_point[k]) for k in SUMMARY_METRICS})
            if self.bootstrap_samples:
                metrics.update(self._intervals(truth, predicted, groups, names, prefix))
            text = self._describe(metrics, prefix)
            if self.permutations:
                _, p_value, _ = permutation_test(truth, predicted, names, self.permutation_metric,
                                                 groups if self.grouped_permutation else None,
                                                 self.permutations, self.seed)
                key = f"permutation/{prefix}{self.permutation_metric}"
                metrics[f"{key}_p_value"] = p_value
                metrics[f"{key}_better_than_chance"] = float(p_value < self.alpha)
                text += f"; permutation p={p_value:.3f}: {self.verdict(p_value)}"
            parts.append(text)
        return Scores(metrics, " | ".join(parts), collapsed_matrix, collapsed_names)

    def verdict(self, p_value: float) -> str:
        """``"better than chance"`` when ``p_value < alpha``, else ``"no better than chance"``."""
        return "better than chance" if p_value < self.alpha else "no better than chance"

    def _intervals(self, truth: np.ndarray, predicted: np.ndarray, groups: np.ndarray,
                   names: Sequence[str], prefix: str) -> dict[str, float]:
        if len(np.unique(groups)) < 2:
            log.warning("bootstrap: the test set holds a single group; intervals are degenerate")
        matrices = group_bootstrap_confusions(truth, predicted, groups, len(names), self.bootstrap_samples,
                                              self.seed)
        tail = (1 - self.confidence) / 2 * 100
        out = {}
        for name, values in metrics_from_confusion(matrices, names).items():
            low, high = np.percentile(values, [tail, 100 - tail])
            out[f"test/{prefix}{name}_ci_low"] = float(low)
            out[f"test/{prefix}{name}_ci_high"] = float(high)
        return out

    def _describe(self, metrics: Mapping[str, float], prefix: str) -> str:
        name = f"{prefix}macro_f1"
        text = f"{name} {metrics[f'test/{name}']:.3f}"
        if f"test/{name}_ci_low" in metrics:
            text += (f" [{self.confidence:.0%} CI {metrics[f'test/{name}_ci_low']:.3f}-"
                     f"{metrics[f'test/{name}_ci_high']:.3f}]")
        return text + f" vs majority baseline {metrics[f'baseline/{name}']:.3f}"

    def run(self, train_fold: TrainFold, run_dir: Path, open_parent_run: Callable[[], object | None]) -> dict[str, float]:
        """Train and test under this protocol; returns the metrics to report."""
        return train_fold(None, Path(run_dir), None)


class Holdout(EvaluationProtocol):
    """One training on the DataModule's grouped train/val/test split."""


class KFold(EvaluationProtocol):
    """Grouped k-fold cross-validation: fold ``i`` of the DataModule's grouped ``k``-fold
    partition is the test set of training ``i`` (validation carved from the other folds).

    ``run`` trains every fold through ``train_fold`` into ``<run_dir>/fold_<i>`` as a child of
    one parent MLflow run, then writes into ``run_dir`` (and onto the parent run):
    ``metrics.json`` (``<m>_mean``/``_std`` across folds plus the pooled out-of-fold scores),
    ``oof_predictions.csv`` (every fold's ``test_predictions.csv`` with a ``fold`` column),
    ``fold_metrics.csv`` and the pooled confusion matrices.
    """

    def __init__(self, k: int = 5, **settings) -> None:
        super().__init__(**settings)
        if int(k) < 2:
            raise ValueError(f"evaluation.k={k}: k-fold needs k >= 2")
        self.num_folds = int(k)

    def run(self, train_fold: TrainFold, run_dir: Path, open_parent_run: Callable[[], object | None]) -> dict[str, float]:
        from audioml import reports

        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        parent = open_parent_run()
        parent_id = getattr(parent, "run_id", None)
        fold_metrics, tables = [], []
        for fold in range(self.num_folds):
            fold_dir = run_dir / f"fold_{fold}"
            log.info("k-fold: training fold %d of %d into %s", fold + 1, self.num_folds, fold_dir)
            metrics = train_fold(fold, fold_dir, parent_id)
            fold_metrics.append(metrics)
            table = pd.read_csv(fold_dir / "test_predictions.csv")
            table.insert(0, "fold", fold)
            table["majority_class"] = int(metrics["baseline/majority_class"])
            tables.append(table)
        oof = pd.concat(tables, ignore_index=True)
        class_names = [c[2:] for c in oof.columns if c.startswith("p_")]
        oof_path = run_dir / "oof_predictions.csv"
        oof.to_csv(oof_path, index=False)
        collapse_file = run_dir / "fold_0" / COLLAPSE_FILE
        collapse = json.loads(collapse_file.read_text()) if collapse_file.is_file() else None
        scores = self.score(oof[[f"p_{c}" for c in class_names]].to_numpy(),
                            oof["true"].map({c: i for i, c in enumerate(class_names)}).to_numpy(),
                            oof["group"].astype(str).to_numpy(), class_names,
                            oof["majority_class"].to_numpy(), collapse)
        metrics = {**aggregate_folds(fold_metrics), **scores.metrics}
        fold_table = pd.DataFrame(fold_metrics).assign(fold=range(self.num_folds))
        fold_table.to_csv(run_dir / "fold_metrics.csv", index=False)
        predicted = oof[[f"p_{c}" for c in class_names]].to_numpy().argmax(axis=1)
        truth = oof["true"].map({c: i for i, c in enumerate(class_names)}).to_numpy()
        files = [oof_path, run_dir / "fold_metrics.csv",
                 reports.plot_confusion_matrix(confusion_matrices(truth, predicted, len(class_names)),
                                               class_names, run_dir / "confusion_matrix.png",
                                               title=f"out-of-fold confusion matrix ({self.num_folds} folds)")]
        if scores.collapsed_matrix is not None:
            files.append(reports.plot_confusion_matrix(scores.collapsed_matrix, scores.collapsed_names,
                                                       run_dir / "confusion_matrix_binary.png",
                                                       title="out-of-fold collapsed confusion matrix"))
        metrics_path = run_dir / "metrics.json"
        metrics_path.write_text(json.dumps(metrics, indent=2, sort_keys=True))
        files.append(metrics_path)
        mean, std = metrics.get("test/macro_f1_mean"), metrics.get("test/macro_f1_std")
        log.info("k-fold (%d folds): macro_f1 %.3f +- %.3f across folds; pooled out-of-fold: %s",
                 self.num_folds, mean if mean is not None else float("nan"),
                 std if std is not None else float("nan"), scores.summary)
        if parent is not None:
            parent.log_metrics(metrics)
            for path in files:
                parent.experiment.log_artifact(parent.run_id, str(path))
            parent.finalize("success")
        return metrics


# ------------------------------------------------------------------------ one run's reports
@torch.no_grad()
def collect_embeddings(model: torch.nn.Module, dataloader) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(pooled backbone embeddings (n, d), logits (n, C), targets (n,))`` of a loader, in eval
    mode, on the model's device. The model must have ``embed(waveform)`` and ``forward``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    before, after, targets = [], [], []
    for waveform, target in dataloader:
        waveform = waveform.to(device)
        before.append(model.embed(waveform).float().cpu())
        after.append(model(waveform).float().cpu())
        targets.append(target.argmax(dim=1) if target.dim() == 2 else target)
    model.train(was_training)
    return (torch.cat(before).numpy(), torch.cat(after).numpy(), torch.cat(targets).numpy())


def report_test_run(protocol: EvaluationProtocol, model: torch.nn.Module, datamodule,
                    run_dir: str | Path) -> tuple[dict[str, float], list[Path]]:
    """Honest numbers and extra plots of one tested classification run.

    Scores ``model.test_probabilities`` against the test split (groups from its manifest, the
    majority class from the training counts, the DataModule's ``collapse`` if any), writes
    ``confusion_matrix_binary.png`` and ``class_collapse.json`` for a collapse and
    ``embeddings_pca.png`` when the model has ``embed``. Returns ``(metrics, files written)``;
    both empty for non-classification tasks or when the model kept no test probabilities.
    """
    from audioml import reports

    if getattr(datamodule, "task", "classification") != "classification" \
            or getattr(model, "test_probabilities", None) is None:
        return {}, []
    run_dir = Path(run_dir)
    class_names = list(datamodule.class_names)
    manifest = datamodule.split_manifest("test")
    majority = int(np.argmax(datamodule.train_class_counts()))
    collapse = getattr(datamodule, "collapse", None)
    scores = protocol.score(model.test_probabilities.numpy(), model.test_targets.numpy(),
                            manifest["group"].astype(str).to_numpy(), class_names, majority, collapse)
    files: list[Path] = []
    if collapse:
        (run_dir / COLLAPSE_FILE).write_text(json.dumps({k: list(v) for k, v in collapse.items()}))
        files.append(reports.plot_confusion_matrix(scores.collapsed_matrix, scores.collapsed_names,
                                                   run_dir / "confusion_matrix_binary.png",
                                                   title="test confusion matrix (collapsed)"))
    if hasattr(model, "embed") and len(manifest):
        before, after, labels = collect_embeddings(model, datamodule.test_dataloader())
        files.append(reports.plot_embedding_pca(before, after, labels, class_names,
                                                run_dir / "embeddings_pca.png"))
    log.info("test (honest): %s", scores.summary)
    return scores.metrics, files
