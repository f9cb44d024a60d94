"""Shared fixtures: the real samples in ../shared (skipped per test when absent), a report worker
of a test's own, MLflow's process defaults put back after each test. Generators, servers and
entry-point runners are in ``tests/helpers``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers.runners import SHARED, find_run_dirs, run_entry_point

from audioml.config import register_resolvers

register_resolvers()  # tests compose configs themselves; the entry points register it on start


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; tests using it are skipped when it is absent."""
    path = SHARED / "data"
    if not path.is_dir():
        pytest.skip(f"real data samples not present at {path}")
    return path


@pytest.fixture(scope="session")
def shared_weights() -> Path:
    path = SHARED / "weights"
    if not path.is_dir():
        pytest.skip(f"real pretrained weights not present at {path}")
    return path


@pytest.fixture()
def fresh_worker(monkeypatch: pytest.MonkeyPatch):
    """A report worker (``audioml.run.figures.drawing``) of this test's own (the module keeps one per process)."""
    from audioml.run.figures import drawing as figures

    monkeypatch.setenv(figures.WORKER_ENV, "1")
    monkeypatch.setattr(figures, "worker_enabled", lambda: True)
    monkeypatch.setattr(figures, "_worker", None)
    monkeypatch.setattr(figures, "_worker_failed", False)
    monkeypatch.setattr(figures, "_pending", {})
    yield
    if figures._worker is not None:
        figures._worker.close()


@pytest.fixture(autouse=True)
def _mlflow_process_defaults():
    """Each test starts from the same MLflow defaults: a test that points the fluent API at its
    own store (``mlflow.set_tracking_uri`` also exports ``MLFLOW_TRACKING_URI``) must not send
    the next test's in-process runs there. audioml itself restores them (``tracking.using_store``;
    asserted in test_reliability and test_tracking)."""
    from mlflow.tracking._model_registry import utils as registry
    from mlflow.tracking._tracking_service import utils as tracking

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    environment = {name: os.environ.get(name) for name in names}
    before = tracking._tracking_uri, registry._registry_uri
    yield
    tracking._tracking_uri, registry._registry_uri = before
    for name, value in environment.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


TINY = ["data=synthetic", "model=cnn", "model.backbone.channels=[8,16]", "model.backbone.dense=16",
        "data.num_workers=0", "trainer.enable_progress_bar=false", "trainer.max_epochs=1"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """``(output_dir, run_dir, best checkpoint)`` of a 1-epoch scratch CNN on synthetic tones."""
    output = tmp_path_factory.mktemp("tiny_run") / "out"
    run_entry_point("audioml.train", *TINY, f"paths.output_dir={output}")
    (run_dir,) = find_run_dirs(output)
    return output, run_dir, next((run_dir / "checkpoints").glob("best-*.ckpt"))


@pytest.fixture()
def compute_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Clips embedded by each call of ``compute_embeddings`` (the real function, counted)."""
    import audioml.models.embedding_cache as embedding_cache

    calls: list[int] = []
    real = embedding_cache.compute_embeddings

    def counting(frontend, backbone, dataset, out, *args, **kwargs):
        calls.append(len(dataset))
        return real(frontend, backbone, dataset, out, *args, **kwargs)

    monkeypatch.setattr(embedding_cache, "compute_embeddings", counting)
    return calls
