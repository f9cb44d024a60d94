"""MLflow 3 model lineage: which training run and which logged model a model source names.

Every MLflow model audioml logs is an MLflow 3 *logged model* (``models:/m-<id>``), the output
of its training run (``runs:/<run id>/model``), with the run's metrics and params linked; a
registered version (``models:/<name>/<version>``, ``models:/<name>@<alias>``) points at it.
``resolve`` answers, for any of these URIs and for run directories and checkpoint files, the
training run and the logged model, so evaluations link their metrics to the model they scored
(``audioml.run.use.inference.log_evaluation``). ``check_registration`` refuses a registration
setting before training (an alias needs a registered name; MLflow's alias rules).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["ModelUri", "Lineage", "parse_model_uri", "resolve", "check_registration"]

_LOGGED = re.compile(r"^models:/(m-[0-9a-f]{32})/?$")
_ALIAS = re.compile(r"^models:/([^/@]+)@([\w\-]+)/?$")
_VERSION = re.compile(r"^models:/([^/@]+)/([^/]+)/?$")
_RUN = re.compile(r"^runs:/([0-9a-f]{32})/([^/].*?)/?$")
_ALIAS_NAME = re.compile(r"^[\w\-]{1,255}$")


@dataclass(frozen=True)
class ModelUri:
    """A parsed MLflow model URI: ``kind`` is ``logged`` (``models:/m-<id>``, ``model_id``),
    ``version`` / ``alias`` (``models:/<name>/<version>``, ``models:/<name>@<alias>`` and the
    older ``models:/<name>/<alias>``: ``name``, ``reference``) or ``run`` (``runs:/<id>/<path>``:
    ``run_id``, ``reference`` = the artifact path)."""

    kind: str
    model_id: str | None = None
    name: str | None = None
    reference: str | None = None
    run_id: str | None = None


@dataclass(frozen=True)
class Lineage:
    """The training run and logged model behind a model source (``None`` where not found)."""

    run_id: str | None
    model_id: str | None


def parse_model_uri(text: str) -> ModelUri | None:
    """The ``ModelUri`` of ``text``, or ``None`` when it is not a ``models:/`` or ``runs:/`` URI."""
    if found := _LOGGED.match(text):
        return ModelUri("logged", model_id=found.group(1))
    if found := _ALIAS.match(text):
        return ModelUri("alias", name=found.group(1), reference=found.group(2))
    if found := _VERSION.match(text):
        version = found.group(2)
        return ModelUri("version" if version.isdigit() else "alias", name=found.group(1), reference=version)
    if found := _RUN.match(text):
        return ModelUri("run", run_id=found.group(1), reference=found.group(2))
    return None


def resolve(source: str | Path, checkpoint: Path | None, tracking_uri: str) -> Lineage:
    """The training run and logged model behind ``source``: a model URI (``parse_model_uri``)
    looked up in ``tracking_uri``, or the ``mlflow_run_id`` of the run directory holding
    ``checkpoint`` (``<run dir>/checkpoints/<file>``) and that run's logged model. Nothing
    found (another store, MLflow off) gives ``None`` parts, never an error."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    parsed = parse_model_uri(str(source))
    try:
        if parsed is not None and parsed.kind == "logged":
            return Lineage(client.get_logged_model(parsed.model_id).source_run_id, parsed.model_id)
        if parsed is not None and parsed.kind in ("version", "alias"):
            version = client.get_model_version(parsed.name, parsed.reference) if parsed.kind == "version" else \
                client.get_model_version_by_alias(parsed.name, parsed.reference)
            model_id = getattr(version, "model_id", None) or (_logged_id(version.source) if version.source else None)
            return Lineage(version.run_id, model_id)
        if parsed is not None:  # runs:/<id>/<path>
            return Lineage(parsed.run_id, _run_model_id(client, parsed.run_id, parsed.reference))
        if checkpoint is None:
            return Lineage(None, None)
        from audioml.run.rundir import RunDir

        run_id = RunDir.of_checkpoint(checkpoint).run_id()
        return Lineage(run_id, _run_model_id(client, run_id, "model") if run_id else None)
    except MlflowException as error:
        log.debug("lineage of %s not found in %s: %s", source, tracking_uri, error)
        return Lineage(parsed.run_id if parsed is not None else None, None)


def _logged_id(uri: str) -> str | None:
    found = _LOGGED.match(uri)
    return found.group(1) if found else None


def _run_model_id(client, run_id: str, name: str) -> str | None:
    """The logged model named ``name`` that run ``run_id`` output (MLflow 3), if any."""
    outputs = getattr(client.get_run(run_id), "outputs", None)
    for output in getattr(outputs, "model_outputs", None) or []:
        if client.get_logged_model(output.model_id).name == name:
            return output.model_id
    return None


def check_registration(register_model: str | None, register_alias: str | None) -> None:
    """Refuse ``logger.register_alias`` without ``logger.register_model``, or an alias MLflow
    would refuse after training (``ValueError`` saying what to give)."""
    if register_alias is None:
        return
    if not register_model:
        raise ValueError(f"logger.register_alias={register_alias} names an alias of a registered version: also give "
                         "logger.register_model=<name>")
    alias = str(register_alias)
    if not _ALIAS_NAME.match(alias) or alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise ValueError(f"logger.register_alias={alias}: an alias is letters, digits, '_' and '-', and not 'latest' "
                         "or v<number> (MLflow reserves those), e.g. logger.register_alias=champion")
