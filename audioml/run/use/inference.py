"""Using a trained model: rebuild it from its checkpoint (``audioml.run.use.checkpoint``: the model
record, checked before anything runs), test it on a split of its data (``evaluate_checkpoint``)
or score recordings (``Predictor``).

``find_checkpoint`` takes a checkpoint file, a run directory, an MLflow model folder, a logged or
registered model or a run (``runs:/``, ``models:/``); what is read is always the checkpoint, as
data. Recordings go through the training data's decoder; a classifier scores longer recordings in
sliding windows of its clip, a sequence regressor gives one value per window."""

from __future__ import annotations

import glob
import logging
import os
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from audioml.data.audio import AUDIO_EXTENSIONS, AudioDecodeError
from audioml.data.decoder import ClipDecoder
from audioml.run.rundir import RunDir
from audioml.run.use.checkpoint import datamodule_from_record, model_from_record, read_record

log = logging.getLogger(__name__)

__all__ = ["OutputModel", "AGGREGATIONS", "Predictions", "Predictor", "evaluate_checkpoint", "training_run_of",
           "log_evaluation", "collect_inputs", "find_checkpoint", "evaluated_checkpoint", "display_path",
           "predict_files"]

#: How a classifier's window probabilities become one answer per file (``Predictor``).
AGGREGATIONS = ("mean", "max", "vote")
_GLOB_CHARACTERS = set("*?[")


class OutputModel(torch.nn.Module):
    """What a trained model answers, as one ``nn.Module`` from waveform to output, the front
    end included: class probabilities ``(batch, classes)`` for a classifier (the softmax of its
    logits divided by ``temperature``, the record's temperature scaling), values for a regressor
    (``(batch, windows, targets)`` per window). Export, the MLflow model and
    ``audioml-predict`` all run this module (``of_record``)."""

    def __init__(self, model: torch.nn.Module, task: str, temperature: float = 1.0) -> None:
        super().__init__()
        if task not in ("classification", "regression"):
            raise ValueError(f"task {task!r}: expected classification or regression")
        self.model = model
        self.task = task
        self.temperature = float(temperature)

    @classmethod
    def of_record(cls, record: dict, state_dict: dict[str, torch.Tensor]) -> OutputModel:
        """The model of a checked record (``read_record``) with its weights and temperature, in eval mode."""
        temperature = record.get("temperature") if record["task"] == "classification" else None
        return cls(model_from_record(record, state_dict), record["task"],
                   1.0 if temperature is None else float(temperature)).eval()

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        output = self.model(waveform)
        return (output / self.temperature).softmax(dim=-1) if self.task == "classification" else output


