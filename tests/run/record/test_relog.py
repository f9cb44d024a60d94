"""A finished run rerun with only its MLflow store changed (``logger.tracking_uri``): said, nothing
logged there; with ``logger.relog=true`` copied there (params, metric histories, artifacts, the
model), once; rebuilt from the run directory when the first store is gone. Real runs, two (three)
real SQLite stores."""

from __future__ import annotations

import json
import logging

import pytest
from mlflow import MlflowClient

from audioml.api import train
from audioml.config import compose_config
from audioml.run.use.inference import find_checkpoint

TINY = ["data=synthetic", "model=cnn", "model.backbone.channels=[8,16]", "model.backbone.dense=16",
        "trainer.max_epochs=2", "trainer.enable_progress_bar=false", "data.num_workers=0",
        "evaluation.bootstrap_samples=20"]


def _runs(uri: str):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("synthetic")
    return client, ([] if experiment is None else client.search_runs([experiment.experiment_id]))


@pytest.fixture()
def finished_in_a(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)  # MLflow puts the artifacts of an explicit SQLite store under ./mlruns
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    caplog.set_level(logging.INFO, logger="audioml")

    def run(store: str, *extra: str):
        cfg = compose_config([*TINY, f"paths.output_dir={tmp_path / 'out'}",
                              f"logger.tracking_uri=sqlite:///{tmp_path / store}", *extra])
        return train(cfg)  # in the run directory the config names, as audioml-train

    metrics, run_dir = run("a.db")
    return run, run_dir, metrics, f"sqlite:///{tmp_path / 'a.db'}"


def test_a_finished_run_is_copied_into_a_new_store_only_when_asked(finished_in_a, tmp_path, caplog):
    run, run_dir, metrics, uri_a = finished_in_a
    uri_b = f"sqlite:///{tmp_path / 'b.db'}"
    client_a, (original,) = _runs(uri_a)

    caplog.clear()
    again, _ = run("b.db")  # only where results go changed: skipped as finished, said, nothing logged in b
    assert again == metrics
    assert f"MLflow run {original.info.run_id} in {uri_a}" in caplog.text and uri_b in caplog.text
    assert "nothing is logged there" in caplog.text and "logger.relog=true" in caplog.text
    assert _runs(uri_b)[1] == []

    caplog.clear()
    run("b.db", "logger.relog=true")
    client_b, (copy,) = _runs(uri_b)
    assert f"copied into {uri_b} as MLflow run {copy.info.run_id}" in caplog.text
    assert copy.info.status == "FINISHED" and copy.info.run_name == original.info.run_name
    assert copy.data.tags["audioml.copy_of"] == original.info.run_id
    assert copy.data.params == original.data.params and copy.data.metrics == original.data.metrics
    assert all(copy.data.metrics[k] == pytest.approx(v) for k, v in metrics.items())  # metrics.json's numbers
    for key in ("train/loss", "val/loss", "val/macro_f1"):  # the history, epoch by epoch
        assert [(m.step, m.value) for m in client_b.get_metric_history(copy.info.run_id, key)] == \
            [(m.step, m.value) for m in client_a.get_metric_history(original.info.run_id, key)], key
    artifacts = {a.path for a in client_b.list_artifacts(copy.info.run_id)}
    assert {"config.yaml", "metrics.json", "confusion_matrix.png", "learning_curves.csv", "checkpoints"} <= artifacts
    tested = json.loads((run_dir / "tested_checkpoint.json").read_text())["checkpoint"]
    assert [a.path for a in client_b.list_artifacts(copy.info.run_id, "checkpoints")] == [tested]
    model_checkpoint = find_checkpoint(f"runs:/{copy.info.run_id}/model", uri_b, tmp_path / "model")
    assert model_checkpoint.read_bytes() == (run_dir / tested).read_bytes()  # the model serves the tested weights

    caplog.clear()
    run("b.db", "logger.relog=true")  # copied once: found again, not copied twice
    assert len(_runs(uri_b)[1]) == 1 and "copied into" not in caplog.text
    assert len(_runs(uri_a)[1]) == 1  # the original is left as it was


def test_a_run_whose_store_is_gone_is_rebuilt_from_its_directory(finished_in_a, tmp_path, caplog):
    run, run_dir, metrics, uri_a = finished_in_a
    (tmp_path / "a.db").unlink()  # the first store is gone (a laptop's embedded store, a wiped server)
    caplog.clear()
    run("c.db", "logger.relog=true", "logger.log_model=false")
    assert "cannot be read" not in caplog.text  # a missing file is not opened (that would create it)
    client, (copy,) = _runs(f"sqlite:///{tmp_path / 'c.db'}")
    assert copy.info.status == "FINISHED" and "rebuilt from the run directory" in copy.data.tags["audioml.copy_note"]
    assert copy.data.params["model.backbone.dense"] == "16" and copy.data.tags["path.paths.run_dir"] == str(run_dir)
    assert all(copy.data.metrics[k] == pytest.approx(v) for k, v in metrics.items())
    assert [m.step for m in client.get_metric_history(copy.info.run_id, "train/loss")] == [0, 1]
    artifacts = {a.path for a in client.list_artifacts(copy.info.run_id)}
    assert {"config.yaml", "metrics.json", "tested_checkpoint.json", "confusion_matrix.png", "checkpoints"} <= artifacts
