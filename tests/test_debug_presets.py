"""``debug=fast`` and ``debug=overfit`` run the whole pipeline on synthetic data and keep no run:
no DONE marker, no MLflow store, a new folder under ``<output>/debug/``; overfitting one batch
drives its training loss down. Real ``audioml-train`` processes."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from helpers.runners import read_metrics, run_entry_point

SMALL = ["data=synthetic", "trainer.enable_progress_bar=false", "data.num_workers=0"]


def _debug_run_dir(output):
    (run_dir,) = (output / "debug").iterdir()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d-synthetic-cnn-[0-9a-f]{10}", run_dir.name), run_dir.name
    return run_dir


def _nothing_kept(output, run_dir, log: str) -> None:
    assert not (run_dir / "DONE").exists() and "no DONE marker" in log
    assert not (output / "mlflow").exists() and not (output / "runs").exists()  # no store, no run directory
    assert not (run_dir / "mlflow_run_id").exists() and "MLflow logging off" in log


def test_debug_fast_runs_two_batches_and_every_report(tmp_path):
    process = run_entry_point("audioml.train", "debug=fast", *SMALL, f"paths.output_dir={tmp_path}")
    run_dir = _debug_run_dir(tmp_path)
    _nothing_kept(tmp_path, run_dir, process.stdout + process.stderr)
    curves = pd.read_csv(run_dir / "learning_curves.csv")
    assert curves["epoch"].tolist() == [0]  # one epoch
    assert "limit_train_batches: 2" in (run_dir / "config.yaml").read_text()
    metrics = read_metrics(run_dir)  # the whole test split was scored: every report is there
    assert {"test/macro_f1", "baseline/macro_f1", "test/macro_f1_ci_low"} <= set(metrics)
    written = {p.name for p in run_dir.iterdir()}
    assert {"confusion_matrix.png", "per_class_report.csv", "test_predictions.csv"} <= written
    assert len(pd.read_csv(run_dir / "test_predictions.csv")) == 14  # every test clip of data=synthetic


@pytest.mark.slow  # overfits a batch for many steps (about 18 s)
def test_debug_overfit_drives_the_training_loss_down(tmp_path):
    process = run_entry_point("audioml.train", "debug=overfit", "trainer.max_epochs=10", *SMALL,
                              f"paths.output_dir={tmp_path}")
    run_dir = _debug_run_dir(tmp_path)
    _nothing_kept(tmp_path, run_dir, process.stdout + process.stderr)
    loss = pd.read_csv(run_dir / "learning_curves.csv")["train/loss"].tolist()
    assert len(loss) == 10 and loss[-1] < 0.8 * loss[0], loss
