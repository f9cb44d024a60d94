"""The runs table of an MLflow store: one row per run (``collect_runs``), the columns worth
comparing (``comparison_table``) and a text rendering that fits a width (``fit_to_width``);
``audioml-compare`` prints it and a sweep's summary logs it. Imports neither torch nor Lightning."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence

import pandas as pd

__all__ = ["collect_runs", "comparison_table", "differing_params", "fit_to_width", "DEFAULT_METRICS"]

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_CHOICE_TAG = "audioml.choice."
#: Shown by default: the headline test metrics and the best validation score, not the
#: per-class ones or the confidence bounds (ask for them with --metrics).
DEFAULT_METRICS = ("test/*", "val/best_*")
#: ``audioml.kind`` of runs that trained nothing, left out of the listing (``collect_runs``).
_NOT_TRAINED = ("evaluation", "comparison")
_HIDDEN_BY_DEFAULT = ("test/precision_*", "test/recall_*", "test/f1_*", "*_ci_low", "*_ci_high", "*_fold_mean",
                      "*_fold_std")


def collect_runs(store, experiments: Sequence[str] = (), sweep: str | None = None) -> pd.DataFrame:
    """One row per run: ``run_id``, ``run_name``, ``status``, ``experiment``, ``tags.*``,
    ``params.*``, ``metrics.*`` (final values). With ``sweep`` (a parent run id or a sweep key)
    the children of that sweep, else the runs of ``experiments`` except sweep parents,
    evaluations (``audioml-eval``) and comparisons (``audioml-compare A B``): runs without a
    config, whose missing params would make every param look different. ``store``: a reader of
    :mod:`audioml.run.record.store_reader`, or an ``MlflowClient``.

    Raises ``LookupError`` naming what was not found.
    """
    from audioml.run.record.store_reader import ClientReader, SqliteReader

    source = store if isinstance(store, (SqliteReader, ClientReader)) else ClientReader(store)
    all_experiments = source.experiments()
    if sweep:
        if _RUN_ID.match(sweep):
            parent_id = source.run(sweep).info.run_id  # raises LookupError when unknown
        else:
            # The jobs carry the sweep's key too: the parent is the run whose role is "sweep".
            parents = source.runs(list(all_experiments), {"audioml.sweep_key": sweep, "audioml.role": "sweep"})
            if not parents:
                raise LookupError(f"no sweep with key or parent run id {sweep!r} in this store")
            parent_id = parents[0].info.run_id
        runs = source.runs(list(all_experiments), {"mlflow.parentRunId": parent_id})
        if not runs:
            raise LookupError(f"sweep {sweep} has no child runs yet")
    else:
        ids = []
        for name in experiments:
            experiment_id = source.experiment_id(name)
            if experiment_id is None:
                raise LookupError(f"no MLflow experiment {name!r}; experiments here: {sorted(all_experiments.values())}")
            ids.append(experiment_id)
        runs = [r for r in source.runs(ids or list(all_experiments))
                if r.data.tags.get("audioml.role") != "sweep" and r.data.tags.get("audioml.kind") not in _NOT_TRAINED]
    rows = []
    for run in runs:
        row = {"run_name": run.info.run_name, "status": run.info.status, "run_id": run.info.run_id,
               "experiment": all_experiments.get(run.info.experiment_id, run.info.experiment_id)}
        row.update({f"tags.{k}": v for k, v in run.data.tags.items()})
        row.update({f"params.{k}": v for k, v in run.data.params.items()})
        row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def _matching(columns: Sequence[str], prefix: str, patterns: Sequence[str],
              hidden: Sequence[str] = ()) -> list[str]:
    names = [c[len(prefix):] for c in columns if c.startswith(prefix)]
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)
            and not any(fnmatch.fnmatchcase(n, h) for h in hidden)]


def _is_location(param: str) -> bool:
    """Params that say where files went (they differ between any two runs)."""
    return param.startswith(("paths.", "hydra.")) or param.endswith("dirpath")


def comparison_table(runs: pd.DataFrame, metrics: Sequence[str] | None = None,
                     params: Sequence[str] | None = None, sort: str | None = None,
                     ascending: bool = False) -> pd.DataFrame:
    """The side-by-side table of :func:`collect_runs` rows: identity columns, config choices that
    differ among the runs that have them, params (those matching ``params`` patterns; default: :func:`differing_params`),
    metrics matching ``metrics`` patterns (default: ``DEFAULT_METRICS`` without per-class values
    and confidence bounds); columns empty for every run left out; sorted by metric ``sort``
    (missing last).

    Raises ``ValueError`` when ``sort`` is not a metric of these runs.
    """
    columns = list(runs.columns)
    choice_names = [c for c in columns if c.startswith(f"tags.{_CHOICE_TAG}")]
    choices = {c[len(f"tags.{_CHOICE_TAG}"):]: runs[c] for c in choice_names if runs[c].nunique() > 1}
    param_names = differing_params(runs, set(choices)) if params is None else _matching(columns, "params.", params)
    metric_names = (_matching(columns, "metrics.", DEFAULT_METRICS, _HIDDEN_BY_DEFAULT) if metrics is None
                    else _matching(columns, "metrics.", metrics))
    if sort:
        if f"metrics.{sort}" not in runs:
            available = sorted(c[len("metrics."):] for c in columns if c.startswith("metrics."))
            raise ValueError(f"--sort {sort}: no such metric; the runs have {available}")
        if sort not in metric_names:
            metric_names.insert(0, sort)
    table = pd.DataFrame({"run_name": runs["run_name"], "status": runs["status"], **choices,
                          **{p: runs[f"params.{p}"] for p in param_names},
                          **{m: runs[f"metrics.{m}"] for m in metric_names},
                          "run_id": runs["run_id"], "experiment": runs["experiment"]})
    empty = [c for c in table.columns[2:-2] if c != sort and _blank(table[c]).all()]
    table = table.drop(columns=empty)
    if sort:
        table = table.sort_values(sort, ascending=ascending, na_position="last", kind="stable")
    return table.reset_index(drop=True)


def _blank(values: pd.Series) -> pd.Series:
    """Where ``values`` hold nothing: missing, or empty text."""
    return values.isna() | (values.astype(str).str.strip() == "")


def differing_params(runs: pd.DataFrame, shown_choices: set[str] = frozenset()) -> list[str]:
    """The params of :func:`collect_runs` rows worth a column: those whose values differ among
    the runs that have them, except file locations, a ``_target_`` beside the choice or param
    that names it (``loss._target_`` beside ``loss``, ``estimator._target_`` beside
    ``estimator``), and a param with the same last name and the same values in every run as a
    shorter one (``data.seed``, ``evaluation.seed`` follow ``seed``: one column)."""
    names = [c[len("params."):] for c in runs.columns if c.startswith("params.")]
    names = [n for n in names if not _is_location(n) and runs[f"params.{n}"].dropna().astype(str).nunique() > 1]
    names = [n for n in names if not (n.endswith("._target_") and n[:-len("._target_")] in {*shown_choices, *names})]
    kept: list[str] = []
    for name in sorted(names, key=lambda n: (n.count("."), len(n))):  # the shortest of alike columns stays
        values = runs[f"params.{name}"].astype(str)
        if not any(other.rsplit(".", 1)[-1] == name.rsplit(".", 1)[-1]
                   and values.equals(runs[f"params.{other}"].astype(str)) for other in kept):
            kept.append(name)
    return [n for n in names if n in kept]


def _elide(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters in the middle (``"cnn lr=...seed=7"``): the ends of
    run titles and dotted param names are what tells them apart."""
    if len(text) <= width:
        return text
    head = (width - 3 + 1) // 2
    return f"{text[:head]}...{text[len(text) - (width - 3 - head):]}"


