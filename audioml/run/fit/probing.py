"""Which encoder for my data? (``audioml-probe``): probe several frozen encoders x their hidden
layers x probes (``probe=linear|mlp|knn``) on one dataset, each probe a normal audioml run, and
table the result.

Per encoder (a model preset plus overrides) the all-layer embedding cache is built once
(``audioml.models.embedding_cache``, timed: the embedding pass); then every (probe, layer) is an
``audioml-train`` run of its own (run directory, checkpoints, honest numbers, DONE: a rerun skips
what is finished) under one MLflow parent run. The best layer of each (encoder, probe) is the one
with the best validation score (``val/best_<monitor>``, the fold mean under k-fold protocols), so
its test number is not chosen on the test set. Written in the table directory: ``probe_table.csv``
(one row per encoder x probe), ``probe_layers.csv`` (every run) and ``probe_layers.png``; the
same go to the parent MLflow run.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from audioml.config import CONFIG_DIR, compose_config, user_config_dirs
from audioml.files import fingerprint
from audioml.run.rundir import RunDir

log = logging.getLogger(__name__)

__all__ = ["EncoderChoice", "ProbeTableRequest", "ProbeUsageError", "ProbeTable", "run_probe_table",
           "parse_layers", "choose_layer"]

#: The probes this command runs (``audioml/conf/probe/<name>.yaml``).
PROBES = ("linear", "mlp", "knn")
#: Settings of every probe run unless the command line gives others: a layer sweep of a base-size
#: transformer is dozens of runs, each checkpoint the whole frozen encoder (380 MB for wav2vec2-base),
#: so the runs log no MLflow model and no checkpoint copy (their checkpoints stay in their run
#: directories, pruned to the chosen layers' by ``keep_checkpoints=best``).
RUN_DEFAULTS = ("logger.log_model=false", "logger.log_checkpoint=false")


class ProbeUsageError(ValueError):
    """A mistake in the command line (unknown encoder, probe, layer): one message, exit status 2."""


@dataclass(frozen=True)
class EncoderChoice:
    """An encoder of the table: a model preset (``model=<preset>``) and overrides for it.

    ``label`` names it in the table, run directories and MLflow: the preset, plus the last part
    of any path among its overrides (``hf_encoder:tiny-wav2vec2``)."""

    preset: str
    overrides: tuple[str, ...] = ()

    @classmethod
    def parse(cls, entry: str) -> EncoderChoice:
        """``"<preset> [key=value ...]"``, e.g. ``"hf_encoder model.backbone.name=/models/w2v"``."""
        parts = str(entry).split()
        if not parts or "=" in parts[0]:
            raise ProbeUsageError(f"encoders entry {entry!r}: start with a model preset name, then its overrides")
        preset, *overrides = parts
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ProbeUsageError(f"encoders entry {entry!r}: {bad} are not key=value overrides")
        return cls(preset, tuple(overrides))

    @property
    def label(self) -> str:
        paths = [Path(value).name for _, _, value in (o.partition("=") for o in self.overrides)
                 if "/" in value or value.startswith(".")]
        return ":".join([self.preset, *paths])

    @property
    def slug(self) -> str:
        """``label`` as a folder and MLflow key (letters, digits, ``._-``)."""
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.label)


@dataclass(frozen=True)
class ProbeTableRequest:
    """What ``run_probe_table`` runs: ``data`` (a data preset), the encoders, the layers
    (``parse_layers``), the probes, the table's ``metric`` (a summary metric of the test set),
    overrides given to every run (``evaluation=emobox``, ``data.root=...``, ``trainer.max_epochs=...``)
    and which runs keep their checkpoints: ``"best"`` (the chosen layer's of each encoder and
    probe) or ``"all"``."""

    data: str
    encoders: tuple[EncoderChoice, ...]
    layers: tuple[str, ...] = ("all",)
    probes: tuple[str, ...] = PROBES
    metric: str = "macro_f1"
    overrides: tuple[str, ...] = ()
    keep_checkpoints: str = "best"


@dataclass(frozen=True)
class ProbeTable:
    """The result: one row per encoder x probe (``table``), every run (``runs``), the folder and
    files they are written in, the MLflow parent run (``None`` with logging off)."""

    table: pd.DataFrame
    runs: pd.DataFrame
    directory: Path
    files: tuple[Path, ...] = ()
    parent_run_id: str | None = None


def parse_layers(spec: Sequence[str], num_layers: int) -> list[int | str]:
    """Layer choices from ``spec`` for a backbone of ``num_layers`` hidden layers: ``all`` (every
    index), ``last``, ``weighted`` (a learned softmax weighting; trained probes only) or indices
    (negative count from the top), in order, without repeats. Raises ``ProbeUsageError``."""
    chosen: list[int | str] = []
    for item in spec:
        text = str(item).strip()
        if text == "all":
            values: list[int | str] = list(range(num_layers))
        elif text == "last":
            values = [num_layers - 1]
        elif text == "weighted":
            values = ["weighted"]
        elif re.fullmatch(r"-?\d+", text) and -num_layers <= int(text) < num_layers:
            values = [int(text) % num_layers]
        else:
            raise ProbeUsageError(f"layers={text!r}: use all, last, weighted or layer indices in "
                                  f"{-num_layers}..{num_layers - 1} (this encoder has {num_layers} layers)")
        chosen += [v for v in values if v not in chosen]
    return chosen


def choose_layer(runs: pd.DataFrame) -> pd.Series:
    """The row of ``runs`` (one encoder and probe) with the best validation score; the lowest
    layer among equals (rows in layer order)."""
    scores = runs["val_score"].to_numpy(dtype=float)
    if np.isnan(scores).all():
        return runs.iloc[-1]
    return runs.iloc[int(np.nanargmax(scores))]


def _presets(group: str) -> list[str]:
    folders = [*user_config_dirs(), Path(CONFIG_DIR)]
    return sorted({p.relative_to(folder / group).with_suffix("").as_posix()
                   for folder in folders if (folder / group).is_dir() for p in (folder / group).rglob("*.yaml")})


def _check_request(request: ProbeTableRequest) -> None:
    models, data = _presets("model"), _presets("data")
    if request.data not in data:
        raise ProbeUsageError(f"unknown data {request.data!r}: data presets are {', '.join(data)}")
    if not request.encoders:
        raise ProbeUsageError("no encoders: give encoders=[<model preset>, ...], e.g. encoders=[efficientat_mn04]")
    for encoder in request.encoders:
        if encoder.preset not in models:
            raise ProbeUsageError(f"unknown encoder {encoder.preset!r}: encoders are model presets "
                                  f"({', '.join(models)}); a local transformers folder is "
                                  "'hf_encoder model.backbone.name=<folder>'")
    labels = [e.label for e in request.encoders]
    if len(set(labels)) != len(labels):
        raise ProbeUsageError(f"encoders {labels} name one encoder twice")
    unknown = [p for p in request.probes if p not in PROBES]
    if unknown or not request.probes:
        raise ProbeUsageError(f"probes={list(request.probes)}: choose from {list(PROBES)}")
    from audioml.stats import SUMMARY_METRICS

    if request.metric not in SUMMARY_METRICS:
        raise ProbeUsageError(f"metric={request.metric!r}: use one of {list(SUMMARY_METRICS)}")
    if request.keep_checkpoints not in ("best", "all"):
        raise ProbeUsageError(f"keep_checkpoints={request.keep_checkpoints!r}: use best or all")


def _compose(request: ProbeTableRequest, encoder: EncoderChoice, probe: str, layer: int | str):
    """The ``audioml-train`` config of one probe run (run directory and name set by the caller)."""
    overrides = [f"data={request.data}", f"model={encoder.preset}", *encoder.overrides, f"probe={probe}",
                 f"model.head.layers={layer}", *RUN_DEFAULTS, *request.overrides]
    try:
        return compose_config(overrides)
    except Exception as error:  # Hydra's composition errors: an unknown key or value in an override
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        if isinstance(error, (HydraException, OmegaConfBaseException)):
            raise ProbeUsageError(f"{encoder.label}, probe={probe}: {error}".splitlines()[0]) from None
        raise


def _prepare_encoder(request: ProbeTableRequest, encoder: EncoderChoice) -> tuple[list[int | str], float, str]:
    """Build ``encoder``'s all-layer cache on the data (once; later runs hit it). Returns its
    layers to probe (``parse_layers``, checked before the pass), the seconds the embedding pass
    took (when the entry was built, also by an earlier command) and the cache status."""
    import lightning as L
    import torch
    from hydra.utils import instantiate

    from audioml.models.embedding_cache import use_embedding_cache
    from audioml.run.fit.compose import build_datamodule, build_model

    cfg = _compose(request, encoder, "linear", "last")
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    if cfg.get("evaluation"):  # e.g. evaluation=emobox on data without actors: said before any encoder runs
        instantiate(cfg.evaluation).check_data(datamodule)
    model = build_model(cfg, datamodule.class_names, datamodule.train_class_counts())
    num_layers = len(model.backbone.layer_dims)
    layers = parse_layers(request.layers, num_layers)
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    device = "cuda" if torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda") else "cpu"
    started = time.perf_counter()
    cached = use_embedding_cache(model, datamodule, cfg.paths.cache_dir, device)
    status = getattr(cached, "cache_status", None) or "off"
    # the pass that built the entry, also when an earlier command built it
    seconds = getattr(cached, "build_seconds", None) or time.perf_counter() - started
    if status == "off":
        log.warning("%s: the embedding cache is off (the log above says why): every probe runs the encoder",
                    encoder.label)
    log.info("%s: %d hidden layers; all-layer embeddings %s in %.1f s", encoder.label, num_layers, status, seconds)
    return layers, seconds, status


@contextlib.contextmanager
def _children_of(parent_run_id: str | None) -> Iterator[None]:
    """Runs opened in the block are children of ``parent_run_id`` (as a sweep's jobs are)."""
    from audioml.run.record import tracking

    if parent_run_id is None:
        yield
        return
    previous = os.environ.get(tracking.PARENT_RUN_ENV)
    os.environ[tracking.PARENT_RUN_ENV] = parent_run_id
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(tracking.PARENT_RUN_ENV, None)
        else:
            os.environ[tracking.PARENT_RUN_ENV] = previous


def _run_row(metrics: dict[str, float], monitor: str, metric: str) -> dict[str, float]:
    """The numbers of one probe run: its validation score (``val/best_<monitor>``, or its mean over
    folds) and the test metric with interval and baseline (pooled out-of-fold under k-fold)."""
    group, _, name = monitor.rpartition("/")
    best = f"{group}/best_{name}" if group else f"best_{name}"
    row = {"val_score": metrics.get(best, metrics.get(f"{best}_mean", float("nan"))),
           "test": metrics.get(f"test/{metric}", float("nan")),
           "ci_low": metrics.get(f"test/{metric}_ci_low", float("nan")),
           "ci_high": metrics.get(f"test/{metric}_ci_high", float("nan")),
           "baseline": metrics.get(f"baseline/{metric}", float("nan"))}
    for name in ("ua", "wa", "macro_f1"):  # evaluation=emobox: EmoBox's fold means beside
        if f"emobox/{name}" in metrics:
            row[f"emobox_{name}"] = metrics[f"emobox/{name}"]
    return row


def run_probe_table(request: ProbeTableRequest) -> ProbeTable:
    """Probe every encoder x layer x probe of ``request`` (module docs); the table goes to
    ``<paths.output_dir>/probes/<data>-<key>``.

    Raises ``ProbeUsageError`` (a ``ValueError``) for a mistake in the request, before any
    encoder runs; a dataset the protocol cannot use (``evaluation=emobox`` without actors)
    raises ``ValueError`` before its first embedding pass."""
    _check_request(request)
    key = fingerprint({"data": request.data, "encoders": [[e.preset, *e.overrides] for e in request.encoders],
                       "layers": list(request.layers), "probes": list(request.probes),
                       "overrides": list(request.overrides)}, length=10)
    base = _compose(request, request.encoders[0], "linear", "last")
    directory = Path(base.paths.output_dir) / "probes" / f"{request.data}-{key}"
    with RunDir(directory).lock(f"probing in {directory}: waiting until it ends"):
        return _run_locked(request, directory, base)


def _run_locked(request: ProbeTableRequest, directory: Path, base) -> ProbeTable:
    from audioml.run.fit.training import run_evaluation_in
    from audioml.run.outcome import ending
    from audioml.run.record import finishing

    # every encoder loads and embeds the data first: a folder that is no model, data the protocol
    # cannot split, fail here, before any run is opened
    prepared = [(encoder, *_prepare_encoder(request, encoder)) for encoder in request.encoders]
    parent = _open_parent(base, directory, request)
    with ending(parent):
        parent_id = getattr(parent, "run_id", None)
        with finishing.deferred():  # a run's MLflow record is completed while the next one trains
            rows = _probe_all(request, directory, parent_id, prepared, run_evaluation_in)
        runs = pd.DataFrame(rows)
        table = summarise(runs, request.metric)
        files = _write(table, runs, directory, request.metric)
        if parent is not None:
            _log_parent(parent, table, files, request.metric)
    log.info("probe table (best layer by validation %s): %s", base.monitor, RunDir(directory).probe_table_file)
    return ProbeTable(table, runs, directory, tuple(files), getattr(parent, "run_id", None))


def _probe_all(request: ProbeTableRequest, directory: Path, parent_id: str | None,
               prepared: list[tuple[EncoderChoice, list[int | str], float, str]], run_evaluation_in) -> list[dict]:
    """Every (encoder, probe, layer) run of ``request``, each a child of ``parent_id``; one row of
    numbers per run. ``prepared``: each encoder with its layers to probe, embedding seconds and
    cache status (``_prepare_encoder``)."""
    from omegaconf import open_dict

    rows: list[dict] = []
    earlier = _earlier_seconds(RunDir(directory).probe_layers_file)
    for encoder, layers, embed_seconds, status in prepared:
        for probe in request.probes:
            composed = _compose(request, encoder, probe, "last")  # once: composing takes a second
            for layer in layers:
                if probe == "knn" and layer == "weighted":
                    continue  # a kNN reads one layer: there are no weights to learn
                run_dir = directory / encoder.slug / probe / f"layer_{layer}"
                title = f"{encoder.label} {probe} layer {layer}"
                cfg = copy.deepcopy(composed)
                with open_dict(cfg):
                    cfg.model.head.layers, cfg.paths.run_dir, cfg.logger.run_name = layer, str(run_dir), title
                finished = RunDir(run_dir).finished() is not None
                started = time.perf_counter()
                with _children_of(parent_id):
                    metrics, final_dir = run_evaluation_in(cfg, run_dir)
                seconds = earlier.get((encoder.label, probe, str(layer)), math.nan) if finished \
                    else time.perf_counter() - started  # a run finished before: the time it took then
                row = {"encoder": encoder.label, "probe": probe, "layer": layer,
                       "seconds": seconds, "embed_seconds": embed_seconds,
                       "embedding_cache": status, **_run_row(metrics, str(cfg.monitor), request.metric),
                       "run_dir": str(final_dir)}
                rows.append(row)
                log.info("%s: %s %.3f [%.3f-%.3f] (validation %.3f)", title, request.metric, row["test"],
                         row["ci_low"], row["ci_high"], row["val_score"])
            if request.keep_checkpoints == "best":
                group = pd.DataFrame([r for r in rows if r["encoder"] == encoder.label and r["probe"] == probe])
                _prune_checkpoints(group, choose_layer(group)["run_dir"])
    return rows


def _prune_checkpoints(runs: pd.DataFrame, kept: str) -> None:
    """Delete the checkpoint files of ``runs`` except the run directory ``kept`` (their metrics,
    predictions, reports and MLflow records stay; ``keep_checkpoints=all`` keeps everything)."""
    removed, freed = 0, 0
    for run_dir in runs["run_dir"]:
        if run_dir == kept:
            continue
        for checkpoint in Path(run_dir).glob("**/checkpoints/*.ckpt"):  # fold_<k>/checkpoints under k-fold
            freed += checkpoint.stat().st_size
            checkpoint.unlink()
            removed += 1
    if removed:
        log.info("removed %d checkpoints (%.0f MB) of the layers not chosen; keep_checkpoints=all keeps them",
                 removed, freed / 2**20)


def _earlier_seconds(path: Path) -> dict[tuple[str, str, str], float]:
    """``(encoder, probe, layer) -> seconds`` of the runs an earlier command recorded in ``path``."""
    if not path.is_file():
        return {}
    try:
        earlier = pd.read_csv(path, dtype={"layer": str})
        return {(row.encoder, row.probe, row.layer): float(row.seconds) for row in earlier.itertuples()}
    except (ValueError, AttributeError, pd.errors.ParserError):
        return {}


def summarise(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per encoder x probe: the layer of the best validation score (``choose_layer``), its
    test ``metric`` with interval and the majority baseline, the encoder's embedding seconds and
    the seconds all its layers' runs of that probe took."""
    rows = []
    for (encoder, probe), group in runs.groupby(["encoder", "probe"], sort=False):
        best = choose_layer(group)
        row = {"encoder": encoder, "probe": probe, "best_layer": best["layer"], "layers": len(group),
               "val_score": best["val_score"], f"test_{metric}": best["test"], "ci_low": best["ci_low"],
               "ci_high": best["ci_high"], "baseline": best["baseline"]}
        row.update({k: best[k] for k in best.index if k.startswith("emobox_")})
        row.update({"embed_seconds": best["embed_seconds"], "probe_seconds": group["seconds"].sum(),
                    "run_dir": best["run_dir"]})
        rows.append(row)
    return pd.DataFrame(rows)


def format_table(table: pd.DataFrame) -> str:
    """The table as printed: encoder, probe, best layer, metric [95 % CI], baseline, times."""
    metric = next(c for c in table.columns if c.startswith("test_"))
    lines = []
    for row in table.itertuples(index=False):
        values = row._asdict()
        text = {"encoder": values["encoder"], "probe": values["probe"], "best layer": str(values["best_layer"]),
                metric[5:]: f"{values[metric]:.3f} [{values['ci_low']:.3f}-{values['ci_high']:.3f}]",
                "baseline": f"{values['baseline']:.3f}"}
        if "emobox_ua" in values:
            text["EmoBox UA"] = f"{values['emobox_ua']:.1%}"
        text["embed s"] = f"{values['embed_seconds']:.1f}"
        text["probe s"] = f"{values['probe_seconds']:.1f}"
        lines.append(text)
    return pd.DataFrame(lines).to_string(index=False)


def _write(table: pd.DataFrame, runs: pd.DataFrame, directory: Path, metric: str) -> list[Path]:
    run = RunDir(directory).create()
    table.to_csv(run.probe_table_file, index=False)
    runs.to_csv(run.probe_layers_file, index=False)
    return [run.probe_table_file, run.probe_layers_file, plot_layer_scores(runs, metric, run.probe_figure)]


def plot_layer_scores(runs: pd.DataFrame, metric: str, path: str | Path) -> Path:
    """PNG, one panel per encoder: the validation score (solid) and the test ``metric`` (dotted)
    of each probe against the layer index; a learned weighting of layers as a horizontal line."""
    from matplotlib.figure import Figure

    encoders = list(dict.fromkeys(runs["encoder"]))
    figure = Figure(figsize=(5.5, 3.2 * len(encoders)))
    axes = figure.subplots(len(encoders), 1, squeeze=False)[:, 0]
    for ax, encoder in zip(axes, encoders):
        for index, (probe, group) in enumerate(runs[runs["encoder"] == encoder].groupby("probe", sort=False)):
            color = f"C{index}"
            numbered = group[group["layer"].map(lambda value: not isinstance(value, str))]
            ax.plot(numbered["layer"].astype(int), numbered["val_score"], "-o", color=color, ms=3,
                    label=f"{probe} (validation)")
            ax.plot(numbered["layer"].astype(int), numbered["test"], ":", color=color, label=f"{probe} (test)")
            for row in group[group["layer"].map(lambda value: isinstance(value, str))].itertuples():
                ax.axhline(row.val_score, color=color, lw=0.8, ls="--", label=f"{probe} {row.layer} (validation)")
        ax.set_title(encoder)
        ax.set_xlabel("layer (input side first)")
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return Path(path)


def _open_parent(cfg, directory: Path, request: ProbeTableRequest):
    """The MLflow parent run of the table (continued when the command is rerun), or ``None``."""
    from audioml.run.record import tracking
    from audioml.run.record.store import Store, check_reachable

    if not cfg.logger.get("enabled", True):
        return None
    directory.mkdir(parents=True, exist_ok=True)
    store = Store.of(cfg.logger.get("tracking_uri"), cfg.paths.mlflow_dir)
    check_reachable(store.uri)
    logger = tracking.open_run(cfg.logger.experiment_name, f"probe table {request.data}", store, RunDir(directory),
                               {"audioml.probe_table": directory.name, "audioml.data": request.data},
                               system_metrics=False)
    tracking.log_params(logger.experiment, logger.run_id, {
        "data": request.data, "encoders": ", ".join(e.label for e in request.encoders),
        "layers": ", ".join(request.layers), "probes": ", ".join(request.probes), "metric": request.metric,
        "overrides": " ".join(request.overrides)})
    return logger


def _log_parent(parent, table: pd.DataFrame, files: list[Path], metric: str) -> None:
    from audioml.run.record import tracking

    values = {}
    for row in table.itertuples(index=False):
        values.update({f"{_slug(row.encoder)}/{row.probe}/test_{metric}": getattr(row, f"test_{metric}"),
                       f"{_slug(row.encoder)}/{row.probe}/best_layer": float(row.best_layer)
                       if row.best_layer != "weighted" else -1.0})
    parent.log_metrics(values)
    parent.flush()
    tracking.log_artifacts(parent, files)
    tracking.set_status(parent.experiment, parent.run_id, "FINISHED")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text))
