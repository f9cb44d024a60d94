"""Shared fixtures: the real samples in ../shared (skipped per test when absent) and a
subprocess runner for the entry points (real Hydra, real Trainer, real MLflow store)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from audioml.config import register_resolvers

register_resolvers()  # tests compose configs themselves; the entry points register it on start

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AUDIOML_SHARED", REPO.parent / "shared"))


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
    """A report worker (``audioml.figures``) of this test's own (the module keeps one per process)."""
    from audioml import figures

    monkeypatch.setenv(figures.WORKER_ENV, "1")
    monkeypatch.setattr(figures, "worker_enabled", lambda: True)
    monkeypatch.setattr(figures, "_worker", None)
    monkeypatch.setattr(figures, "_worker_failed", False)
    monkeypatch.setattr(figures, "_pending", {})
    yield
    if figures._worker is not None:
        figures._worker.close()


def run_entry_point(module: str, *overrides: str, cwd: Path | None = None, env: dict | None = None,
                    timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m <module> <overrides>`` and return the finished process."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "AUDIOML_CONFIG_PATH")}
    full_env.update({"PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1", **(env or {})})
    process = subprocess.run([sys.executable, "-m", module, *overrides], cwd=cwd or REPO, env=full_env,
                             capture_output=True, text=True, timeout=timeout)
    if check and process.returncode != 0:
        raise AssertionError(f"{module} {' '.join(overrides)} failed ({process.returncode}):\n"
                             f"{process.stdout[-4000:]}\n{process.stderr[-6000:]}")
    return process


def find_run_dirs(output_dir: Path) -> list[Path]:
    """Run directories (those holding a config.yaml) under ``output_dir/runs``."""
    return sorted(p.parent for p in (output_dir / "runs").glob("*/config.yaml"))


def read_metrics(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "metrics.json").read_text())


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
