"""What a run leaves on disk and in memory after testing: ``metrics.json``, the confusion
matrices, ``per_class_report.csv``, ``test_predictions.csv``, which checkpoint file the test
scored (``tested_checkpoint.json``; what ``audioml-eval source=<run dir>`` evaluates), the honest
numbers of one run and of a k-fold protocol, and the ``RunResult`` read back from a run finished
earlier."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from audioml import figures, reports
from audioml.files import file_digest
from audioml.run.items import with_item_identity
from audioml.run.protocols import EvaluationProtocol, KFoldResult, RunResult
from audioml.stats import per_class_table

log = logging.getLogger(__name__)

__all__ = ["COLLAPSE_FILE", "PREDICTIONS_FILE", "RELIABILITY_FIGURE", "TESTED_CHECKPOINT_FILE", "honest_test_scores",
           "regression_test_scores",
           "write_run_reports", "finished_result", "write_kfold_reports", "collect_embeddings", "write_tested_checkpoint",
           "read_tested_checkpoint", "evaluated_checkpoint", "file_sha256"]

#: Written next to test_predictions.csv when the DataModule declares a collapse.
COLLAPSE_FILE = "class_collapse.json"
PREDICTIONS_FILE = "test_predictions.csv"
#: The calibration figure of a tested classifier (``audioml.figures.plot_reliability_diagram``).
RELIABILITY_FIGURE = "reliability_diagram.png"
#: Which checkpoint file a run's test scored, i.e. where the numbers of its metrics.json come from.
TESTED_CHECKPOINT_FILE = "tested_checkpoint.json"


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (``audioml.files.file_digest``)."""
    return file_digest(path)


def write_tested_checkpoint(run_dir: Path, checkpoint: Path) -> Path:
    """Record in ``run_dir/tested_checkpoint.json`` that its test scored ``checkpoint``: its path
    relative to ``run_dir`` (the run may move), size in bytes and sha256."""
    checkpoint = Path(checkpoint).resolve()
    try:
        shown = str(checkpoint.relative_to(Path(run_dir).resolve()))
    except ValueError:  # a checkpoint outside the run directory (dirpath set elsewhere)
        shown = str(checkpoint)
    path = Path(run_dir) / TESTED_CHECKPOINT_FILE
    path.write_text(json.dumps({"checkpoint": shown, "bytes": checkpoint.stat().st_size,
                                "sha256": file_sha256(checkpoint)}, indent=2))
    return path


def read_tested_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint file whose test numbers are in ``run_dir/metrics.json``: as recorded by
    ``write_tested_checkpoint`` and still the same bytes. ``None`` when the run recorded none
    (before this record existed, or still training), or with a warning when that file is gone
    or was rewritten since."""
    record_path = Path(run_dir) / TESTED_CHECKPOINT_FILE
    if not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text())
        checkpoint = Path(run_dir) / record["checkpoint"]
        unchanged = checkpoint.is_file() and checkpoint.stat().st_size == record["bytes"] and \
            file_sha256(checkpoint) == record["sha256"]
    except (ValueError, KeyError, TypeError, OSError) as error:
        log.warning("%s is unreadable (%s): which checkpoint the test scored is unknown", record_path, error)
        return None
    if not unchanged:
        log.warning("%s, the checkpoint %s's test scored, is %s since", checkpoint, run_dir,
                    "changed" if checkpoint.is_file() else "gone")
        return None
    return checkpoint


def evaluated_checkpoint(source: str | Path, tracking_uri: str | None = None,
                         download_dir: str | Path | None = None) -> tuple[Path, str]:
    """``(checkpoint file, what it is)`` for ``audioml-eval source=...``: for a run directory,
    the checkpoint its test scored (``tested_checkpoint.json``), so the numbers reproduce its
    ``metrics.json``; for any other source the file ``inference.find_checkpoint`` finds, and when
    that is a checkpoint of a run directory whose test scored another file, the line says so
    (e.g. ``last.ckpt`` after a run that tested its best epoch)."""
    from audioml.run.inference import find_checkpoint

    path = Path(str(source))
    if path.is_dir() and not (path / "MLmodel").is_file():
        tested = read_tested_checkpoint(path)
        if tested is not None:
            return tested, f"the checkpoint the test of run {path} scored: the numbers of its metrics.json"
    checkpoint = find_checkpoint(source, tracking_uri, download_dir)
    run_dir = checkpoint.resolve().parent.parent
    tested = read_tested_checkpoint(run_dir) if (run_dir / TESTED_CHECKPOINT_FILE).is_file() else None
    if path.is_dir() and not (path / "MLmodel").is_file():
        why = ("the one its test scored is gone or was rewritten: its metrics.json may differ"
               if (path / TESTED_CHECKPOINT_FILE).is_file() else "the run did not record which one its test scored")
        return checkpoint, f"the best checkpoint of run {path} ({why})"
    if tested is None:
        return checkpoint, f"from {source}"
    if tested.resolve() == checkpoint.resolve():
        return checkpoint, f"the checkpoint the test of run {run_dir} scored: the numbers of its metrics.json"
    return checkpoint, (f"not the checkpoint the test of run {run_dir} scored ({tested.name}, whose numbers are in "
                        f"its metrics.json): these numbers are {checkpoint.name}'s; give source={run_dir} for the "
                        "tested one")


def honest_test_scores(protocol: EvaluationProtocol, model, datamodule, run_dir: Path) -> tuple[dict[str, float], list[Path]]:
    """Intervals, baseline, permutation test (and the collapsed task) of a tested classifier,
    with their plots (started with ``audioml.figures.draw``: ``figures.wait`` before reading
    them); for a tested regressor its intervals and mean baseline (``regression_test_scores``);
    ``({}, [])`` for anything else. Point estimates are the model's own."""
    if datamodule.task == "regression" and getattr(model, "test_predictions", None) is not None:
        return regression_test_scores(protocol, model, datamodule), []
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
        files += [run_dir / COLLAPSE_FILE, figures.draw(
            reports.plot_confusion_matrix, scores.collapsed_matrix, scores.collapsed_names,
            run_dir / "confusion_matrix_binary.png", title="test confusion matrix (collapsed)")]
    if scores.reliability is not None:
        files.append(_draw_reliability(scores, run_dir / RELIABILITY_FIGURE))
    if hasattr(model, "embed") and len(manifest):
        before, after, labels = collect_embeddings(model, datamodule.test_dataloader())
        files.append(figures.draw(reports.plot_embedding_pca, before, after, labels, class_names,
                                  run_dir / "embeddings_pca.png"))
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

    names = list(getattr(model, "target_names", None) or datamodule.class_names)
    prediction = model.test_predictions.double().numpy().reshape(len(model.test_predictions), -1, len(names))
    target = model.test_targets.double().numpy().reshape(prediction.shape)
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