def fit_to_width(table: pd.DataFrame, width: int, max_cell: int = 24, max_key: int = 40) -> str:
    """``table`` as text no line of which is wider than ``width`` (at least 40).

    Cells and headers longer than ``max_cell`` characters (``max_key`` for the first column, the
    run name) are cut in the middle ("..."); numbers are right-aligned, floats to 4 decimals,
    missing values blank. Columns that do not fit beside each other go into further blocks, each
    starting again with the first column (and ``run_id`` when the cut names are not distinct),
    separated by a blank line. The CSV keeps the full values."""
    width = max(width, 40)
    if not len(table.columns):
        return ""
    columns = []  # (header, cells, right-aligned)
    for position, name in enumerate(table.columns):
        limit = min(max_key, max(16, width * 9 // 20)) if position == 0 else max_cell
        values = table[name]
        numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
        cells = ["" if pd.isna(v) else _elide(f"{v:.4f}" if isinstance(v, float) else str(v), limit) for v in values]
        columns.append((_elide(str(name), limit), cells, numeric))
    widths = [max(len(header), *(len(c) for c in cells), 1) for header, cells, _ in columns]
    keys = [0]
    if len(set(columns[0][1])) < len(table) and "run_id" in table.columns[1:]:  # names cut alike: the id tells
        keys.append(list(table.columns).index("run_id"))
    key_width = sum(widths[k] + 1 for k in keys) - 1
    blocks, current, used = [], [], key_width
    for index in (i for i in range(len(columns)) if i not in keys):
        if current and used + 1 + widths[index] > width:
            blocks.append(current)
            current, used = [], key_width
        current.append(index)
        used += 1 + widths[index]
    blocks.append(current)

    def line(index_list: list[int], row: int | None) -> str:
        parts = []
        for index in index_list:
            header, cells, numeric = columns[index]
            text = header if row is None else cells[row]
            parts.append(text.rjust(widths[index]) if numeric else text.ljust(widths[index]))
        return " ".join(parts).rstrip()

    return "\n\n".join("\n".join(line([*keys, *block], row) for row in [None, *range(len(table))]) for block in blocks)
