"""What a tested run leaves in its directory and in memory: its metrics, confusion matrices,
per-class report and test predictions, the honest numbers of one run and of a k-fold protocol
(intervals, baselines, calibration), and the ``RunResult`` read back from a run finished earlier."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from audioml.models.base import AudioModule
from audioml.run.figures import callbacks as reports
from audioml.run.figures import drawing as figures
from audioml.run.fit.protocols import EvaluationProtocol, KFoldResult, RunResult
from audioml.run.rundir import RunDir
from audioml.run.use.items import with_item_identity
from audioml.stats import per_class_table

log = logging.getLogger(__name__)

__all__ = ["honest_test_scores", "regression_test_scores", "write_run_reports", "finished_result",
           "write_kfold_reports", "collect_embeddings"]


def honest_test_scores(protocol: EvaluationProtocol, model: AudioModule, datamodule,
                       run: RunDir) -> tuple[dict[str, float], list[Path]]:
    """Intervals, baseline, permutation test, calibration (and the collapsed task) of a tested
    classifier, with their plots (started with ``audioml.run.figures.drawing.draw``: ``figures.wait`` before
    reading them); for a tested regressor its intervals and mean baseline
    (``regression_test_scores``); ``({}, [])`` for anything else. Point estimates are the model's own."""
    outputs = model.test_outputs()
    if outputs is None:
        return {}, []
    if outputs.predictions is not None:
        return regression_test_scores(protocol, model, datamodule), []
    class_names = list(datamodule.class_names)
    manifest = datamodule.split_manifest("test")
    collapse = datamodule.collapse
    scores = protocol.score(outputs.probabilities.numpy(), outputs.targets.numpy(),
                            manifest["group"].astype(str).to_numpy(), class_names,
                            int(np.argmax(datamodule.train_class_counts())), collapse, point_estimates=False)
    files: list[Path] = []
    if collapse:
        run.write_collapse(collapse)
        files += [run.collapse_file, figures.draw(
            reports.plot_confusion_matrix, scores.collapsed_matrix, scores.collapsed_names,
            run.collapsed_confusion_figure, title="test confusion matrix (collapsed)")]
    if scores.reliability is not None:
        files.append(_draw_reliability(scores, run.reliability_figure))
    if model.embeds and len(manifest):
        before, after, labels = collect_embeddings(model, datamodule.test_dataloader())
        files.append(figures.draw(reports.plot_embedding_pca, before, after, labels, class_names,
                                  run.embeddings_figure))
    log.info("test (honest): %s", scores.summary)
    return scores.metrics, files


def _draw_reliability(scores, path: Path, title: str = "test reliability diagram") -> Path:
    """The reliability diagram of ``scores`` (started with ``figures.draw``)."""
    bins = scores.reliability
    return figures.draw(figures.plot_reliability_diagram, bins.edges, bins.counts, bins.confidence, bins.accuracy,
                        path, title=title, ece=scores.metrics.get("test/ece"))


def regression_test_scores(protocol: EvaluationProtocol, model, datamodule) -> dict[str, float]:
    """Group-bootstrap intervals of the test CCC / MSE / MAE of a tested regressor over the
    same rows its ``test/*`` pool (every window of every test sequence), resampling whole
    recordings / speakers (the manifest's ``group``), and the scores of predicting the training
    split's mean target (``baseline/*``). Per target with several targets (``test/ccc_<name>``).

    No permutation test: a permuted continuous target over overlapping sequences has no
    exchangeable unit short of whole recordings, which the interval already resamples."""
    from audioml.stats import regression_scores

    outputs = model.test_outputs()
    names = list(outputs.names)
    prediction, target = outputs.predictions.double().numpy(), outputs.targets.double().numpy()
    groups = np.repeat(datamodule.split_manifest("test")["group"].astype(str).to_numpy(), prediction.shape[1])
    if len(groups) != prediction.shape[0] * prediction.shape[1]:
        log.warning("test intervals: %d test rows for %d predictions; no intervals", len(groups) // max(
            prediction.shape[1], 1), prediction.shape[0])
        return {}
    mean = np.broadcast_to(np.asarray(datamodule.train_target_mean(), dtype=np.float64).reshape(-1), (len(names),))
    metrics, parts = {}, []
    for column, name in enumerate(names):
        scores, text = regression_scores(prediction[:, :, column], target[:, :, column], groups, mean[column],
                                         protocol.bootstrap_samples, protocol.confidence, protocol.seed)
        for key, value in scores.items():
            if key.startswith("test/") and not key.endswith(("_ci_low", "_ci_high")):
                continue  # the point estimates are the model's own (logged already)
            if len(names) > 1:  # test/ccc_ci_low -> test/ccc_<name>_ci_low, baseline/ccc -> baseline/ccc_<name>
                group_name, _, metric = key.partition("/")
                base, _, bound = metric.partition("_ci_")
                key = f"{group_name}/{base}_{name}" + (f"_ci_{bound}" if bound else "")
            metrics[key] = float(value)
        parts.append(text if len(names) == 1 else f"{name}: {text}")
    log.info("test (honest, over all test windows): %s", " | ".join(parts))
    return metrics