def evaluate_checkpoint(ckpt_path: str | Path, paths: DictConfig, trainer_cfg: DictConfig,
                        split: str = "test", data_overrides: DictConfig | None = None,
                        trusted_modules: Iterable[str] = (), data_cfg: DictConfig | None = None,
                        evaluation_cfg: DictConfig | None = None,
                        out_dir: str | Path | None = None) -> tuple[dict[str, float], list[Path]]:
    """Test the checkpoint on ``split`` of the data it was trained with (or of ``data_cfg``,
    another dataset with the same classes); returns ``(metrics, files)``: the metrics under the
    names training used (``test/...``; with ``evaluation_cfg`` also the intervals, baseline
    and permutation test of ``audioml.stats``) and, with ``out_dir``, the reports written there
    (metrics.json, confusion matrix, per-class table, predictions, plots), as a run writes them."""
    from audioml.run.figures import drawing as figures
    from audioml.run.fit.results import honest_test_scores, write_run_reports

    if split not in ("test", "val", "train"):
        raise ValueError(f"split={split!r}: use test, val or train")
    record, state_dict = read_record(ckpt_path, trusted_modules)
    L.seed_everything(record["seed"], workers=True)
    if data_cfg is not None:
        datamodule = datamodule_from_record({**record, "data": OmegaConf.to_container(data_cfg, resolve=False)},
                                            paths, data_overrides)
        if [str(c) for c in datamodule.class_names] != [str(c) for c in record["class_names"]]:
            raise ValueError(f"the model was trained on the classes {record['class_names']}; this dataset has "
                             f"{list(datamodule.class_names)}: evaluate on a dataset with the same classes, in the "
                             "same order")
    else:
        datamodule = datamodule_from_record(record, paths, data_overrides)
    if split != "test":  # evaluate another split through the test loop, so names stay stable
        datamodule.split_indices["test"] = datamodule.split_indices[split]
    model = model_from_record(record, state_dict)
    trainer = instantiate(trainer_cfg, logger=False, callbacks=[], enable_checkpointing=False)
    trainer.test(model, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    files: list[Path] = []
    if out_dir is not None:
        reports = RunDir(out_dir).create()  # an evaluation writes a tested run's reports
        if evaluation_cfg is not None:
            honest, files = honest_test_scores(instantiate(evaluation_cfg), model, datamodule, reports)
            metrics.update(honest)
        _, written = write_run_reports(model, datamodule, reports, metrics)
        files = [*written, *files]
        figures.wait(files)
    return metrics, files


def training_run_of(source: str | Path, checkpoint: Path, tracking_uri: str) -> str | None:
    """The MLflow run that trained the model behind ``source``: ``runs:/<id>/...``, a logged
    model's (``models:/m-<id>``) or a registered version's run (``models:/<name>/<version>``,
    ``models:/<name>@<alias>``), or the ``mlflow_run_id`` of the run directory holding the
    checkpoint (``audioml.run.record.lineage.resolve``)."""
    from audioml.run.record.lineage import resolve

    return resolve(source, checkpoint, tracking_uri).run_id


def log_evaluation(tracking_uri: str, source: str | Path, checkpoint: Path, split: str, dataset: str | None,
                   metrics: dict[str, float], files: list[Path]) -> str:
    """An MLflow evaluation run linked to the training run (tag ``audioml.evaluates``, in its
    experiment when it is found there; else in ``audioml-evaluations``), its metrics linked to
    the MLflow 3 logged model evaluated (``audioml.evaluates_model``) when there is one; returns
    its id."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from audioml.run.record import tracking
    from audioml.run.record.lineage import resolve
    from audioml.run.record.presentation import DataInput, log_data_input

    tracking.check_reachable(tracking_uri)
    tracking.prepare_store(tracking_uri)
    client = MlflowClient(tracking_uri)
    found = resolve(source, checkpoint, tracking_uri)
    trained_by = found.run_id
    experiment_id, trained_name, trained_data = None, None, None
    if trained_by:
        try:
            trained = client.get_run(trained_by)
            experiment_id, trained_name = trained.info.experiment_id, trained.info.run_name
            trained_data = trained.data.tags.get("audioml.data")
        except MlflowException:
            log.warning("the training run %s is not in %s: the evaluation is logged on its own", trained_by,
                        tracking_uri)
            trained_by = None
    if experiment_id is None:
        experiment_id = tracking.get_or_create_experiment(tracking_uri, "audioml-evaluations")
    tags = {"audioml.kind": "evaluation", "audioml.split": split, "audioml.model_source": display_path(source),
            "audioml.checkpoint": display_path(checkpoint), **({"audioml.dataset": dataset} if dataset else {}),
            **({"audioml.evaluates": trained_by} if trained_by else {}),
            **({"audioml.evaluates_model": found.model_id} if found.model_id else {})}
    run = client.create_run(experiment_id, run_name=f"eval {trained_name or checkpoint.stem} {dataset or ''} "
                                                    f"{split}".replace("  ", " "), tags=tags)
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    # the items scored are the run's dataset input (the Dataset column); with MLflow 3 lineage the
    # numbers also appear on the logged model they score, with the data they scored
    scored = f"{dataset or trained_data or 'data'} {split}"
    digest = _scored_items_digest(files, scored)
    linked = {"model_id": found.model_id, "dataset_name": scored, "dataset_digest": digest} if found.model_id else {}
    client.log_batch(run.info.run_id, metrics=[Metric(k, float(v), now, 0, **linked) for k, v in metrics.items()])
    table = next((Path(f) for f in files if Path(f).name == RunDir.PREDICTIONS and Path(f).is_file()), None)
    log_data_input(client, run.info.run_id, DataInput(
        name=scored, digest=digest, source=str(table.parent if table else checkpoint.parent),
        profile={"split": split, "items": int(len(pd.read_csv(table))) if table else 0}), context="evaluation")
    for path in files:
        client.log_artifact(run.info.run_id, str(path))
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def _scored_items_digest(files: list[Path], name: str) -> str:
    """16 hex digits of sha256 over the items an evaluation scored (the ``file`` or ``path``
    column of its predictions table, sorted), else over ``name``: MLflow's dataset digest."""
    import hashlib

    table = next((Path(f) for f in files if Path(f).name == RunDir.PREDICTIONS and Path(f).is_file()), None)
    text = name
    if table is not None:
        frame = pd.read_csv(table)
        column = "file" if "file" in frame else "path"
        text = "\n".join(sorted(frame[column].astype(str))) if column in frame else name
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def display_path(path: str | Path) -> str:
    """``path`` as printable text: bytes that are not UTF-8 (a name from another system) shown
    as ``\\xff`` escapes instead of breaking CSV/JSON writers."""
    return os.fsencode(os.fspath(path)).decode("utf-8", "backslashreplace")


def collect_inputs(inputs: Sequence[str], input_dir: str | None = None,
                   extensions: Sequence[str] | None = None) -> list[Path]:
    """The files to score, in order: each input is a file, a folder (every audio file under it,
    sorted) or a glob pattern (``recordings/**/*.m4a``); ``input_dir`` is one more folder.

    Folders and globs keep files with one of ``extensions`` (default: every format the decoder
    reads, any letter case); an explicit file is always kept. Raises ``FileNotFoundError``
    naming the inputs that match nothing, ``ValueError`` when nothing is given."""
    suffixes = {f".{e.lower().lstrip('.')}" for e in extensions} if extensions else set(AUDIO_EXTENSIONS)
    wanted = [str(i) for i in inputs] + ([str(input_dir)] if input_dir else [])
    if not wanted:
        raise ValueError("nothing to predict: give inputs=[file,folder,'glob/*.wav',...] (or input_dir=<folder>)")
    paths: list[Path] = []
    missing = []
    for item in wanted:
        path = Path(item)
        if path.is_file():
            found = [path]
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in suffixes and p.is_file())
        elif _GLOB_CHARACTERS & set(item):
            found = sorted(Path(p) for p in glob.glob(item, recursive=True)
                           if Path(p).suffix.lower() in suffixes and Path(p).is_file())
        else:
            found = []
        if not found:
            missing.append(item)
        paths += found
    if missing:
        raise FileNotFoundError(f"no audio file at {missing} (give files, folders or glob patterns; folders and "
                                f"globs match {sorted(suffixes)})")
    unique = list(dict.fromkeys(paths))  # a file named twice is scored once
    return unique


