"""A trained run as an MLflow model (``log_model``, at the end of training, for the best
checkpoint): what others load with ``mlflow.pyfunc.load_model``, serve with ``mlflow models serve``
and find in the Model Registry (``register_logged_model``).

The model holds the checkpoint as its one artifact and is "a model from code"
(``audioml/run/use/pyfunc_model.py``) that reads it as data; its pyfunc answers a DataFrame of
``waveform`` or ``path`` rows with ``Predictor``'s answers, and its requirements pin audioml and
every dependency as installed at training time. Use: docs/guide/trained-models.md."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

__all__ = ["AudiomlModel", "register_logged_model", "MODEL_ARTIFACT_PATH", "signature_of", "pip_requirements", "log_model"]

#: Where under its run the model is logged: ``runs:/<run id>/model``.
MODEL_ARTIFACT_PATH = "model"
#: Folders (``os.pathsep``-separated) whose files a ``path`` row may name; unset: no ``path`` rows
#: (a served model must not read whatever file a request names).
SERVING_PATHS_ENV = "AUDIOML_SERVING_PATHS"
#: The most audio one row, and one request, may carry (seconds at the rate it is sent at).
MAX_ROW_SECONDS = 600.0
MAX_REQUEST_SECONDS = 3600.0
#: The ``sample_rate`` param a request may give.
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 768_000
_CODE = Path(__file__).with_name("pyfunc_model.py")

try:
    import mlflow.pyfunc

    _PythonModel = mlflow.pyfunc.PythonModel
except ImportError:  # pragma: no cover - mlflow is a dependency; keeps the module importable for docs
    _PythonModel = object


class _CheckpointPredictor:
    """The methods of ``AudiomlModel`` (see the module docs for its input and output)."""

    def load_context(self, context) -> None:
        from audioml.run.use.inference import Predictor

        config = dict(context.model_config or {})
        self.predictor = Predictor.from_source(context.artifacts["checkpoint"], config.get("trusted_modules") or (),
                                               device=config.get("device", "auto"),
                                               batch_size=int(config.get("batch_size", 32)))

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> pd.DataFrame:
        predictor = self.predictor
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if not {"waveform", "path"} & set(frame.columns):
            raise ValueError("give a 'waveform' column (mono float samples at the model's rate) or a 'path' column "
                             f"(audio files); got columns {list(frame.columns)}")
        rate = _request_rate((params or {}).get("sample_rate"), predictor.sample_rate)
        rows, seconds_in_request = [], 0.0
        for index, row in enumerate(frame.to_dict("records")):
            path, waveform = row.get("path"), row.get("waveform")
            if isinstance(path, str) and path:
                seconds_in_request += _readable_path_seconds(path, index)
                if seconds_in_request > MAX_REQUEST_SECONDS:
                    raise ValueError(f"the request carries more than {MAX_REQUEST_SECONDS:g} s of audio: split it")
                decoded = predictor._decode(path)
                if isinstance(decoded, str):
                    raise ValueError(f"row {index}: {decoded}")
                windows, starts, seconds = decoded
                file_row, _ = predictor._rows(path, windows, starts, predictor.score_windows(windows), seconds)
            elif waveform is not None:
                audio = np.asarray(waveform, dtype=np.float32)
                if audio.ndim != 1 or audio.size == 0 or not np.isfinite(audio).all():
                    raise ValueError(f"row {index}: 'waveform' must be a non-empty list of finite mono samples")
                if audio.size / rate > MAX_ROW_SECONDS:
                    raise ValueError(f"row {index}: {audio.size / rate:.0f} s of audio at {rate} Hz; a row carries at "
                                     f"most {MAX_ROW_SECONDS:g} s (split the recording)")
                seconds_in_request += audio.size / rate
                if seconds_in_request > MAX_REQUEST_SECONDS:
                    raise ValueError(f"the request carries more than {MAX_REQUEST_SECONDS:g} s of audio: split it")
                if rate != predictor.sample_rate:
                    from audioml.data.audio import resample

                    audio = resample(audio, rate, predictor.sample_rate)
                from audioml.data.audio import AudioDecodeError

                try:
                    file_row, _ = predictor.predict_audio(audio, f"row {index}")
                except AudioDecodeError as error:
                    raise ValueError(str(error)) from None
            else:
                raise ValueError(f"row {index}: neither 'waveform' nor 'path' is given")
            rows.append({key: value for key, value in file_row.items() if key not in ("path", "seconds")})
        return pd.DataFrame(rows, columns=_output_columns(predictor.task, predictor.names))


# MLflow's PythonModel warns, as the class is made, that predict has no type hints: the model's
# explicit signature (signature_of) is what validates its input.
with warnings.catch_warnings(record=True):
    class AudiomlModel(_CheckpointPredictor, _PythonModel):
        """The pyfunc of an audioml checkpoint (see the module docs for its input and output)."""


def _request_rate(value: Any, model_rate: int) -> int:
    """The ``sample_rate`` param of a request: absent means the model's rate; otherwise a whole
    number of Hz in ``[MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]`` (0 or 1 Hz would make the resampler
    produce minutes of audio from a few samples)."""
    if value is None:
        return int(model_rate)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or \
            not MIN_SAMPLE_RATE <= int(value) <= MAX_SAMPLE_RATE:
        raise ValueError(f"sample_rate={value!r}: give the waveform's rate in Hz, a whole number from "
                         f"{MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} (or leave it out for the model's {model_rate} Hz)")
    return int(value)


def _readable_path_seconds(path: str, index: int) -> float:
    """Seconds of the file a ``path`` row names, after checking it lies inside a folder of
    ``AUDIOML_SERVING_PATHS`` and is not longer than ``MAX_ROW_SECONDS``."""
    roots = [Path(p).expanduser().resolve() for p in os.environ.get(SERVING_PATHS_ENV, "").split(os.pathsep) if p]
    resolved = Path(path).expanduser().resolve()
    if not any(resolved.is_relative_to(root) for root in roots):
        raise ValueError(f"row {index}: 'path' rows are read only inside the folders {SERVING_PATHS_ENV} lists "
                         f"({'unset here' if not roots else ', '.join(map(str, roots))}); send the samples as "
                         "'waveform', or set it where the model runs")
    from audioml.data.audio import audio_info

    try:
        seconds = audio_info(resolved)[1]
    except Exception as error:  # noqa: BLE001 - any reader's refusal is the request's problem
        raise ValueError(f"row {index}: {path}: cannot be read as audio ({error})") from None
    if seconds > MAX_ROW_SECONDS:
        raise ValueError(f"row {index}: {path} is {seconds:.0f} s long; a row carries at most {MAX_ROW_SECONDS:g} s")
    return seconds


def _output_columns(task: str, names: list[str]) -> list[str]:
    return (["predicted", *[f"p_{n}" for n in names]] if task == "classification" else list(names)) + ["windows"]


def signature_of(record: dict):
    """Input: ``waveform`` (float array) or ``path`` (string), each optional per row, and the
    ``sample_rate`` param (default: the model's); output: the answer columns."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema

    names = [str(c) for c in record["class_names"]]
    outputs = [ColSpec(DataType.double if name != "predicted" else DataType.string, name)
               for name in _output_columns(record["task"], names)[:-1]] + [ColSpec(DataType.long, "windows")]
    return ModelSignature(
        inputs=Schema([ColSpec(Array(DataType.double), "waveform", required=False),
                       ColSpec(DataType.string, "path", required=False)]),
        outputs=Schema(outputs),
        params=ParamSchema([ParamSpec("sample_rate", DataType.long, int(record["decoder"]["sample_rate"]))]))


#: The run's final numbers, linked to its logged model (``_link_final_metrics``).
LINKED_METRICS = ("test/", "val/best_", "baseline/", "permutation/", "calibration/")


def _link_final_metrics(client, run_id: str, model_id: str) -> None:
    """Link the run's final numbers (``LINKED_METRICS``) to its MLflow 3 logged model, with the
    data they were scored on (``audioml.data``, ``data.fingerprint`` tags). MLflow links only
    the metrics at the model's step (0: the first epoch's), which misses the test metrics
    Lightning logs at the last step. Each is logged again as it is (same value, step and time),
    which the store keeps once in the run's history and adds to the model's metrics."""
    from mlflow.entities import Metric

    run = client.get_run(run_id)
    linked = {m.key for m in client.get_logged_model(model_id).metrics or []}
    data, digest = run.data.tags.get("audioml.data"), run.data.tags.get("data.fingerprint")
    dataset = {"dataset_name": f"{data} test", "dataset_digest": digest} if data and digest else {}
    metrics = []
    for key in sorted(run.data.metrics):
        if key.startswith(LINKED_METRICS) and key not in linked:
            last = max(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
            metrics.append(Metric(key, last.value, last.timestamp, last.step, model_id=model_id,
                                  **(dataset if key.startswith(("test/", "baseline/", "permutation/")) else {})))
    for start in range(0, len(metrics), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=metrics[start:start + 1000])


@functools.lru_cache(maxsize=1)  # the installed versions do not change within a process (a sweep)
def _pinned_requirements() -> tuple[str, ...]:
    return tuple(_pin_requirements())


def pip_requirements() -> list[str]:
    """audioml and each of its dependencies pinned to the version installed here."""
    return list(_pinned_requirements())


def _pin_requirements() -> list[str]:
    from packaging.requirements import Requirement

    pinned = [f"audioml=={metadata.version('audioml')}"]
    for text in metadata.requires("audioml") or []:
        requirement = Requirement(text)
        if requirement.marker is not None and "extra" in str(requirement.marker):
            continue
        try:
            pinned.append(f"{requirement.name}=={metadata.version(requirement.name)}")
        except metadata.PackageNotFoundError:
            pinned.append(str(requirement))
    return pinned


def register_logged_model(run_id: str, tracking_uri: str, name: str, alias: str | None = None) -> int:
    """Register the MLflow model that run ``run_id`` logged as ``name`` (no new version when one
    of ``name`` already comes from this run), that version aliased ``alias``; returns the version.
    Raises ``LookupError`` when the run logged no model (``logger.log_model=false``)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    outputs = getattr(client.get_run(run_id).outputs, "model_outputs", None) or []
    if not outputs:
        raise LookupError(f"MLflow run {run_id} logged no model (logger.log_model=false when it trained): nothing to "
                          "register; train it again with logger.log_model=true")
    model_id = outputs[-1].model_id
    existing = [v for v in client.search_model_versions(f"name='{name}'") if v.run_id == run_id]
    if existing:
        version = max(int(v.version) for v in existing)
        log.info("MLflow run %s is registered as %r version %d already", run_id, name, version)
    else:
        try:
            client.create_registered_model(name)
        except Exception:  # noqa: BLE001 - it exists: MLflow raises RESOURCE_ALREADY_EXISTS
            pass
        from audioml.run.record.store import using_store

        with using_store(tracking_uri):  # MLflow resolves the models:/ source through the process's store
            created = client.create_model_version(name, f"models:/{model_id}", run_id=run_id, model_id=model_id,
                                                  await_creation_for=60)
        version = int(created.version)
        log.info("MLflow model of run %s registered as %r version %d: models:/%s/%d", run_id, name, version, name,
                 version)
    if alias:
        client.set_registered_model_alias(name, alias, str(version))
        log.info("models:/%s@%s is version %d", name, alias, version)
    return version


def _extra_requirements(record: dict) -> list[str]:
    """The optional packages the recorded model needs to answer: openSMILE for a head with
    ``extra_features`` (pinned to the version installed here)."""
    head = (record.get("model") or {}).get("head")
    if not isinstance(head, dict) or not head.get("extra_features"):
        return []
    try:
        return [f"opensmile=={metadata.version('opensmile')}"]
    except metadata.PackageNotFoundError:
        return ["opensmile"]


def log_model(run_id: str, tracking_uri: str, checkpoint: str | Path, record: dict,
              registered_model_name: str | None = None, trusted_modules: list[str] | None = None,
              register_alias: str | None = None) -> str:
    """Log ``checkpoint`` as the MLflow model of run ``run_id``: an MLflow 3 logged model
    (``models:/m-<id>``, the run's output ``runs:/<run id>/model``; MLflow links the run's
    metrics and params to it), tagged with what audioml knows of it (task, classes, temperature)
    and named in the run's tag ``audioml.model_id``; registered as ``registered_model_name`` when
    given, that version aliased ``register_alias``. Returns the model URI (``models:/m-<id>``)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a log line says it is done
    import mlflow

    from audioml.run.record.store import using_store

    with using_store(tracking_uri), tempfile.TemporaryDirectory() as scratch:
        # the artifact under a stable name: the model directory always holds artifacts/model.ckpt
        stable = Path(scratch) / "model.ckpt"
        try:  # a hard link costs nothing; MLflow refuses symbolic links out of the folder
            os.link(checkpoint, stable)
        except OSError:
            shutil.copyfile(checkpoint, stable)
        client = mlflow.MlflowClient()
        status = client.get_run(run_id).info.status
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT_PATH, python_model=str(_CODE), artifacts={"checkpoint": str(stable)},
                signature=signature_of(record), pip_requirements=pip_requirements() + _extra_requirements(record),
                model_config={"trusted_modules": list(trusted_modules or []), "device": "auto"},
                registered_model_name=registered_model_name, await_registration_for=60)
        client.update_run(run_id, status=status)  # the run ends when training says so, not here
        client.set_logged_model_tags(info.model_id, {
            "audioml.task": record["task"], "audioml.classes": ",".join(str(c) for c in record["class_names"]),
            **({"audioml.temperature": str(record["temperature"])} if record.get("temperature") else {})})
        client.set_tag(run_id, "audioml.model_id", info.model_id)
        _link_final_metrics(client, run_id, info.model_id)
        if registered_model_name and register_alias:
            client.set_registered_model_alias(registered_model_name, register_alias, info.registered_model_version)
    registered = ""
    if registered_model_name:
        registered = f", registered as {registered_model_name!r} version {info.registered_model_version}" + (
            f" (models:/{registered_model_name}@{register_alias})" if register_alias else "")
    log.info("MLflow model logged: runs:/%s/%s = models:/%s%s", run_id, MODEL_ARTIFACT_PATH, info.model_id, registered)
    return info.model_uri