def write_run_reports(model: AudioModule, datamodule, run: RunDir,
                      metrics: dict[str, float]) -> tuple[RunResult, list[Path]]:
    """Write the metrics and the per-class files of a tested run; returns its ``RunResult`` and
    the paths written (the confusion matrix started with ``audioml.run.figures.drawing.draw``)."""
    files, predictions = [run.write_metrics(metrics)], None
    outputs = model.test_outputs()
    class_names = list(datamodule.class_names)
    if outputs is not None and outputs.confusion is not None:
        files.append(figures.draw(reports.plot_confusion_matrix, outputs.confusion.numpy(), class_names,
                                  run.confusion_figure))
        per_class_table(outputs.confusion.numpy(), class_names).to_csv(run.per_class_file, index=False)
        files.append(run.per_class_file)
    root = datamodule.root  # items named by their files (audioml.run.use.items)
    if outputs is not None and outputs.probabilities is not None:
        predictions = with_item_identity(reports.predictions_table(
            datamodule.split_manifest("test"), outputs.probabilities.numpy(), outputs.targets.numpy(),
            class_names), root)
        predictions.to_csv(run.predictions_file, index=False)
        files.append(run.predictions_file)
    elif outputs is not None and outputs.predictions is not None:
        table = reports.regression_predictions_table(datamodule.split_manifest("test"),
                                                     outputs.predictions.double().numpy(),
                                                     outputs.targets.double().numpy(), list(outputs.names))
        with_item_identity(table, root).to_csv(run.predictions_file, index=False)
        files.append(run.predictions_file)
    if len(datamodule.skipped):
        datamodule.skipped.to_csv(run.skipped_file, index=False)
        files.append(run.skipped_file)
    collapse = datamodule.collapse
    return RunResult(metrics, predictions, {k: list(v) for k, v in collapse.items()} if collapse else None,
                     run.path), files


def finished_result(run: RunDir, metrics: dict[str, float]) -> RunResult:
    """The ``RunResult`` of a run that finished in an earlier process (its ``DONE`` metrics and
    the files it wrote)."""
    predictions = pd.read_csv(run.predictions_file) if run.predictions_file.is_file() else None
    if predictions is not None and "true" not in predictions:  # a regressor's windows: not a classifier's result
        predictions = None
    return RunResult(metrics, predictions, run.collapse(), run.path)


def write_kfold_reports(result: KFoldResult, run: RunDir) -> list[Path]:
    """The metrics, out-of-fold predictions, per-fold metrics and the pooled confusion matrices
    of a k-fold protocol; returns the paths written."""
    result.oof.to_csv(run.oof_file, index=False)
    result.folds.to_csv(run.fold_metrics_file, index=False)
    files = [run.oof_file, run.fold_metrics_file, reports.plot_confusion_matrix(
        result.confusion, result.class_names, run.confusion_figure,
        title=f"out-of-fold confusion matrix ({len(result.folds)} folds)")]
    if result.scores.reliability is not None:  # drawn before the parent run logs it
        files.append(_draw_reliability(result.scores, run.reliability_figure, title="out-of-fold reliability diagram"))
        figures.wait(files[-1:])
    if result.scores.collapsed_matrix is not None:
        files.append(reports.plot_confusion_matrix(result.scores.collapsed_matrix, result.scores.collapsed_names,
                                                   run.collapsed_confusion_figure,
                                                   title="out-of-fold collapsed confusion matrix"))
    return [*files, run.write_metrics(result.metrics)]


@torch.no_grad()
def collect_embeddings(model: torch.nn.Module, dataloader) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(pooled backbone embeddings (n, d), logits (n, C), targets (n,))`` of a loader, in eval
    mode, on the model's device (an ``AudioModule`` that ``embeds``)."""
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
    return torch.cat(before).numpy(), torch.cat(after).numpy(), torch.cat(targets).numpy()