# ------------------------------------------------------------------------------ model sources
def find_checkpoint(source: str | Path, tracking_uri: str | None = None,
                    download_dir: str | Path | None = None) -> Path:
    """The checkpoint file behind ``source``: a ``.ckpt`` file; a run directory (its best
    checkpoint, else ``last.ckpt``); an MLflow model directory; ``models:/m-<id>``,
    ``runs:/<id>/model``, ``models:/<name>/<version>`` or ``models:/<name>@<alias>``
    (downloaded from ``tracking_uri`` into ``download_dir``). The checkpoint is then read as
    data like any other (``read_record``)."""
    text = str(source)
    if text.startswith(("runs:/", "models:/")):
        import mlflow
        from mlflow.exceptions import MlflowException

        from audioml.run.record.tracking import using_store

        uri = tracking_uri or mlflow.get_tracking_uri()
        from audioml.run.record.store import check_reachable

        check_reachable(uri)  # a server that is down or hangs is said in seconds
        try:  # MLflow resolves runs:/ of a logged model through the process's store: set it for the call only
            with using_store(uri):
                local = mlflow.artifacts.download_artifacts(artifact_uri=text, dst_path=str(download_dir)
                                                            if download_dir else None)
        except MlflowException as error:
            raise FileNotFoundError(f"{text} could not be fetched from {uri}: "
                                    f"{str(error).splitlines()[0]} (set tracking_uri=... to the store that holds "
                                    "it)") from None
        return _checkpoint_of_model_dir(Path(local), text)
    path = Path(source)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist: give a .ckpt, a run directory, models:/m-<model id>, "
                                "runs:/<run id>/model, models:/<name>/<version> or models:/<name>@<alias>")
    if (path / "MLmodel").is_file():
        return _checkpoint_of_model_dir(path, text)
    run = RunDir(path)
    if (best := run.best_checkpoint()) is not None:
        return best
    if run.last_checkpoint.is_file():
        log.warning("%s has no best checkpoint; using %s", path, run.last_checkpoint.name)
        return run.last_checkpoint
    if folds := run.folds():
        raise FileNotFoundError(f"{path} is a k-fold run: each fold is its own model; give one, e.g. {folds[0]}")
    raise FileNotFoundError(f"{path} holds no checkpoints/ (is it a run directory?)")


