"""A tracking server that never answers, or dies mid-run (issue 35, 3j): every command fails in
seconds naming it, MLflow's own requests are bounded, and a store lost mid-run does not stop the
training: the points are kept, the run ends saying what to do, and the rerun completes the record."""

from __future__ import annotations

import os

import pytest
from helpers.servers import HangingServer, start_mlflow_server, stop_mlflow_server
from mlflow import MlflowClient

from audioml.api import compose_config, train
from audioml.run.fit.training import TrackingStoreError
from audioml.run.record.store import HTTP_DEFAULTS, check_reachable

TINY = ["data=synthetic", "model=cnn", "model.backbone.channels=[8,16]", "model.backbone.dense=16",
        "data.num_workers=0", "trainer.enable_progress_bar=false", "logger.system_metrics=false"]


@pytest.mark.timeout(180)  # a hang fails the test instead of the suite (no timed assertion: the refusal says why)
def test_a_server_that_accepts_and_never_answers_is_refused_in_seconds(tmp_path, monkeypatch, capsys):
    from audioml.compare import main as compare

    for name in HTTP_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    with HangingServer() as hanging:
        with pytest.raises(ConnectionError, match="accepts connections but does not answer within 1 s"):
            check_reachable(hanging.url, timeout=1)
        assert {name: os.environ[name] for name in HTTP_DEFAULTS} == HTTP_DEFAULTS  # MLflow's requests bounded
        cfg = compose_config([*TINY, f"paths.output_dir={tmp_path}", f"logger.tracking_uri={hanging.url}"])
        with pytest.raises(ConnectionError, match=hanging.url):
            train(cfg)
        assert not (tmp_path / "cache").exists()  # refused before anything was decoded
        assert compare(["--experiment", "synthetic", "--tracking-uri", hanging.url]) == 2
        assert "does not answer" in capsys.readouterr().err


@pytest.mark.slow  # two mlflow server starts and two short runs (about a minute)
def test_a_store_lost_mid_run_does_not_stop_training_and_the_rerun_completes_its_record(tmp_path, caplog):
    process, url = start_mlflow_server(tmp_path)
    overrides = [*TINY, "trainer.max_epochs=4", f"paths.output_dir={tmp_path / 'out'}", f"logger.tracking_uri={url}"]
    stop = ["+callbacks.stop_server._target_=helpers.callbacks.StopServerAfterEpoch",
            f"+callbacks.stop_server.pid={process.pid}", "+callbacks.stop_server.epoch=1"]
    overrides += stop  # the rerun is the same command (the old server's group is gone by then)
    with pytest.raises(TrackingStoreError, match="rerun the same command once it answers"):
        train(compose_config(overrides))
    process.wait(timeout=60)
    assert "training goes on" in caplog.text
    run_dir = next((tmp_path / "out" / "runs").glob("*/metrics.json")).parent
    assert not (run_dir / "DONE").exists()
    port = int(url.rsplit(":", 1)[1])
    process, url = start_mlflow_server(tmp_path, port=port)
    try:
        metrics, again = train(compose_config(overrides))
        assert again == run_dir and (run_dir / "DONE").is_file()
        client = MlflowClient(url)
        run = client.get_run((run_dir / "mlflow_run_id").read_text().strip())
        assert run.info.status == "FINISHED" and "test/acc" in run.data.metrics
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert sorted(steps) == [0, 1, 2, 3]  # the points kept while the store was gone, each once
    finally:
        stop_mlflow_server(process)
