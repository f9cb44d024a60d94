"""MLflow's process-wide store settings, pointed at one store for a block and put back after it,
and whether a tracking server can be reached. A module of its own, importing neither torch nor
Lightning (the report worker, ``audioml.run.finishing``, and ``audioml-compare --status`` use
it); ``audioml.run.tracking`` re-exports it."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["using_store", "process_defaults_kept", "check_reachable", "REACHABLE_TIMEOUT_SECONDS"]


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


#: How long ``check_reachable`` waits for a tracking server to accept a connection.
REACHABLE_TIMEOUT_SECONDS = 5.0


def check_reachable(uri: str, timeout: float = REACHABLE_TIMEOUT_SECONDS) -> None:
    """Raise ``ConnectionError`` naming ``uri`` when an ``http(s)://`` tracking server does not
    accept a connection within ``timeout`` seconds.

    Called before a run decodes or trains anything: MLflow's client would otherwise retry a
    closed port for about four minutes, silently, and then print a traceback. Only the
    connection is tried (a server that wants credentials is reachable). Other stores (SQLite, a
    folder, a database URI, databricks) and servers reached through a proxy
    (``HTTPS_PROXY``/``HTTP_PROXY``, not bypassed by ``NO_PROXY``) are left to MLflow.
    """
    from urllib.parse import urlsplit
    from urllib.request import getproxies, proxy_bypass

    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    if parts.scheme in getproxies() and not proxy_bypass(parts.hostname):
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    shown = f"{parts.scheme}://{parts.hostname}:{port}{parts.path}"  # without any user:password@
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            pass
    except OSError as error:
        reason = "no answer within {:g} s".format(timeout) if isinstance(error, TimeoutError) else \
            (error.strerror or str(error))
        raise ConnectionError(
            f"the MLflow tracking server {shown} cannot be reached ({reason}): start it, fix logger.tracking_uri / "
            "MLFLOW_TRACKING_URI, or unset both to log to the embedded store under paths.output_dir") from None