def evaluated_checkpoint(source: str | Path, tracking_uri: str | None = None,
                         download_dir: str | Path | None = None) -> tuple[Path, str]:
    """``(checkpoint file, what it is)`` for ``audioml-eval source=...``: for a run directory,
    the checkpoint its test scored (``RunDir.tested_checkpoint``), so the numbers reproduce its
    metrics; for any other source the file ``find_checkpoint`` finds, and when that is a
    checkpoint of a run directory whose test scored another file, the line says so (e.g. the
    last checkpoint after a run that tested its best epoch)."""
    path = Path(str(source))
    a_run = path.is_dir() and not (path / "MLmodel").is_file()
    if a_run and (tested := RunDir(path).tested_checkpoint()) is not None:
        return tested, f"the checkpoint the test of run {path} scored: the numbers of its metrics.json"
    checkpoint = find_checkpoint(source, tracking_uri, download_dir)
    run = RunDir.of_checkpoint(checkpoint)
    if a_run:
        why = ("the one its test scored is gone or was rewritten: its metrics.json may differ"
               if RunDir(path).records_tested() else "the run did not record which one its test scored")
        return checkpoint, f"the best checkpoint of run {path} ({why})"
    tested = run.tested_checkpoint() if run.records_tested() else None
    if tested is None:
        return checkpoint, f"from {source}"
    if tested.resolve() == checkpoint.resolve():
        return checkpoint, f"the checkpoint the test of run {run} scored: the numbers of its metrics.json"
    return checkpoint, (f"not the checkpoint the test of run {run} scored ({tested.name}, whose numbers are in "
                        f"its metrics.json): these numbers are {checkpoint.name}'s; give source={run} for the "
                        "tested one")


def _checkpoint_of_model_dir(folder: Path, source: str) -> Path:
    """The checkpoint an audioml MLflow model carries (``artifacts/<file>.ckpt``)."""
    found = sorted(folder.glob("artifacts/*.ckpt"))
    if len(found) != 1:
        raise FileNotFoundError(f"{source} is not an audioml model: expected one artifacts/*.ckpt in {folder}, "
                                f"found {len(found)}")
    return found[0]


# --------------------------------------------------------------------------------- predicting
@dataclass
class Predictions:
    """What ``Predictor.predict_files`` found.

    ``files``: one row per scored file (``path``, ``predicted`` and ``p_<class>`` for a
    classifier, the mean value per target for a regressor; ``windows``, ``seconds``);
    ``windows``: one row per window (``path``, ``window``, ``start_s``, ``end_s`` and the
    window's probabilities or values); ``skipped``: ``path``, ``reason`` for each file that
    could not be scored."""

    files: pd.DataFrame
    windows: pd.DataFrame
    skipped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["path", "reason"]))


