"""`audioml-train data=donateacry model=efficientat_mn04` on the real corpus and the real weights,
on CPU: with the backbone frozen (head only, on cached embeddings) and fine-tuned end to end.
Slow (minutes on two cores); run with ``pytest -m slow``."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers.runners import find_run_dirs, read_metrics, run_entry_point

WEIGHTS_FILE = "mn04_as_mAP_432.pt"


@pytest.mark.slow
@pytest.mark.parametrize("freeze, epochs", [("all", 8), ("none", 2)])
def test_train_efficientat_on_donateacry(shared_data: Path, shared_weights: Path, tmp_path: Path,
                                         freeze: str, epochs: int) -> None:
    weights_dir = shared_weights / "efficientat-mn04"
    if not (weights_dir / WEIGHTS_FILE).is_file():
        pytest.skip(f"{WEIGHTS_FILE} not in {weights_dir}")
    started = time.perf_counter()
    run_entry_point("audioml.train", "data=donateacry", "model=efficientat_mn04", f"model.freeze={freeze}",
                    "trainer=cpu", f"trainer.max_epochs={epochs}", "trainer.enable_progress_bar=false",
                    f"paths.output_dir={tmp_path}", timeout=3600,
                    env={"AUDIOML_DATA_DIR": str(shared_data), "AUDIOML_WEIGHTS_DIR": str(weights_dir)})
    (run_dir,) = find_run_dirs(tmp_path)
    metrics = read_metrics(run_dir)
    print(f"freeze={freeze}: {time.perf_counter() - started:.0f}s, "
          + ", ".join(f"{k}={metrics[k]:.3f}" for k in ("test/acc", "test/balanced_acc", "test/macro_f1")))
    assert {"test/acc", "test/macro_f1", "test/recall_hungry", "test/f1_belly_pain"} <= set(metrics)
    assert all(math.isfinite(v) for v in metrics.values())
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["data"]["sample_rate"] == 32000 and config["model"]["backbone"]["weights_dir"] == str(weights_dir)

    # The run started from the published weights: frozen layers still equal them, fine-tuned
    # ones moved away from them.
    published = torch.load(weights_dir / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    key = "features.12.block.0.0.weight"
    unchanged = torch.equal(state[f"backbone.{key}"], published[key])
    assert unchanged == (freeze == "all")
    assert state["backbone.head.fc.weight"].shape == (5, 384)
