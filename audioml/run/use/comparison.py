"""Is run B better than run A on the same test items, and how sure are we?
(``audioml-compare A B``; ``audioml-compare --sweep <key> --paired``.)

A run is found by its MLflow run id (or the first 8+ digits of it, as the comparison table
prints it) or name (``logger.run_name``), its run directory, a sweep job's run directory or a k-fold parent (its pooled
out-of-fold predictions); what is read is its predictions table (``test_predictions.csv`` /
``oof_predictions.csv``, from the run directory or the MLflow run's artifacts). The two tables
are paired item by item (``audioml.run.use.items``: file relative to the dataset folder, its
sha256 where both recorded one, its position); runs scored on other items, other file contents,
other labels or other classes are refused with what differs. The statistics are
``audioml.stats.paired``; ``log_comparison`` records the result as an MLflow run linked to both.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from audioml.run.rundir import RunDir
from audioml.run.use.items import DIGEST_COLUMN, FILE_COLUMN, POSITION_COLUMNS
from audioml.stats.paired import (
    LOWER_IS_BETTER,
    PairedDifference,
    holm_adjust,
    paired_classification,
    paired_regression,
)

log = logging.getLogger(__name__)

__all__ = ["ScoredRun", "Comparison", "ItemMismatchError", "load_run", "compare_runs", "comparison_table",
           "describe", "log_comparison", "COMPARISON_FILE"]

PREDICTION_FILES = (RunDir.PREDICTIONS, RunDir.OOF)
#: The table a comparison writes and logs.
COMPARISON_FILE = "paired_comparison.csv"
_RUN_ID = re.compile(r"^[0-9a-f]{8,32}$")


class ItemMismatchError(ValueError):
    """Two runs were not scored on the same test items (the message says what differs)."""


@dataclass(frozen=True)
class ScoredRun:
    """One run's predictions: ``label`` (its name), ``run_id`` (MLflow; ``None`` when unknown),
    ``source`` (what the user gave), ``experiment_id``, and the ``predictions`` table."""

    label: str
    run_id: str | None
    source: str
    predictions: pd.DataFrame = field(repr=False)
    experiment_id: str | None = None

    @property
    def task(self) -> str:
        return "classification" if "true" in self.predictions else "regression"

    @property
    def class_names(self) -> list[str]:
        """Classes (``p_<class>`` columns) of a classifier, targets (``predicted_<name>``) of a regressor."""
        prefix = "p_" if self.task == "classification" else "predicted_"
        return [c[len(prefix):] for c in self.predictions.columns if c.startswith(prefix)]


@dataclass(frozen=True)
class Comparison:
    """The paired differences of B against A (one per metric; Holm-adjusted ``p_holm`` for a
    family of comparisons), the pairing key, and notes for the reader."""

    a: ScoredRun
    b: ScoredRun
    differences: list[PairedDifference]
    paired_on: list[str]
    notes: list[str]
    p_holm: dict[str, float] = field(default_factory=dict)


# ----------------------------------------------------------------------------------- loading
def _read_table(folder: Path) -> pd.DataFrame | None:
    for name in PREDICTION_FILES:
        if (folder / name).is_file():
            return pd.read_csv(folder / name)
    return None


def load_run(reference: str, client=None, download_dir: str | Path | None = None) -> ScoredRun:
    """The ``ScoredRun`` of ``reference``: a run directory (a k-fold parent: its out-of-fold
    predictions), or an MLflow run id, its first 8+ digits or a run's name in ``client``'s store
    (its predictions artifact). Raises ``LookupError`` saying what was not found."""
    path = Path(reference).expanduser()
    if path.is_dir():
        table = _read_table(path)
        if table is None:
            raise LookupError(f"{path} holds no {' or '.join(PREDICTION_FILES)}: is it a tested run directory "
                              "(a classifier or regressor that finished its test)?")
        run_id = RunDir(path).run_id()
        experiment_id, label = None, path.resolve().name
        if run_id and client is not None:
            try:
                run = client.get_run(run_id)
                experiment_id, label = run.info.experiment_id, run.info.run_name or label
            except Exception:  # noqa: BLE001 - another store: the comparison still stands without the link
                run_id = None
        return ScoredRun(label, run_id, reference, table, experiment_id)
    if client is None:
        raise LookupError(f"{reference!r} is not a run directory, and no MLflow store is open to find it as a run id "
                          "or name: give --output-dir or --tracking-uri")
    run = _find_run(client, reference)
    folder = Path(download_dir or tempfile.mkdtemp(prefix="audioml-compare-")) / run.info.run_id
    folder.mkdir(parents=True, exist_ok=True)
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    for name in PREDICTION_FILES:
        if name in artifacts:
            table = pd.read_csv(client.download_artifacts(run.info.run_id, name, str(folder)))
            return ScoredRun(run.info.run_name or run.info.run_id[:8], run.info.run_id, reference, table,
                             run.info.experiment_id)
    local = Path(run.data.params.get("paths.run_dir", ""))
    if local.is_dir() and (table := _read_table(local)) is not None:
        return ScoredRun(run.info.run_name or run.info.run_id[:8], run.info.run_id, reference, table,
                         run.info.experiment_id)
    raise LookupError(f"MLflow run {run.info.run_id} ({run.info.run_name}) has no {' or '.join(PREDICTION_FILES)} "
                      "artifact: it did not finish its test, or is not a classifier or regressor run")


def _find_run(client, reference: str):
    """The MLflow run whose id is (or starts with) ``reference``, else whose name it is."""
    from mlflow.exceptions import MlflowException

    experiments = [e.experiment_id for e in client.search_experiments()]
    if not _RUN_ID.match(reference):
        named = client.search_runs(experiments, f"attributes.run_name = '{reference.replace(chr(39), '')}'")
        if len(named) == 1:
            return named[0]
        if named:
            raise LookupError(f"{len(named)} MLflow runs are named {reference!r} "
                              f"({', '.join(r.info.run_id[:8] for r in named)}): give one's id")
        raise LookupError(f"{reference!r} is neither a run directory nor the name or id of an MLflow run in this store")
    if len(reference) == 32:
        try:
            return client.get_run(reference)
        except MlflowException:
            raise LookupError(f"no MLflow run {reference} in this store") from None
    found = [r for r in client.search_runs(experiments, max_results=50000) if r.info.run_id.startswith(reference)]
    if not found:
        raise LookupError(f"no MLflow run whose id starts with {reference} in this store (and no run directory "
                          "of that name)")
    if len(found) > 1:
        raise LookupError(f"{len(found)} MLflow runs have ids starting with {reference}: give more digits")
    return found[0]


# ----------------------------------------------------------------------------------- pairing
def _paired_tables(a: ScoredRun, b: ScoredRun) -> tuple[pd.DataFrame, pd.DataFrame, list[str], list[str]]:
    """A's and B's predictions in the same item order, the key they are paired on, and notes.
    Raises ``ItemMismatchError`` naming what differs."""
    if a.task != b.task:
        raise ItemMismatchError(f"A ({a.label}) is a {a.task} run and B ({b.label}) a {b.task} run: compare runs of "
                                "the same task")
    if a.class_names != b.class_names:
        raise ItemMismatchError(f"A ({a.label}) has the {'classes' if a.task == 'classification' else 'targets'} "
                                f"{a.class_names}, B ({b.label}) {b.class_names}: compare runs of the same classes")
    notes = []
    positions = [c for c in POSITION_COLUMNS if c in a.predictions and c in b.predictions]
    key = [FILE_COLUMN, *positions]
    if not (FILE_COLUMN in a.predictions and FILE_COLUMN in b.predictions):
        key = ["path", *positions]
        notes.append("items paired by their absolute paths: a run written before audioml recorded the files "
                     "relative to the dataset folder")
    left, right = a.predictions.copy(), b.predictions.copy()
    for table in (left, right):  # an item scored twice (overlapping windows) pairs in order of appearance
        table["_occurrence"] = table.groupby(key, sort=False).cumcount()
    join = [*key, "_occurrence"]
    merged = left[join].reset_index().merge(right[join].reset_index(), on=join, how="outer", suffixes=("_a", "_b"),
                                            indicator=True)
    only_a, only_b = merged[merged["_merge"] == "left_only"], merged[merged["_merge"] == "right_only"]
    if len(only_a) or len(only_b):
        raise ItemMismatchError(
            f"A ({a.label}) and B ({b.label}) were not scored on the same test items: {len(only_a)} of A's "
            f"{len(left)} are not B's{_examples(only_a, key)}, {len(only_b)} of B's {len(right)} are not A's"
            f"{_examples(only_b, key)}, paired on {' + '.join(key)}. Compare runs tested on the same split of the "
            "same data (data.seed and the split settings alike)" + (f" ({notes[0]})" if notes else ""))
    left = left.loc[merged["index_a"].astype(int)].reset_index(drop=True)
    right = right.loc[merged["index_b"].astype(int)].reset_index(drop=True)
    if DIGEST_COLUMN in left and DIGEST_COLUMN in right:
        both = (left[DIGEST_COLUMN].fillna("") != "") & (right[DIGEST_COLUMN].fillna("") != "")
        changed = both & (left[DIGEST_COLUMN] != right[DIGEST_COLUMN])
        if changed.any():
            raise ItemMismatchError(f"{int(changed.sum())} test files have other contents for B ({b.label}) than for "
                                    f"A ({a.label}) (sha256 differs){_examples(left[changed], key)}: the data changed "
                                    "between the runs, so their scores are not paired")
        key = [*key[:1], DIGEST_COLUMN, *key[1:]]
    else:
        notes.append("items paired by file name only: a run did not record the files' sha256")
    truth = [c for c in left.columns if c == "true" or c.startswith("true_")]
    differ = np.zeros(len(left), dtype=bool)
    for column in truth:
        if a.task == "classification":
            differ |= left[column].astype(str).to_numpy() != right[column].astype(str).to_numpy()
        else:
            differ |= ~np.isclose(left[column].to_numpy(float), right[column].to_numpy(float), atol=1e-6)
    if differ.any():
        raise ItemMismatchError(f"{int(differ.sum())} test items have other labels in B ({b.label}) than in A "
                                f"({a.label}){_examples(left[differ], key)}: the runs used other labels")
    if "group" in left and "group" in right and (left["group"].astype(str) != right["group"].astype(str)).any():
        notes.append("the runs group the test items differently; A's groups are resampled")
    return left, right, key, notes


def _examples(rows: pd.DataFrame, key: Sequence[str]) -> str:
    if not len(rows):
        return ""
    shown = rows[list(key)].head(3).astype(str).agg(" ".join, axis=1).tolist()
    return f" (e.g. {', '.join(shown)})"


# ----------------------------------------------------------------------------------- scoring
def compare_runs(a: ScoredRun, b: ScoredRun, bootstrap_samples: int = 2000, permutations: int = 10000,
                 confidence: float = 0.95, seed: int = 0) -> Comparison:
    """The paired differences ``B - A`` of the summary metrics (acc, balanced_acc, macro_f1 for
    classifiers; ccc, mse, mae per target for regressors) on the items both were scored on.
    Raises ``ItemMismatchError`` when the items, their contents or labels differ."""
    left, right, key, notes = _paired_tables(a, b)
    groups = left["group"].astype(str).to_numpy() if "group" in left else left[key[0]].astype(str).to_numpy()
    if "group" not in left:
        notes.append("the predictions carry no group: each file is its own group")
    settings = {"bootstrap_samples": bootstrap_samples, "permutations": permutations, "confidence": confidence,
                "seed": seed}
    if a.task == "classification":
        names = a.class_names
        index = {name: i for i, name in enumerate(names)}
        columns = [f"p_{name}" for name in names]
        differences = paired_classification(left["true"].astype(str).map(index).to_numpy(),
                                            left[columns].to_numpy().argmax(axis=1),
                                            right[columns].to_numpy().argmax(axis=1), groups, names, **settings)
        if len(np.unique(groups)) < len(groups):
            notes.append(f"McNemar's test counts the {len(groups)} items as independent; p_permutation swaps whole "
                         f"groups ({len(np.unique(groups))}) and holds when a group's items are alike")
    else:
        differences = []
        for name in a.class_names:
            found = paired_regression(left[f"true_{name}"].to_numpy(float), left[f"predicted_{name}"].to_numpy(float),
                                      right[f"predicted_{name}"].to_numpy(float), groups, **settings)
            if len(a.class_names) > 1:
                found = [PairedDifference(**{**d.__dict__, "metric": f"{d.metric}_{name}"}) for d in found]
            differences += found
    return Comparison(a, b, differences, key, notes)


def with_holm(comparisons: list[Comparison]) -> list[Comparison]:
    """The comparisons with ``p_holm``: each metric's p-values adjusted together across them
    (Holm), so a family of jobs against one reference keeps its error rate."""
    metrics = [d.metric for d in comparisons[0].differences] if comparisons else []
    adjusted = {m: holm_adjust([next(d.p_value for d in c.differences if d.metric == m) for c in comparisons])
                for m in metrics}
    return [Comparison(c.a, c.b, c.differences, c.paired_on, c.notes, {m: float(adjusted[m][i]) for m in metrics})
            for i, c in enumerate(comparisons)]


def comparison_table(comparisons: Sequence[Comparison]) -> pd.DataFrame:
    """One row per comparison and metric: ``a``, ``b`` (labels), ``metric``, the two values, the
    difference, its interval, the test's p-value, the permutation p-value, ``p_holm`` where
    adjusted, ``items``, ``groups`` and both run ids."""
    rows = []
    for comparison in comparisons:
        for difference in comparison.differences:
            row = {"a_run": comparison.a.label, "b_run": comparison.b.label, **difference.row()}
            if comparison.p_holm:
                row["p_holm"] = comparison.p_holm.get(difference.metric, np.nan)
            rows.append({**row, "a_run_id": comparison.a.run_id, "b_run_id": comparison.b.run_id})
    return pd.DataFrame(rows)


def describe(comparison: Comparison, alpha: float = 0.05) -> list[str]:
    """A sentence per metric: the difference, its interval and what the test says."""
    lines = []
    for d in comparison.differences:
        p = comparison.p_holm.get(d.metric, d.p_value)
        better = (d.difference < 0) if d.metric.split("_")[0] in LOWER_IS_BETTER else (d.difference > 0)
        verdict = (f"B is {'better' if better else 'worse'} (p={p:.3g} < {alpha:g})" if p < alpha
                   else f"no evidence that they differ (p={p:.3g})")
        interval = "" if np.isnan(d.ci_low) else f" [{d.confidence:.0%} CI {d.ci_low:+.3f}, {d.ci_high:+.3f}]"
        lines.append(f"{d.metric}: B - A = {d.difference:+.3f}{interval}, {d.test}"
                     f"{' (Holm)' if comparison.p_holm else ''}: {verdict}")
    return lines


# ----------------------------------------------------------------------------------- MLflow
def log_comparison(client, comparisons: Sequence[Comparison], table_path: Path, experiment_id: str | None,
                   name: str) -> str:
    """An MLflow run recording ``comparisons`` (tags ``audioml.kind=comparison``,
    ``audioml.compares.a`` / ``audioml.compares.b`` for one pair, ``audioml.compares.reference``
    and ``audioml.compares.<i>`` for a family; ``paired/<metric>_*`` metrics of one pair; the
    table as an artifact), in ``experiment_id`` (else ``audioml-comparisons``); returns its id."""
    from mlflow.entities import Metric, Param, RunTag

    from audioml.run.record.presentation import EXPERIMENT_KIND_TAG, MODEL_TRAINING, mark_model_training

    if experiment_id is None:
        found = client.get_experiment_by_name("audioml-comparisons")
        if found is not None:
            mark_model_training(client, found)
        experiment_id = found.experiment_id if found else client.create_experiment(
            "audioml-comparisons", tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
    first = comparisons[0]
    tags = {"audioml.kind": "comparison", "audioml.paired_on": "+".join(first.paired_on)}
    if len(comparisons) == 1:
        tags.update({"audioml.compares.a": first.a.run_id or first.a.source,
                     "audioml.compares.b": first.b.run_id or first.b.source})
    else:
        tags["audioml.compares.reference"] = first.a.run_id or first.a.source
        tags.update({f"audioml.compares.{i}": c.b.run_id or c.b.source for i, c in enumerate(comparisons)})
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    now = int(time.time() * 1000)
    metrics = []
    if len(comparisons) == 1:
        for d in first.differences:
            for suffix, value in (("difference", d.difference), ("ci_low", d.ci_low), ("ci_high", d.ci_high),
                                  ("p_value", d.p_value), ("p_permutation", d.p_permutation)):
                if not np.isnan(value):
                    metrics.append(Metric(f"paired/{d.metric}_{suffix}", float(value), now, 0))
    first_difference = first.differences[0]
    params = [Param("items", str(first_difference.items)), Param("groups", str(first_difference.groups)),
              Param("confidence", str(first_difference.confidence))]
    client.log_batch(run.info.run_id, metrics=metrics, params=params,
                     tags=[RunTag("mlflow.note.content", "\n".join(line for c in comparisons for line in describe(c)))])
    client.log_artifact(run.info.run_id, str(table_path))
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id
