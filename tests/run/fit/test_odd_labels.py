"""A class label MLflow cannot take as part of a metric name (``a//b``, ``..``) trains, tests and
logs like any other (issue 35, 3l): per-class metrics use a safe form of the name."""

from __future__ import annotations

import numpy as np
import pandas as pd
import soundfile as sf
from mlflow import MlflowClient

from audioml.api import compose_config, train
from audioml.stats import metric_name_parts


def test_metric_name_parts_are_safe_and_distinct():
    assert metric_name_parts(["belly pain", "a//b", "..", "a__b", "a_b"]) == ["belly_pain", "a_b", "class", "a__b",
                                                                              "a_b_2"]


def test_labels_with_slashes_and_dots_train_and_reach_mlflow(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    (tmp_path / "clips").mkdir()
    for index in range(24):
        label = ("cats//house", "dogs/../yard", "birds")[index % 3]
        audio = 0.2 * np.sin(np.arange(4000) * (0.05 + 0.05 * (index % 3))) + 0.01 * rng.standard_normal(4000)
        sf.write(tmp_path / "clips" / f"c{index}.wav", audio.astype(np.float32), 8000)
        rows.append({"path": f"clips/c{index}.wav", "label": label, "group": f"g{index % 8}"})
    pd.DataFrame(rows).to_csv(tmp_path / "clips.csv", index=False)
    cfg = compose_config(["data=csv", f"data.csv={tmp_path / 'clips.csv'}", "data.clip_seconds=0.5",
                          "model=cnn", "model.sample_rate=8000", "model.backbone.channels=[8,16]",
                          "model.backbone.dense=16", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                          "data.num_workers=0", f"paths.output_dir={tmp_path / 'out'}"])
    metrics, run_dir = train(cfg)
    assert {"test/recall_cats_house", "test/recall_dogs_._yard", "test/recall_birds"} <= set(metrics)
    assert (run_dir / "DONE").is_file()
    client = MlflowClient(f"sqlite:///{tmp_path / 'out' / 'mlflow' / 'mlflow.db'}")
    logged = client.get_run((run_dir / "mlflow_run_id").read_text().strip())
    assert logged.info.status == "FINISHED" and "test/recall_cats_house" in logged.data.metrics
