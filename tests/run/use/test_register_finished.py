"""Register-then-predict (issue 30, 5): ``logger.register_model=<name>`` added to the command of a
run that finished registers its MLflow model without training again, once; predicting from
``models:/<name>/1`` works right after."""

from __future__ import annotations

from conftest import TINY
from mlflow import MlflowClient

from audioml.api import compose_config, train
from audioml.run.use.inference import Predictor


def test_registering_a_finished_run_needs_no_retraining(tiny_run, tmp_path):
    output, run_dir, _ = tiny_run
    store = f"sqlite:///{output / 'mlflow' / 'mlflow.db'}"
    checkpoints = sorted(p.stat().st_mtime_ns for p in (run_dir / "checkpoints").iterdir())
    for _ in range(2):  # the second time: the version exists, none is added
        metrics, again = train(compose_config([*TINY, f"paths.output_dir={output}", "logger.register_model=tiny-synth",
                                               "logger.register_alias=champion"]))
        assert again == run_dir and "test/acc" in metrics
    assert sorted(p.stat().st_mtime_ns for p in (run_dir / "checkpoints").iterdir()) == checkpoints  # not trained
    client = MlflowClient(store, registry_uri=store)
    versions = client.search_model_versions("name='tiny-synth'")
    assert [str(v.version) for v in versions] == ["1"] and versions[0].run_id == (run_dir / "mlflow_run_id").read_text()
    clip = next((output / "cache").glob("synthetic-*/class_0/*.wav"))
    for source in ("models:/tiny-synth/1", "models:/tiny-synth@champion"):
        answers = Predictor.from_source(source, tracking_uri=store, download_dir=tmp_path / source[-1],
                                        device="cpu").predict_files([clip], progress=False)
        assert len(answers.files) == 1
