"""MLflow's process-wide store settings, pointed at one store for a block and put back after it.
A module of its own, importing neither torch nor Lightning (the report worker,
``audioml.run.finishing``, uses it); ``audioml.run.tracking`` re-exports it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["using_store", "process_defaults_kept"]


@contextmanager
def process_defaults_kept() -> Iterator[None]:
    """Put MLflow's process-wide store settings back as they were after the block:
    ``mlflow.set_tracking_uri`` (also called by Lightning's ``MLFlowLogger``) is process-global
    and exports ``MLFLOW_TRACKING_URI`` / ``MLFLOW_REGISTRY_URI``. Left set, the next run in the
    same process (a sweep's next job, a notebook's next cell) would log into this store instead
    of its own."""
    from mlflow.tracking._model_registry import utils as registry
    from mlflow.tracking._tracking_service import utils as tracking

    environment = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    tracking_before, registry_before = tracking._tracking_uri, registry._registry_uri
    try:
        yield
    finally:
        # the module globals directly: set_tracking_uri(None) would also reset MLflow's tracer
        tracking._tracking_uri, registry._registry_uri = tracking_before, registry_before
        for name, value in environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def using_store(uri: str) -> Iterator[None]:
    """MLflow's fluent API (``mlflow.pyfunc.log_model``, ``mlflow.start_run``) pointed at
    ``uri`` for the block, then put back as it was (``process_defaults_kept``)."""
    import mlflow

    with process_defaults_kept():
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        yield


