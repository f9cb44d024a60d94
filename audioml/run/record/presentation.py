"""How audioml's runs read in the MLflow UI: experiments marked as model training, names that say
what a sweep or a grid is, the data as the run's dataset input (the runs table's Dataset column),
and a saved view per experiment with the columns and charts compared first, opened by
:func:`view_link` (printed at the end of a run).

The tags' formats are MLflow 3.17's UI's (docs/design/runs.md); the guide:
docs/guide/comparing-in-mlflow.md."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["EXPERIMENT_KIND_TAG", "MODEL_TRAINING", "mark_model_training", "short_keys", "sweep_run_name",
           "search_run_name", "grid_run_name", "DataInput", "data_input", "table_input", "log_data_input", "VIEW_KEY", "VIEW_NAME",
           "view_columns", "update_view", "setting_keys", "show_run_in_view", "view_link"]

#: The experiment tag MLflow 3's UI reads to open an experiment as model training or as GenAI.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"


def mark_model_training(client, experiment) -> None:
    """Mark ``experiment`` (an ``mlflow.entities.Experiment``) as model training (its runs table,
    model metrics) unless it has a kind already: a user's choice in the UI is kept. A new
    experiment gets it when created: ``tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING}``."""
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)


# ---------------------------------------------------------------------------------- run names
def short_keys(keys: Sequence[str]) -> list[str]:
    """Override keys as a user reads them: the last part (``model.optimizer.lr`` -> ``lr``),
    the whole key where two would read alike; ``+``/``~`` prefixes dropped."""
    bare = [key.lstrip("+~") for key in keys]
    last = [key.rsplit(".", 1)[-1] for key in bare]
    return [name if last.count(name) == 1 else key for key, name in zip(bare, last)]


def _swept(override: str) -> bool:
    """Whether a command-line override takes several values (``a=1,2``, ``a=range(...)``)."""
    value = override.partition("=")[2]
    return "," in value or value.startswith(("range(", "choice(", "glob(", "interval(", "tag("))


def sweep_run_name(overrides: Sequence[str], jobs: Sequence[Sequence[str]] | None = None) -> str:
    """``sweep lr x seed (6 jobs)``: the keys whose values differ between ``jobs`` (the planned
    jobs' overrides), else the keys the command line gives several values."""
    if jobs:
        values: dict[str, set[str]] = {}
        for job in jobs:
            for override in job:
                key, _, value = str(override).partition("=")
                values.setdefault(key, set()).add(value)
        varied = [key for key, seen in values.items() if len(seen) > 1]
    else:
        varied = [str(o).partition("=")[0] for o in overrides if _swept(str(o))]
    what = " x ".join(short_keys(varied)) or "of one job"
    count = f" ({len(jobs)} job{'s' if len(jobs) != 1 else ''})" if jobs else ""
    return f"sweep {what}{count}"[:240]


def search_run_name(study_name: str, trials: int) -> str:
    """``search <study> (20 trials)``: the parent run of an Optuna search."""
    return f"search {study_name} ({trials} trial{'s' if trials != 1 else ''})"[:240]


def grid_run_name(data: str | None, descriptors: str | None, grid: str | None) -> str:
    """``synthetic mir classification grid``: the parent run of an ``audioml-classical`` grid."""
    return " ".join([*(str(part) for part in (data, descriptors, grid) if part and str(part) != "None"), "grid"])


# ---------------------------------------------------------------------------- dataset inputs
@dataclass(frozen=True)
class DataInput:
    """The data of a run as an MLflow dataset: ``name`` (the data config's name), ``digest``
    (audioml's data fingerprint), ``source`` (the dataset's folder), ``profile`` (facts of the
    data: clips, classes), ``columns`` (``(name, type)`` of a row: the schema) and ``splits``
    (clips per split of this run, kept on the run's input: they follow the split seed)."""

    name: str
    digest: str
    source: str
    profile: Mapping[str, Any] = field(default_factory=dict)
    columns: Sequence[tuple[str, str]] = ()
    splits: Mapping[str, int] = field(default_factory=dict)


_COLUMN_TYPES = {"i": "long", "u": "long", "f": "double", "b": "boolean"}


def data_input(name: str, fingerprint: str, datamodule) -> DataInput:
    """The :class:`DataInput` of a loaded audioml DataModule (``describe()``: clip and split
    counts; its manifest's columns; its ``root``)."""
    facts = datamodule.describe()
    manifest = datamodule.manifest
    splits = {key[2:]: int(value) for key, value in facts.items()
              if key.startswith("n_") and key not in ("n_clips", "n_skipped")}
    profile = {"clips": int(facts.get("n_clips", len(manifest))), "skipped": int(facts.get("n_skipped", 0)),
               "task": str(datamodule.task)}
    if datamodule.task == "classification":
        profile["classes"] = [str(c) for c in datamodule.class_names]
    columns = [(str(c), _COLUMN_TYPES.get(manifest[c].dtype.kind, "string")) for c in manifest.columns
               if c != "augmented_copy"]
    return DataInput(name=str(name), digest=str(fingerprint), source=str(getattr(datamodule, "root", "") or ""),
                     profile=profile, columns=columns, splits=splits)


def table_input(data: str | None, descriptors: str | None, table) -> DataInput:
    """The :class:`DataInput` of an ``audioml-classical`` grid: its feature table
    (``audioml.classical.table.FeatureTable``), named ``<data> <descriptors> features``, its
    digest the table's key (the rows, their targets and audio, and the descriptor settings)."""
    import os

    rows = table.rows
    paths = rows["path"].astype(str).tolist() if "path" in rows else []
    source = os.path.commonpath(paths) if paths else ""
    profile = {"rows": len(rows), "features": len(table.columns), "task": str(table.task)}
    if table.task == "classification":
        profile["classes"] = [str(c) for c in table.class_names]
    splits = {str(k): int(v) for k, v in rows["split"].value_counts().sort_index().items()} if "split" in rows else {}
    columns = [(str(c), _COLUMN_TYPES.get(rows[c].dtype.kind, "string")) for c in rows.columns]
    name = " ".join(str(p) for p in (data, descriptors) if p and str(p) != "None") + " features"
    return DataInput(name=name, digest=str(table.key)[:16], source=source, profile=profile, columns=columns,
                     splits=splits)


def log_data_input(client, run_id: str, data: DataInput, context: str = "training") -> None:
    """Log ``data`` as run ``run_id``'s dataset input (``mlflow.data.context`` = ``context``, the
    split sizes as the input's ``audioml.split.<name>`` tags). MLflow keeps one dataset per name and
    digest in an experiment, so every run on the same data links to the same dataset; logging it
    again (a continued run) adds nothing."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    schema = json.dumps({"mlflow_colspec": [{"name": n, "type": t} for n, t in data.columns]}) if data.columns else None
    dataset = Dataset(name=data.name[:500], digest=data.digest[:36], source_type="local",
                      source=json.dumps({"uri": data.source}), schema=schema,
                      profile=json.dumps(dict(data.profile)) if data.profile else None)
    tags = [InputTag(MLFLOW_DATASET_CONTEXT, context),
            *[InputTag(f"audioml.split.{split}", str(size)) for split, size in data.splits.items()]]
    client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags)])


# ----------------------------------------------------------------------------- the saved view
#: The key of the saved view audioml keeps in each experiment (``mlflow.sharedViewState.<key>``).
VIEW_KEY = "audioml"
VIEW_NAME = "audioml: scores"
_VIEW_TAG_PREFIX = "mlflow.sharedViewState."
#: Set in the state of the view audioml writes; a view overridden in the UI lacks it and is left alone.
_OWNER = "audioml"
#: Config groups that say what a run is (their choices become columns); the rest says where or how loudly.
_WHAT_GROUPS = ("experiment", "data", "model", "features", "preprocess", "augmentation", "loss", "optimizer",
                "scheduler", "descriptors", "grid")
#: Metrics a user compares first, after the monitored one and its test score: headline test scores.
_HEADLINE = ("acc", "balanced_acc", "macro_f1", "ccc", "mae", "mse", "pearson")
#: At most this many columns in the view (MLflow caps an experiment tag at 20,000 characters).
_MAX_COLUMNS = 40
#: The runs table's own columns for the run's name and its start time (with the nesting toggle).
_RUN_NAME_COLUMN = "attributes.`Run Name`"
_CREATED_COLUMN = "runDateAndNestInfo"


def _column(kind: str, name: str) -> str:
    """A runs-table column key as the UI writes it: ``metrics.`test/acc```."""
    return f"{kind}.`{name}`"


def view_columns(metrics: Iterable[str], monitor: str, choices: Mapping[str, str] | None = None,
                 params: Iterable[str] = ()) -> list[str]:
    """The columns of a run worth seeing first, in order: the Dataset; the best value of the
    ``monitor`` (``val/best_macro_f1``; the monitor itself where there is no best), its test
    score, the baseline's and the other headline test scores of ``metrics`` (the run's metric
    names); ``params`` (the keys its command line set); the config choices that say what the
    run is."""
    metrics, choices = set(metrics), choices or {}
    group, _, name = monitor.rpartition("/")
    best = f"{group}/best_{name}" if group else f"best_{name}"  # the checkpoint's; a grid has the monitor only
    wanted = [best if best in metrics else monitor, f"test/{name}", f"baseline/{name}",
              *[f"test/{headline}" for headline in _HEADLINE if headline != name]]
    return [_column("attributes", "Dataset"), *[_column("metrics", m) for m in wanted if m in metrics],
            *[_column("params", p) for p in params],
            *[_column("tags", f"audioml.choice.{g}") for g in _WHAT_GROUPS if choices.get(g) not in (None, "None")]]


def _charts(columns: Sequence[str], monitor: str) -> tuple[list[dict], list[dict]]:
    """The view's charts, in a section of their own before MLflow's own per-metric sections: a bar
    chart for each of the first four score columns and the monitor per epoch. (A parallel
    coordinates chart leaves out every run that lacks one of its params: with a grid's and a
    network's runs in one experiment it shows nothing.)"""
    section = str(uuid.uuid4())
    metrics = [c[len("metrics.`"):-1] for c in columns if c.startswith("metrics.`")]

    def card(kind: str, **settings: Any) -> dict:
        return {"uuid": str(uuid.uuid4()), "type": kind, "runsCountToCompare": 10, "metricSectionId": section,
                "deleted": False, "isGenerated": False, **settings}

    charts = [card("BAR", metricKey=m, displayName=m) for m in metrics[:4]]
    charts.append(card("LINE", metricKey=monitor, selectedMetricKeys=[monitor], displayName=f"{monitor} per epoch",
                       lineSmoothness=0, xAxisScaleType="linear", scaleType="linear", range={}, xAxisKey="step",
                       selectedXAxisMetricKey="", yAxisKey="metric", yAxisExpressions=[]))
    sections = [{"uuid": section, "name": "Compared first", "display": True, "isReordered": False, "deleted": False,
                 "isGenerated": False}]
    return charts, sections


def update_view(client, experiment_id: str, columns: Sequence[str], monitor: str) -> bool:
    """Add ``columns`` to the experiment's audioml view (created when missing), with its charts
    (:func:`_charts`); returns whether the view changed. A view of that key saved over in the UI
    is the user's: left as it is."""
    experiment = client.get_experiment(experiment_id)
    tag = _VIEW_TAG_PREFIX + VIEW_KEY
    now = int(time.time() * 1000)
    state: dict[str, Any] = {}
    created = now
    if tag in experiment.tags:
        try:
            envelope = json.loads(experiment.tags[tag])
            state, created = json.loads(envelope["state"]), int(envelope["createdAt"])
        except (ValueError, KeyError, TypeError):
            return False  # compressed or another format: written by the UI
        if not state.get(_OWNER):
            return False
    kinds = ("attributes.", "metrics.", "params.", "tags.")  # the Dataset, scores, settings, choices
    union = list(dict.fromkeys([*state.get("selectedColumns", []), *columns]))
    selected = sorted(union, key=lambda c: next((i for i, k in enumerate(kinds) if c.startswith(k)), 4))[:_MAX_COLUMNS]
    if state and selected == state.get("selectedColumns") and state.get(_OWNER, {}).get("monitor") == monitor:
        return False
    charts, sections = _charts(selected, monitor)
    # the columns in this order right after the run's name, wide enough for their headers
    order = [_RUN_NAME_COLUMN, _CREATED_COLUMN, *selected]
    widths = {_RUN_NAME_COLUMN: 320, **{c: min(240, max(110, 8 * len(c.split("`")[1]) + 30)) for c in selected},
              _column("attributes", "Dataset"): 260}
    state = {"selectedColumns": selected, "columnOrder": order, "columnWidths": widths, "compareRunCharts": charts,
             "compareRunSections": sections, "isAccordionReordered": True,  # our section stays first
             "runsHiddenMode": "FIRST_20_RUNS", "hideEmptyCharts": True,
             _OWNER: {"monitor": monitor}}
    envelope = {"name": VIEW_NAME, "createdAt": created, "updatedAt": now, "state": json.dumps(state)}
    client.set_experiment_tag(experiment_id, tag, json.dumps(envelope))
    return True


#: Override keys that say where or how loudly a run goes, not what it is (no column of their own).
_NOT_A_SETTING = ("paths.", "logger.", "hydra.", "callbacks.", "trainer.enable_progress_bar", "data.num_workers",
                  "debug")


def setting_keys(overrides: Sequence[str], groups: Iterable[str] = ()) -> list[str]:
    """The params a command line set (``model.optimizer.lr=3e-4`` -> ``model.optimizer.lr``):
    its overrides less config group choices (``groups``: ``loss=ce`` is the choice column) and
    locations."""
    groups = set(groups)
    keys = [str(o).partition("=")[0].lstrip("+~") for o in overrides]
    return [k for k in dict.fromkeys(keys) if k not in groups and not k.startswith(_NOT_A_SETTING)]


def show_run_in_view(client, experiment_id: str, monitor: str, metrics: Iterable[str], choices: Mapping[str, str],
                     params: Sequence[str]) -> None:
    """Add a finished run's columns (:func:`view_columns` of its metric names, config ``choices``
    and ``params``, e.g. :func:`setting_keys` of its command line) to its experiment's view; a
    store that refuses is said in a warning (the run's record is complete without the view)."""
    try:
        update_view(client, experiment_id, view_columns(metrics, monitor, choices, params), monitor)
    except Exception as error:  # noqa: BLE001 - any store failure: the view is a convenience
        log.warning("the MLflow experiment's view %r not updated: %s", VIEW_NAME, error)


def view_link(tracking_uri: str, experiment_id: str) -> str:
    """The link that opens the experiment's runs, as model training, in the audioml view: on the
    tracking server itself for an ``http(s)`` store, else on ``mlflow ui``'s default address."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    # workflowType: MLflow 3.17's UI takes the GenAI / model-training mode from its global switch
    # (or this parameter), not from the experiment's kind tag
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}"
