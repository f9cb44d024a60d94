"""Which MLflow store a command records into (``Store``), MLflow's process-wide store settings
pointed at one store for a block and put back after it, and whether a tracking server answers.
Imports neither torch nor Lightning (the report worker and ``audioml-compare --status`` use it)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Store", "using_store", "process_defaults_kept", "check_reachable", "REACHABLE_TIMEOUT_SECONDS",
           "bound_http_requests", "HTTP_DEFAULTS"]


@dataclass(frozen=True)
class Store:
    """The MLflow store a command records into: ``uri``, and where the experiments audioml
    creates in its embedded store keep their artifacts (``None`` for another store: its own)."""

    uri: str
    artifact_location: str | None = None

    @staticmethod
    def named(tracking_uri: str | None) -> str | None:
        """The store a command names (``logger.tracking_uri``, else ``MLFLOW_TRACKING_URI``), or
        ``None`` for the embedded one; touches nothing."""
        return str(tracking_uri) if tracking_uri else os.environ.get("MLFLOW_TRACKING_URI") or None

    @classmethod
    def of(cls, tracking_uri: str | None, mlflow_dir: str | Path) -> Store:
        """The store :meth:`named`, else the embedded SQLite store ``<mlflow_dir>/mlflow.db``
        (its folder created; no server needed)."""
        if named := cls.named(tracking_uri):
            return cls(named)
        folder = Path(mlflow_dir).expanduser().resolve()
        folder.mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri())

    @property
    def browse(self) -> str:
        """How to look at it: the ``mlflow ui`` command of an embedded store, else its address."""
        return f"mlflow ui --backend-store-uri {self.uri}" if self.uri.startswith("sqlite:") else f"open {self.uri}"


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


#: How long ``check_reachable`` waits for a tracking server to accept a connection and to answer.
REACHABLE_TIMEOUT_SECONDS = 5.0
#: MLflow's HTTP settings while audioml talks to a tracking server, where the user set none: a
#: request times out after 20 s and is tried three times in all. MLflow's own defaults (120 s, 7
#: retries with exponential backoff) let a server that stopped answering hold a run for minutes.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "20", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5"}


def bound_http_requests() -> None:
    """Set ``HTTP_DEFAULTS`` in this process's environment, each unless the user set it (MLflow
    reads them at every request)."""
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


def check_reachable(uri: str, timeout: float = REACHABLE_TIMEOUT_SECONDS) -> None:
    """Raise ``ConnectionError`` naming ``uri`` when an ``http(s)://`` tracking server does not
    accept a connection within ``timeout`` seconds.

    Called before a run decodes or trains anything: MLflow's client would otherwise retry a
    closed port for about four minutes, silently, and then print a traceback. The connection is
    tried, then ``GET <uri>/health``: any HTTP answer counts (a server that wants credentials is
    reachable), no answer within ``timeout`` (a server that accepts connections and hangs) is
    refused too. Also bounds MLflow's own requests to this server (``bound_http_requests``).
    Other stores (SQLite, a folder, a database URI, databricks) and servers reached through a
    proxy (``HTTPS_PROXY``/``HTTP_PROXY``, not bypassed by ``NO_PROXY``) are left to MLflow.
    """
    from urllib.parse import urlsplit
    from urllib.request import getproxies, proxy_bypass

    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    bound_http_requests()
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
    _check_answers(shown, timeout)


def _check_answers(shown: str, timeout: float) -> None:
    """Any HTTP answer to ``GET <server>/health`` within ``timeout``; else ``ConnectionError``."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(shown.rstrip("/") + "/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # it answered (401 without credentials, 404 behind a path prefix): reachable
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        hung = isinstance(reason, TimeoutError) or "timed out" in str(reason)
        raise ConnectionError(
            f"the MLflow tracking server {shown} " + (f"accepts connections but does not answer within {timeout:g} s"
                                                       if hung else f"does not answer ({reason})")
            + ": restart it, fix logger.tracking_uri / MLFLOW_TRACKING_URI, or unset both to log to the embedded "
            "store under paths.output_dir") from None