def write_run_reports(model, datamodule, run_dir: Path, metrics: dict[str, float]) -> tuple[RunResult, list[Path]]:
    """Write metrics.json and the per-class files of a tested run; returns its ``RunResult``
    and the paths written (the confusion matrix started with ``audioml.figures.draw``)."""
    metrics_path = run_dir / "metrics.json"
    metrics_path.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    files, predictions = [metrics_path], None
    matrix = getattr(model, "test_confusion_matrix", None)
    class_names = list(datamodule.class_names)
    if matrix is not None:
        files.append(figures.draw(reports.plot_confusion_matrix, matrix.numpy(), class_names,
                                  run_dir / "confusion_matrix.png"))
        per_class_table(matrix.numpy(), class_names).to_csv(run_dir / "per_class_report.csv", index=False)
        files.append(run_dir / "per_class_report.csv")
    root = getattr(datamodule, "root", None)  # items named by their files (audioml.run.items)
    if getattr(model, "test_probabilities", None) is not None:
        predictions = with_item_identity(reports.predictions_table(
            datamodule.split_manifest("test"), model.test_probabilities.numpy(), model.test_targets.numpy(),
            class_names), root)
        predictions.to_csv(run_dir / PREDICTIONS_FILE, index=False)
        files.append(run_dir / PREDICTIONS_FILE)
    elif datamodule.task == "regression" and getattr(model, "test_predictions", None) is not None:
        names = list(getattr(model, "target_names", None) or class_names)
        prediction = model.test_predictions.double().numpy().reshape(len(model.test_predictions), -1, len(names))
        table = reports.regression_predictions_table(datamodule.split_manifest("test"), prediction,
                                                     model.test_targets.double().numpy().reshape(prediction.shape),
                                                     names)
        with_item_identity(table, root).to_csv(run_dir / PREDICTIONS_FILE, index=False)
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
    predictions = pd.read_csv(predictions_path) if predictions_path.is_file() else None
    if predictions is not None and "true" not in predictions:  # a regressor's windows: not a classifier's result
        predictions = None
    return RunResult(metrics, predictions,
                     json.loads(collapse_path.read_text()) if collapse_path.is_file() else None, run_dir)


def write_kfold_reports(result: KFoldResult, run_dir: Path) -> list[Path]:
    """``metrics.json``, ``oof_predictions.csv``, ``fold_metrics.csv`` and the pooled confusion
    matrices of a k-fold protocol; returns the paths written."""
    result.oof.to_csv(run_dir / "oof_predictions.csv", index=False)
    result.folds.to_csv(run_dir / "fold_metrics.csv", index=False)
    files = [run_dir / "oof_predictions.csv", run_dir / "fold_metrics.csv", reports.plot_confusion_matrix(
        result.confusion, result.class_names, run_dir / "confusion_matrix.png",
        title=f"out-of-fold confusion matrix ({len(result.folds)} folds)")]
    if result.scores.reliability is not None:  # drawn before the parent run logs it
        files.append(_draw_reliability(result.scores, run_dir / RELIABILITY_FIGURE,
                                       title="out-of-fold reliability diagram"))
        figures.wait(files[-1:])
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