class Predictor:
    """A trained model ready to answer: the checkpoint's model (``OutputModel``) on ``device``
    with the checkpoint's decoder.

    Args:
        record, state_dict: from ``read_record`` (checked).
        device: ``auto`` (a GPU when there is one), ``cpu``, ``cuda``, ``cuda:1``, ...
        hop_seconds: classifier windows start every ``hop_seconds`` (default half a clip).
        aggregate: per-file answer from the windows: ``mean`` of probabilities, per-class
            ``max`` (the columns then need not sum to 1), or majority ``vote`` (columns: the
            share of windows voting for each class; ties go to the higher mean probability).
        sliding_windows: ``False`` scores each file as training saw it: one clip, cropped.
        batch_size: windows (classifier) or sequences (regressor) per forward pass.
    """

    def __init__(self, record: dict, state_dict: dict, device: str = "auto", hop_seconds: float | None = None,
                 aggregate: str = "mean", sliding_windows: bool = True, batch_size: int = 32) -> None:
        if aggregate not in AGGREGATIONS:
            raise ValueError(f"aggregate={aggregate!r}: use one of {list(AGGREGATIONS)}")
        if hop_seconds is not None and not hop_seconds > 0:
            raise ValueError(f"hop_seconds={hop_seconds}: use a positive number of seconds, or null (half a clip)")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: use a whole number >= 1")
        self.record = record
        self.task = record["task"]
        self.names = [str(c) for c in record["class_names"]]
        self.decoder = ClipDecoder.from_settings(record["decoder"]).with_options(min_seconds=0.0)
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        self.model = OutputModel.of_record(record, state_dict).to(self.device).eval()
        self.hop_seconds, self.aggregate, self.sliding = hop_seconds, aggregate, bool(sliding_windows)
        self.batch_size = batch_size
        data = record.get("data") or {}
        self.sequence_length = int(data.get("sequence_length") or 40)
        self.sequence_stride = int(data.get("eval_stride") or self.sequence_length)

    @classmethod
    def from_source(cls, source: str | Path, trusted_modules: Iterable[str] = (), tracking_uri: str | None = None,
                    download_dir: str | Path | None = None, **options) -> Predictor:
        """The predictor of a checkpoint, run directory or MLflow model (``find_checkpoint``)."""
        record, state_dict = read_record(find_checkpoint(source, tracking_uri, download_dir), trusted_modules)
        return cls(record, state_dict, **options)

    @property
    def sample_rate(self) -> int:
        return self.decoder.sample_rate

    @torch.no_grad()
    def forward(self, inputs: np.ndarray) -> np.ndarray:
        """The model's output for a stack of inputs, in batches of ``batch_size``."""
        outputs = [self.model(torch.from_numpy(np.ascontiguousarray(inputs[i:i + self.batch_size])).to(self.device))
                   .float().cpu().numpy() for i in range(0, len(inputs), self.batch_size)]
        return np.concatenate(outputs)

    # ------------------------------------------------------------------------- per recording
    def windows_of(self, audio: np.ndarray, source: str = "") -> tuple[np.ndarray, np.ndarray]:
        """``(inputs, start seconds)`` of decoded audio: classifier clips (``ClipDecoder.windows``),
        or the regressor's 0.5 s windows (the tail padded with zeros, as the MuSe data does)."""
        if self.task == "classification":
            if not self.sliding:
                return self.decoder.finish(audio, source)[None], np.zeros(1)
            return self.decoder.windows(audio, self.hop_seconds, source)
        audio = self.decoder.trimmed(audio, source)
        size = self.decoder.num_samples
        count = -(-audio.shape[0] // size)
        padded = np.zeros(count * size, dtype=np.float32)
        padded[:audio.shape[0]] = audio
        return padded.reshape(count, size), np.arange(count) * size / self.sample_rate

    def score_windows(self, windows: np.ndarray) -> np.ndarray:
        """Classifier: probabilities per window ``(n, classes)``. Regressor: values per window
        ``(n, targets)``, from sequences of the training length (``data.sequence_length``, a
        shorter recording as one shorter sequence; overlapping sequences averaged per window;
        ``output=per_sequence`` models answer at each sequence's last window, ``NaN`` elsewhere)."""
        if self.task == "classification":
            return self.forward(windows)
        from audioml.data.muse import sequence_starts

        count, length = len(windows), min(self.sequence_length, len(windows))
        starts = sequence_starts(count, length, self.sequence_stride)
        sequences = windows[starts[:, None] + np.arange(length)[None, :]]
        outputs = self.forward(sequences)
        total = np.zeros((count, len(self.names)))
        seen = np.zeros((count, 1))
        for start, output in zip(starts, outputs):
            if output.ndim == 2:  # per_step: (length, targets)
                total[start:start + length] += output
                seen[start:start + length] += 1
            else:  # per_sequence: one answer for the sequence, at its last window
                total[start + length - 1] += output
                seen[start + length - 1] += 1
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(seen > 0, total / np.maximum(seen, 1), np.nan)

    def summarise(self, scores: np.ndarray) -> dict[str, object]:
        """One file's answer from its window scores (``aggregate``)."""
        if self.task == "regression":
            return {name: float(np.nanmean(scores[:, i])) for i, name in enumerate(self.names)}
        if self.aggregate == "mean":
            per_class = scores.mean(axis=0)
        elif self.aggregate == "max":
            per_class = scores.max(axis=0)
        else:
            votes = np.bincount(scores.argmax(axis=1), minlength=len(self.names)) / len(scores)
            per_class = votes + 1e-9 * scores.mean(axis=0)  # ties: the higher mean probability
            predicted = int(per_class.argmax())
            return {"predicted": self.names[predicted], **{f"p_{n}": float(v) for n, v in zip(self.names, votes)}}
        return {"predicted": self.names[int(per_class.argmax())],
                **{f"p_{n}": float(v) for n, v in zip(self.names, per_class)}}

    def _columns(self) -> list[str]:
        return [f"p_{n}" for n in self.names] if self.task == "classification" else list(self.names)

    def predict_audio(self, audio: np.ndarray, name: str = "waveform") -> tuple[dict, pd.DataFrame]:
        """One decoded recording at ``sample_rate``: ``(file row, window table)``; raises
        ``AudioDecodeError`` when it is unusable (silent, empty)."""
        windows, starts = self.windows_of(np.asarray(audio, dtype=np.float32), name)
        return self._rows(name, windows, starts, self.score_windows(windows), audio.shape[0] / self.sample_rate)

    def _rows(self, name: str, windows: np.ndarray, starts: np.ndarray, scores: np.ndarray,
              seconds: float) -> tuple[dict, pd.DataFrame]:
        table = pd.DataFrame(scores, columns=self._columns())
        table.insert(0, "end_s", np.minimum(starts + self.decoder.clip_seconds, max(seconds, self.decoder.clip_seconds)))
        table.insert(0, "start_s", starts)
        table.insert(0, "window", np.arange(len(windows)))
        table.insert(0, "path", name)
        return {"path": name, **self.summarise(scores), "windows": len(windows), "seconds": round(seconds, 3)}, table

    # ---------------------------------------------------------------------------- many files
    def predict_files(self, files: Sequence[str | Path], progress: bool = True, decode_workers: int = 4) -> Predictions:
        """Score every file; files that cannot be decoded or are unusable are listed in
        ``skipped`` with the reason while the others are scored. Files are decoded in a few
        threads ahead of the model (decoding, not the model, is the slow part on a CPU)."""
        from tqdm.auto import tqdm

        rows, tables, skipped = [], [], []
        pending: list[tuple[str, np.ndarray, np.ndarray, float]] = []

        def flush() -> None:
            if not pending:
                return
            if self.task == "classification":  # windows of several files in one pass
                scores = self.forward(np.concatenate([w for _, w, _, _ in pending]))
                offsets = np.cumsum([0] + [len(w) for _, w, _, _ in pending])
                parts = [scores[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
            else:
                parts = [self.score_windows(w) for _, w, _, _ in pending]
            for (name, windows, starts, seconds), part in zip(pending, parts):
                row, table = self._rows(name, windows, starts, part, seconds)
                rows.append(row)
                tables.append(table)
            pending.clear()

        bar = tqdm(total=len(files), desc="predict", unit="file", disable=not progress or len(files) < 2)
        with ThreadPoolExecutor(max_workers=max(1, decode_workers)) as pool:
            for path, decoded in zip(files, pool.map(self._decode, files)):
                name = display_path(path)
                if isinstance(decoded, str):
                    skipped.append({"path": name, "reason": decoded})
                else:
                    pending.append((name, *decoded))
                    if sum(len(w) for _, w, _, _ in pending) >= self.batch_size:
                        flush()
                bar.update(1)
        flush()
        bar.close()
        windows = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(
            columns=["path", "window", "start_s", "end_s", *self._columns()])
        return Predictions(pd.DataFrame(rows), windows, pd.DataFrame(skipped, columns=["path", "reason"]))

    def _decode(self, path: str | Path) -> tuple[np.ndarray, np.ndarray, float] | str:
        """``(windows, starts, seconds)`` of one file, or why it cannot be scored."""
        try:
            audio = self.decoder.read(path)
            windows, starts = self.windows_of(audio, display_path(path))
        except AudioDecodeError as error:
            return str(error)
        except OSError as error:  # unreadable: permissions, a directory, a vanished file
            return f"{display_path(path)}: cannot read ({error.strerror or error})"
        return windows, starts, audio.shape[0] / self.sample_rate


def predict_files(ckpt_path: str | Path, files: list[Path], batch_size: int = 32, device: str = "auto",
                  trusted_modules: Iterable[str] = (), **options) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(per-file predictions, skipped)`` of ``files`` by the model behind ``ckpt_path``
    (``Predictor``; ``options`` are its settings)."""
    predictor = Predictor.from_source(ckpt_path, trusted_modules, device=device, batch_size=batch_size, **options)
    predictions = predictor.predict_files(files, progress=False)
    return predictions.files, predictions.skipped
