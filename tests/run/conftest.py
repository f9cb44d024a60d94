"""A tiny trained run shared by the run-layer tests that only read it (checkpoints, records)."""

from __future__ import annotations

import pytest
from helpers.runners import find_run_dirs, run_entry_point

TINY = ["data=synthetic", "model=cnn", "model.backbone.channels=[8,16]", "model.backbone.dense=16",
        "data.num_workers=0", "trainer.enable_progress_bar=false", "trainer.max_epochs=1"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """``(output_dir, run_dir, best checkpoint)`` of a 1-epoch scratch CNN on synthetic tones."""
    output = tmp_path_factory.mktemp("tiny_run") / "out"
    run_entry_point("audioml.train", *TINY, f"paths.output_dir={output}")
    (run_dir,) = find_run_dirs(output)
    return output, run_dir, next((run_dir / "checkpoints").glob("best-*.ckpt"))
