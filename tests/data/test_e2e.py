"""`audioml-train` end to end on each new dataset, as a subprocess: a generated MuSe package and
the real RAVDESS and Emotify samples (all slow; the default run trains MuSe in-process in
test_data_muse.py and each study preset in test_study_experiments.py)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from helpers.datasets import make_muse_package
from helpers.runners import find_run_dirs, read_metrics, run_entry_point

QUIET = ["trainer.enable_progress_bar=false"]


@pytest.mark.slow  # kept out of the default run for its time (15-30 s); `pytest -m slow` runs it
def test_train_muse_on_generated_package(tmp_path):
    make_muse_package(tmp_path / "data" / "muse" / "c3_muse_stress_2022", seconds=10.0)
    run_entry_point("audioml.train", "data=muse", "model=crnn_attention", "loss=ccc", "monitor=val/ccc",
                    "optimized_metric=test/ccc", "data.targets=[valence,arousal]", "data.sequence_length=8",
                    "data.stride=4", "trainer.max_epochs=1", f"paths.output_dir={tmp_path / 'out'}", *QUIET,
                    env={"AUDIOML_DATA_DIR": str(tmp_path / "data")})
    (run_dir,) = find_run_dirs(tmp_path / "out")
    metrics = read_metrics(run_dir)
    assert {"test/ccc", "test/ccc_valence", "test/ccc_arousal", "test/mse", "test/mae"} <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values())
    # the normalisation statistics: computed by the model's own 128-band front end, in the checkpoint
    state = torch.load(next((run_dir / "checkpoints").glob("best-*.ckpt")), weights_only=True)["state_dict"]
    assert state["feature_mean"].shape == (128,) and float(state["feature_std"].min()) > 0
    assert not torch.equal(state["feature_mean"], torch.zeros(128))


@pytest.mark.slow
def test_train_ravdess_emotion_on_real_sample(shared_data, tmp_path):
    run_entry_point("audioml.train", "data=ravdess", "data.task=emotion", "model=cnn", "trainer.max_epochs=1",
                    f"paths.output_dir={tmp_path}", *QUIET, env={"AUDIOML_DATA_DIR": str(shared_data)})
    (run_dir,) = find_run_dirs(tmp_path)
    metrics = read_metrics(run_dir)
    assert {"test/acc", "test/macro_f1", "test/recall_surprised"} <= set(metrics)
    report = pd.read_csv(run_dir / "per_class_report.csv")
    assert len(report) == 8
    predictions = pd.read_csv(run_dir / "test_predictions.csv")
    assert len(predictions) == 60 and predictions["actor"].nunique() == 1  # one whole actor held out


@pytest.mark.slow
def test_train_emotify_on_real_sample_with_missing_audio(shared_data, tmp_path):
    refused = run_entry_point("audioml.train", "data=emotify", "model=cnn", "trainer.max_epochs=1",
                              f"paths.output_dir={tmp_path / 'refused'}", *QUIET,
                              env={"AUDIOML_DATA_DIR": str(shared_data)}, check=False)
    assert refused.returncode != 0 and "388 of 397 tracks" in refused.stderr
    run_entry_point("audioml.train", "data=emotify", "data.allow_missing=true", "model=cnn", "trainer.max_epochs=1",
                    f"paths.output_dir={tmp_path / 'run'}", *QUIET, env={"AUDIOML_DATA_DIR": str(shared_data)})
    (run_dir,) = find_run_dirs(tmp_path / "run")
    assert "test/macro_f1" in read_metrics(run_dir)
    skipped = pd.read_csv(run_dir / "skipped_files.csv")
    assert len(skipped) == 388 and (skipped["reason"] == "missing audio file").all()
    predictions = pd.read_csv(run_dir / "test_predictions.csv")
    assert predictions["track_id"].nunique() >= 1 and (predictions["duration"] == 15.0).all()
