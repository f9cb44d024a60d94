"""What a run leaves on disk and in memory after testing: ``metrics.json``, the confusion
matrices, ``per_class_report.csv``, ``test_predictions.csv``, the honest numbers of one run
and of a k-fold protocol, and the ``RunResult`` read back from a run finished earlier."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from audioml import reports
from audioml.run.protocols import EvaluationProtocol, KFoldResult, RunResult
from audioml.stats import per_class_table

log = logging.getLogger(__name__)

__all__ = ["COLLAPSE_FILE", "PREDICTIONS_FILE", "honest_test_scores", "write_run_reports", "finished_result",
           "write_kfold_reports", "collect_embeddings"]

#: Written next to test_predictions.csv when the DataModule declares a collapse.
COLLAPSE_FILE = "class_collapse.json"
PREDICTIONS_FILE = "test_predictions.csv"


def honest_test_scores(protocol: EvaluationProtocol, model, datamodule, run_dir: Path) -> tuple[dict[str, float], list[Path]]:
    """Intervals, baseline, permutation test (and the collapsed task) of a tested classifier,
    with their plots; ``({}, [])`` for other tasks. Point estimates are the model's own."""
    if datamodule.task != "classification" or getattr(model, "test_probabilities", None) is None:
        return {}, []
    class_names = list(datamodule.class_names)
    manifest = datamodule.split_manifest("test")
    collapse = getattr(datamodule, "collapse", None)
    scores = protocol.score(model.test_probabilities.numpy(), model.test_targets.numpy(),
                            manifest["group"].astype(str).to_numpy(), class_names,
                            int(np.argmax(datamodule.train_class_counts())), collapse, point_estimates=False)
    files: list[Path] = []
    if collapse:
        (run_dir / COLLAPSE_FILE).write_text(json.dumps({k: list(v) for k, v in collapse.items()}))
        files += [run_dir / COLLAPSE_FILE, reports.plot_confusion_matrix(
            scores.collapsed_matrix, scores.collapsed_names, run_dir / "confusion_matrix_binary.png",
            title="test confusion matrix (collapsed)")]
    if hasattr(model, "embed") and len(manifest):
        before, after, labels = collect_embeddings(model, datamodule.test_dataloader())
        files.append(reports.plot_embedding_pca(before, after, labels, class_names, run_dir / "embeddings_pca.png"))
    log.info("test (honest): %s", scores.summary)
    return scores.metrics, files


def write_run_reports(model, datamodule, run_dir: Path, metrics: dict[str, float]) -> tuple[RunResult, list[Path]]:
    """Write metrics.json and the per-class files of a tested run; returns its ``RunResult``
    and the paths written."""
    metrics_path = run_dir / "metrics.json"
    metrics_path.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    files, predictions = [metrics_path], None
    matrix = getattr(model, "test_confusion_matrix", None)
    class_names = list(datamodule.class_names)
    if matrix is not None:
        files.append(reports.plot_confusion_matrix(matrix.numpy(), class_names, run_dir / "confusion_matrix.png"))
        per_class_table(matrix.numpy(), class_names).to_csv(run_dir / "per_class_report.csv", index=False)
        files.append(run_dir / "per_class_report.csv")
    if getattr(model, "test_probabilities", None) is not None:
        predictions = reports.predictions_table(datamodule.split_manifest("test"), model.test_probabilities.numpy(),
                                                model.test_targets.numpy(), class_names)
        predictions.to_csv(run_dir / PREDICTIONS_FILE, index=False)
        files.append(run_dir / PREDICTIONS_FILE)
    if len(datamodule.skipped):
        datamodule.skipped.to_csv(run_dir / "skipped_files.csv", index=False)
        files.append(run_dir / "skipped_files.csv")
    collapse = getattr(datamodule, "collapse", None)
    return RunResult(metrics, predictions, {k: list(v) for k, v in collapse.items()} if collapse else None,
                     run_dir), files


def finished_result(run_dir: Path, metrics: dict[str, float]) -> RunResult:
    """The ``RunResult`` of a run that finished in an earlier process (its ``DONE`` metrics and
    the files it wrote)."""
    predictions_path, collapse_path = run_dir / PREDICTIONS_FILE, run_dir / COLLAPSE_FILE
    return RunResult(metrics, pd.read_csv(predictions_path) if predictions_path.is_file() else None,
                     json.loads(collapse_path.read_text()) if collapse_path.is_file() else None, run_dir)


def write_kfold_reports(result: KFoldResult, run_dir: Path) -> list[Path]:
    """``metrics.json``, ``oof_predictions.csv``, ``fold_metrics.csv`` and the pooled confusion
    matrices of a k-fold protocol; returns the paths written."""
    result.oof.to_csv(run_dir / "oof_predictions.csv", index=False)
    result.folds.to_csv(run_dir / "fold_metrics.csv", index=False)
    files = [run_dir / "oof_predictions.csv", run_dir / "fold_metrics.csv", reports.plot_confusion_matrix(
        result.confusion, result.class_names, run_dir / "confusion_matrix.png",
        title=f"out-of-fold confusion matrix ({len(result.folds)} folds)")]
    if result.scores.collapsed_matrix is not None:
        files.append(reports.plot_confusion_matrix(result.scores.collapsed_matrix, result.scores.collapsed_names,
                                                   run_dir / "confusion_matrix_binary.png",
                                                   title="out-of-fold collapsed confusion matrix"))
    (run_dir / "metrics.json").write_text(json.dumps(result.metrics, indent=2, sort_keys=True))
    return [*files, run_dir / "metrics.json"]


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
    return torch.cat(before).numpy(), torch.cat(after).numpy(), torch.cat(targets).numpy()
