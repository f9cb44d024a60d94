"""A tested classifier's calibration and MLflow 3 lineage, on one real tiny training run
(``data=synthetic``, a real MLflow store in a temp dir): temperature scaling fitted on
validation, recorded in the checkpoint and applied by eval, predict and export; the model as an
MLflow 3 logged model evaluated through ``models:/m-<id>`` and ``models:/<name>@<alias>``,
its evaluations linked to it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.runners import find_run_dirs, read_metrics, run_entry_point
from mlflow import MlflowClient

from audioml.files import file_digest
from audioml.run.record.lineage import Lineage, check_registration, parse_model_uri, resolve
from audioml.run.rundir import RunDir
from audioml.run.use.checkpoint import model_from_record, read_record
from audioml.run.use.export import export_checkpoint
from audioml.run.use.inference import OutputModel, find_checkpoint

QUIET = ["trainer.enable_progress_bar=false", "data.num_workers=0"]


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory):
    """Six epochs of the scratch CNN on the synthetic classes, temperature-scaled, registered
    as ``synth-cal`` with the alias ``champion``."""
    output = tmp_path_factory.mktemp("calibrated")
    run_entry_point("audioml.train", "data=synthetic", "model=cnn", "trainer.max_epochs=6", "model.optimizer.lr=3e-3",
                    "evaluation.temperature_scaling=true", "logger.register_model=synth-cal",
                    "logger.register_alias=champion", f"paths.output_dir={output}", *QUIET)
    (run_dir,) = find_run_dirs(output)
    store = f"sqlite:///{output / 'mlflow' / 'mlflow.db'}"
    run = MlflowClient(store).get_run((run_dir / "mlflow_run_id").read_text().strip())
    return output, run_dir, store, run


def test_the_temperature_is_fitted_on_validation_recorded_and_keeps_the_predictions(calibrated_run):
    _, run_dir, _, _ = calibrated_run
    metrics = read_metrics(run_dir)
    temperature = metrics["calibration/temperature"]
    assert temperature != 1.0 and metrics["calibration/val_nll_after"] < metrics["calibration/val_nll_before"]
    record, state = read_record(RunDir(run_dir).tested_checkpoint())
    assert isinstance(record["temperature"], float) and record["temperature"] == pytest.approx(temperature)
    predictions = pd.read_csv(run_dir / "test_predictions.csv")
    # each test item named by its file relative to the dataset folder and the file's sha256
    assert all(Path(p).as_posix().endswith("/" + f) for p, f in zip(predictions["path"], predictions["file"]))
    assert not predictions["file"].str.startswith("/").any()
    assert predictions["sha256"].tolist() == [file_digest(p) for p in predictions["path"]]
    # accuracy unchanged: the scaled probabilities' classes are the logits' (Lightning's test/acc)
    assert (predictions["predicted"] == predictions["true"]).mean() == pytest.approx(metrics["test/acc"])
    for name in ("ece", "brier", "nll"):
        assert metrics[f"test/{name}_ci_low"] <= metrics[f"test/{name}"] <= metrics[f"test/{name}_ci_high"]
    assert (run_dir / "reliability_diagram.png").stat().st_size > 1000
    # what every consumer runs: softmax of the logits divided by the recorded temperature
    waveform = torch.from_numpy(np.random.default_rng(0).normal(0, 0.1, (3, 16000)).astype(np.float32))
    with torch.no_grad():
        logits = model_from_record(record, state)(waveform)
        answered = OutputModel.of_record(record, state)(waveform)
    assert torch.allclose(answered, (logits / temperature).softmax(-1), atol=1e-6)
    assert not torch.allclose(answered, logits.softmax(-1), atol=1e-3)


def test_export_applies_the_temperature(calibrated_run, tmp_path):
    _, run_dir, _, _ = calibrated_run
    result = export_checkpoint(run_dir, "torchscript", tmp_path / "model.pt", parity_clips=3)
    assert result.contract["temperature"] == pytest.approx(read_metrics(run_dir)["calibration/temperature"])
    waveform = torch.from_numpy(np.random.default_rng(1).normal(0, 0.1, (2, 16000)).astype(np.float32))
    record, state = read_record(find_checkpoint(run_dir))
    with torch.no_grad():
        expected = OutputModel.of_record(record, state)(waveform)
        assert torch.allclose(torch.jit.load(str(result.path))(waveform), expected, atol=1e-5)


def test_a_logged_model_uri_evaluates_and_its_evaluation_is_linked_to_the_model(calibrated_run, tmp_path):
    output, run_dir, store, run = calibrated_run
    client = MlflowClient(store, registry_uri=store)
    model_id = run.data.tags["audioml.model_id"]
    assert model_id.startswith("m-") and run.outputs.model_outputs[0].model_id == model_id
    logged = client.get_logged_model(model_id)
    assert logged.source_run_id == run.info.run_id and logged.tags["audioml.task"] == "classification"
    assert {"test/acc", "test/ece"} <= {m.key for m in logged.metrics}  # the run's metrics, linked by MLflow
    # the final test metrics too (MLflow links only those of the model's step), with their data
    test_acc = [m for m in logged.metrics if m.key == "test/acc"]
    assert [(m.dataset_name, m.dataset_digest) for m in test_acc] == [("synthetic test",
                                                                       run.data.tags["data.fingerprint"])]
    assert len(client.get_metric_history(run.info.run_id, "test/acc")) == 1  # the run's history holds it once
    assert str(client.get_model_version_by_alias("synth-cal", "champion").version) == "1"
    for source in (f"models:/{model_id}", "models:/synth-cal@champion", f"runs:/{run.info.run_id}/model", run_dir):
        assert resolve(source, find_checkpoint(run_dir), store) == Lineage(run.info.run_id, model_id), source
        assert read_record(find_checkpoint(source, store, tmp_path / "download"))[0]["temperature"] > 0

    run_entry_point("audioml.evaluate", f"source=models:/{model_id}", f"paths.output_dir={output}",
                    "evaluation.bootstrap_samples=0", "trainer.enable_progress_bar=false", cwd=tmp_path)
    (evaluation,) = client.search_runs([run.info.experiment_id], "tags.`audioml.kind` = 'evaluation'")
    assert evaluation.data.tags["audioml.evaluates"] == run.info.run_id
    assert evaluation.data.tags["audioml.evaluates_model"] == model_id
    trained = read_metrics(run_dir)  # the checkpoint's temperature applies: the run's own calibration numbers
    assert evaluation.data.metrics["test/nll"] == pytest.approx(trained["test/nll"], abs=1e-5)
    assert evaluation.data.metrics["test/ece"] == pytest.approx(trained["test/ece"], abs=1e-5)
    linked = [m for m in client.get_logged_model(model_id).metrics if m.key == "test/nll" and m.run_id ==
              evaluation.info.run_id]
    assert [m.dataset_name for m in linked] == ["synthetic test"]
    assert json.loads(next(output.glob("eval/*/evaluation.json")).read_text())["source"] == f"models:/{model_id}"


def test_model_uris_are_parsed_and_registration_settings_checked_before_training():
    assert parse_model_uri("models:/m-" + "a" * 32).kind == "logged"
    assert parse_model_uri("models:/cry@champion") == parse_model_uri("models:/cry/champion")
    assert parse_model_uri("models:/cry/3").kind == "version" and parse_model_uri("runs:/" + "b" * 32 + "/model").run_id
    assert parse_model_uri("outputs/runs/x") is None
    check_registration("cry", "champion")
    with pytest.raises(ValueError, match="also give logger.register_model"):
        check_registration(None, "champion")
    for bad in ("latest", "v2", "two words"):
        with pytest.raises(ValueError, match="letters, digits"):
            check_registration("cry", bad)
